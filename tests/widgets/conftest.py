"""Fixtures for widget tests: a real napari viewer (under Xvfb) with the nuclei sample."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.data.samples import load_sample


@pytest.fixture(autouse=True)
def plugin_home(tmp_path, monkeypatch):
    """Autosaves go to a temporary folder, not the user's home."""
    monkeypatch.setenv("NAPARI_UNET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def nuclei_viewer(make_napari_viewer):
    """A viewer showing the bundled nuclei image and its ground-truth labels."""
    viewer = make_napari_viewer()
    image, labels = load_sample()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels.astype(np.uint32), name="nuclei ground truth")
    return viewer


@pytest.fixture
def annotated(nuclei_viewer):
    """An Annotate widget on ``nuclei_viewer`` whose annotations layer holds the ground truth."""
    from napari_unet.widgets.annotate import MODES, AnnotateWidget

    annotate = AnnotateWidget(nuclei_viewer)
    annotate.image.value = "nuclei"
    annotate.mode.value = next(k for k, v in MODES.items() if v == "instances")  # the ground truth is dense
    annotate.attach().data = nuclei_viewer.layers["nuclei ground truth"].data.copy()
    return annotate


@pytest.fixture
def notifications(monkeypatch):
    """Collect napari notifications (error/warning/info) instead of showing them."""
    import napari.utils.notifications as notes

    seen: list[tuple[str, str]] = []
    for kind in ("error", "warning", "info"):
        monkeypatch.setattr(notes, f"show_{kind}", lambda message, k=kind: seen.append((k, str(message))))
    return seen


@pytest.fixture
def loop_probe():
    from napari_unet.widgets._probe import LoopProbe

    probe = LoopProbe()
    yield probe
    probe.stop()
