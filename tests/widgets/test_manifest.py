"""The widgets open through napari's plugin manifest, without importing torch up front."""

from __future__ import annotations

import subprocess
import sys

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
