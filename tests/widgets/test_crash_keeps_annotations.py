"""SIGKILL during training in a real viewer process: painted annotations survive in the autosave."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from napari_unet.files.project import Project

CHILD = r"""
import sys, numpy as np, napari
from qtpy.QtCore import QTimer
from napari_unet.data.samples import load_sample
from napari_unet.widgets.annotate import MODES, AnnotateWidget
from napari_unet.widgets.train import TrainWidget, SCRATCH
from napari_unet.widgets._session import session_for

viewer = napari.Viewer(show=False)
image, truth = load_sample()
viewer.add_image(image, name="nuclei")
annotate = AnnotateWidget(viewer)
annotate.image.value = "nuclei"
annotate.mode.value = next(k for k, v in MODES.items() if v == "instances")
labels = annotate.attach()
labels.data = truth.astype(np.uint32)
train = TrainWidget(viewer)
train.image.value, train.labels.value, train.init.value = "nuclei", labels.name, SCRATCH
train.base_width.value, train.depth.value, train.patch_size.value = 8, 3, 64

def paint_more():
    labels.paint((7, 7), 4242, refresh=True)  # painted while training runs
    print("PAINTED", session_for(viewer).folder, flush=True)

train.start()
QTimer.singleShot(1500, paint_more)
napari.run()
"""


def test_sigkill_while_training_keeps_what_was_painted(tmp_path):
    env = {**os.environ, "NAPARI_UNET_HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "xcb"}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=env)
    try:
        folder = None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = child.stdout.readline()
            if line.startswith("PAINTED"):
                folder = line.split(" ", 1)[1].strip()
                break
            if not line and child.poll() is not None:
                break
        assert folder, "the child viewer never painted"
        time.sleep(4.0)  # autosave runs ~2 s after an edit
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    project = Project.load(folder)  # loads cleanly: nothing half-written
    labels = project.samples["nuclei"].labels
    assert labels[7, 7] == 4242
    assert labels.max() == 4242 and (labels > 0).sum() > 1000  # the earlier annotation is there too
