"""The Predict widget takes a bioimage.io package that napari-unet exported."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")

from napari_unet.widgets.predict import PACKAGE, PredictWidget  # noqa: E402

from helpers import drain, tiny_bundle  # noqa: E402


def test_predict_widget_uses_a_package(nuclei_viewer, qtbot, tmp_path):
    from napari_unet.workflows.bioimage_io_export import export_bioimageio

    package = drain(export_bioimageio(tiny_bundle(), tmp_path / "tiny.zip", tile=32, run_test=False))
    widget = PredictWidget(nuclei_viewer)
    assert PACKAGE in widget.model.choices and not widget.model_package.visible
    widget.image.value = "nuclei"
    widget.model.value = PACKAGE
    widget.model_package.value = package
    widget.mc_samples.value = 0
    widget.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "done" in widget.status.value
    labels = nuclei_viewer.layers["nuclei prediction"].data
    assert labels.shape == nuclei_viewer.layers["nuclei"].data.shape and np.issubdtype(labels.dtype, np.integer)
