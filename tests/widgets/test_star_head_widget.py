"""The Train widget's instance-head choice (star and flow heads), trained and previewed in a real viewer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.widgets.predict import PredictWidget
from napari_unet.widgets.train import CURRENT, TrainWidget

from test_train_predict import small_settings

STEPS = 150  # enough for the star and flow heads to find nuclei (146 and more on this image)


@pytest.mark.parametrize("head, thresholds", [("star", {"prob_threshold", "nms_threshold"}),
                                              ("flow", {"prob_threshold", "flow_threshold"})])
def test_map_head_trains_previews_and_predicts(nuclei_viewer, qtbot, head, thresholds):
    viewer = nuclei_viewer
    widget = TrainWidget(viewer)
    small_settings(widget)
    widget.patch_size.value = 128  # the rays (and flows) need whole nuclei in view
    widget.preview_every.value = 3.0  # fewer whole-image previews: the fixed steps, not the previews, take the time
    request = widget.request
    widget.request = lambda: replace(request(), steps=STEPS, time_limit=None)  # steps: a busy machine trains the same
    assert widget.instance_head.value == "3class"  # the default, read from TrainConfig
    widget.instance_head.value = head
    widget.train_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget.previews >= 1, timeout=60_000)
    probability = viewer.layers["nuclei probability"].data
    assert probability.shape == viewer.layers["nuclei"].data.shape and 0 <= probability.min() <= probability.max() <= 1
    qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
    model = widget.session.model
    assert model is not None and model.config.instance_head == head
    # one image, validated on held-out objects: the thresholds were chosen on the training image
    assert set(model.postprocess) == thresholds

    predict = PredictWidget(viewer)
    predict.image.value = "nuclei"
    predict.model.value = CURRENT
    predict.mc_samples.value = 2  # MC-dropout over the star / flow maps too
    predict.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=60_000)
    labels = viewer.layers["nuclei prediction"].data
    assert labels.shape == viewer.layers["nuclei"].data.shape and len(np.unique(labels)) > 1
    assert np.isfinite(viewer.layers["nuclei uncertainty"].data).all()
    predict.uncertainty_kind.value = "shape"  # the spread of the rays / flows over the samples
    predict.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=60_000)
    shape = viewer.layers["nuclei uncertainty"]
    assert shape.metadata["kind"] == "shape" and np.isfinite(shape.data).all() and shape.data.max() > 0


def test_shape_uncertainty_of_a_3class_model_is_a_notification(nuclei_viewer, qtbot, notifications):
    from helpers import tiny_bundle

    predict = PredictWidget(nuclei_viewer)
    predict.session.model = tiny_bundle()  # the 3-class head: no rays, no flows
    predict.session.changed.emit()  # as the Train widget does when a model is ready
    predict.image.value = "nuclei"
    predict.model.value = CURRENT
    predict.mc_samples.value = 2
    predict.uncertainty_kind.value = "shape"
    predict.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=60_000)
    assert any(kind == "error" and "star or flow" in message for kind, message in notifications), notifications
    assert "nuclei uncertainty" not in nuclei_viewer.layers and "nuclei prediction" not in nuclei_viewer.layers


def test_instance_head_hidden_for_semantic_tasks(nuclei_viewer):
    widget = TrainWidget(nuclei_viewer)
    widget.task.value = "sparse classes"
    assert widget.instance_head.native.isHidden()  # the viewer window is not shown: ask Qt, not magicgui
    widget.task.value = "instances"
    assert not widget.instance_head.native.isHidden()


def test_instance_head_choices_come_from_the_registry(nuclei_viewer):
    """A head registered by a plugin or a test (``heads.register``) is offered with the built-in ones."""
    from napari_unet import heads
    from napari_unet.heads.base import Head

    class Toy(Head):
        name, description = "toy", "a test head"

    heads.register(Toy())
    try:
        widget = TrainWidget(nuclei_viewer)
        assert tuple(widget.instance_head.choices) == heads.names() == ("3class", "star", "flow", "toy")
        assert "toy: a test head" in widget.instance_head.tooltip
    finally:
        heads.unregister("toy")
