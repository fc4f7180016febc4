"""The widgets open through napari's plugin manifest, without importing torch up front."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.parametrize("name, cls", [("Annotate", "AnnotateWidget"), ("Train", "TrainWidget"),
                                       ("Predict", "PredictWidget"), ("Synthesize", "SynthesizeWidget"),
                                       ("Batch export", "ExportWidget")])
def test_widget_opens_from_manifest(make_napari_viewer, name, cls):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
    assert dock is not None
    assert type(widget).__name__ == cls


def test_opening_widgets_does_not_import_torch():
    code = ("import sys; import napari_unet.widgets.annotate, napari_unet.widgets.train, "
            "napari_unet.widgets.predict, napari_unet.widgets.synthesize, napari_unet.widgets.export; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_stained_sample_opens_as_rgb_with_its_ground_truth(make_napari_viewer):
    from napari_unet.data.samples import STAINED, sample_names, training_samples

    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "stained")
    image, truth = viewer.layers["stained nuclei"], viewer.layers["stained nuclei ground truth"]
    assert image.rgb and image.data.shape == (256, 320, 3)
    assert truth.data.shape == (256, 320) and 40 <= len(set(truth.data.ravel().tolist())) - 1 <= 90
    assert STAINED not in sample_names()  # the demo trains on fluorescence only
    assert all(np.ndim(im) == 2 for _, im, _ in training_samples())
