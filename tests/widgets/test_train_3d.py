"""The Train widget on a 3D image: the 2D/3D choice, a 3D model from a 3D Labels layer with the
layer's z-scale and patch sizes fitted to the volume (shown on the device line), the current-slice
live preview, then the Predict widget on the volume."""

from __future__ import annotations

import numpy as np

from napari_unet.data.samples import ball_volume
from napari_unet.runtime.sizes import describe_sizes
from napari_unet.widgets._session import session_for
from napari_unet.widgets.predict import PredictWidget
from napari_unet.widgets.train import CURRENT, SCRATCH, SLICES, VOLUME, TrainWidget


def test_3d_choice_trains_a_3d_model_with_the_layer_z_scale(make_napari_viewer, qtbot, notifications):
    viewer = make_napari_viewer()
    image, mask = ball_volume(np.random.default_rng(0), shape=(12, 40, 40), z_scale=2.0, n=5)
    viewer.add_image(np.zeros((40, 40), np.float32), name="flat")
    viewer.add_image(image, name="vol", scale=(1.0, 0.5, 0.5))  # voxels twice as deep as wide
    viewer.add_labels(mask.astype(np.uint32), name="vol annotations", scale=(1.0, 0.5, 0.5))
    widget = TrainWidget(viewer)
    widget.image.value = "flat"
    assert not widget.dims.enabled  # a 2D image: no 2D/3D choice
    widget.image.value = "vol"
    assert widget.dims.enabled and widget.dims.value == SLICES and not widget.preview_volume.enabled
    widget.dims.value = VOLUME
    assert widget.preview_volume.enabled and not any(c.startswith("pretrained:") for c in widget.init.choices)
    tiny = {"labels": "vol annotations", "init": SCRATCH, "time_limit": 5, "patch_size": 0, "batch_size": 0,  # auto
            "base_width": 4, "depth": 2, "preview_every": 0.5, "preview_mc": 0}
    for name, value in tiny.items():
        getattr(widget, name).value = value
    viewer.dims.set_current_step(0, 7)
    widget.train_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget.previews >= 1, timeout=60_000)
    probability = viewer.layers["vol probability"].data
    assert probability.shape == image.shape and viewer.layers["vol prediction"].data.shape == image.shape
    filled = np.flatnonzero(probability.reshape(len(probability), -1).any(axis=1))
    assert filled.tolist() == [7]  # the cheap preview: the current slice only
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)

    widget.preview_volume.value = True  # on request: the whole volume
    assert widget._preview_data(viewer.layers["vol"]).shape == image.shape and widget._plane is None

    model = session_for(viewer).model
    assert model is not None and model.config.model.dims == 3 and model.config.z_scale == 2.0
    patch = model.config.patch_size  # sized to the annotated slab by the core rule, shown on the device line
    assert len(patch) == 3 and patch[0] <= 12 and patch[1:] == (40, 40)
    assert describe_sizes(model.config.batch_size, patch) + " per step" in widget.device_label.value
    predict = PredictWidget(viewer)
    predict.model.value = CURRENT
    predict.mc_samples.value = 0
    _predict(predict, "vol", qtbot)
    assert "done" in predict.status.value
    assert viewer.layers["vol prediction"].data.shape == image.shape
    _predict(predict, "flat", qtbot)  # a 3D model refuses a 2D image with a one-line notification
    assert any(kind == "error" and "3D model needs (Z, Y, X) volumes" in text for kind, text in notifications)


def _predict(predict: PredictWidget, image: str, qtbot) -> None:
    """Predict layer ``image`` with the Predict widget's settings and wait for the worker to end."""
    predict.image.value = image
    predict.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=60_000)
