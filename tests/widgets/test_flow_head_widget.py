"""The Train widget's flow head, trained, previewed and used for prediction in a real viewer."""

from __future__ import annotations

import numpy as np

from napari_unet.widgets.predict import PredictWidget
from napari_unet.widgets.train import CURRENT, TrainWidget

from test_train_predict import small_settings


def test_flow_head_trains_previews_and_predicts(nuclei_viewer, qtbot):
    viewer = nuclei_viewer
    widget = TrainWidget(viewer)
    small_settings(widget, seconds=30)
    assert "flow" in widget.instance_head.choices
    widget.instance_head.value = "flow"
    widget.train_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget.previews >= 1, timeout=60_000)
    probability = viewer.layers["nuclei probability"].data
    assert probability.shape == viewer.layers["nuclei"].data.shape and 0 <= probability.min() <= probability.max() <= 1
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    model = widget.session.model
    assert model is not None and model.config.instance_head == "flow"
    assert set(model.postprocess) == {"prob_threshold", "flow_threshold"}  # chosen on the training image

    predict = PredictWidget(viewer)
    predict.image.value = "nuclei"
    predict.model.value = CURRENT
    predict.mc_samples.value = 2  # MC-dropout over the flow maps too
    predict.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=90_000)
    labels = viewer.layers["nuclei prediction"].data
    assert labels.shape == viewer.layers["nuclei"].data.shape
    assert np.isfinite(viewer.layers["nuclei uncertainty"].data).all()
