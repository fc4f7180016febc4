"""The Predict widget's Object diameter: the image is scaled to the size the model learned, the
layers come back on the image's grid and the status line says what was used."""

from __future__ import annotations

import numpy as np

from napari_unet.data.samples import load_sample
from napari_unet.widgets._layers import prediction_name
from napari_unet.widgets.predict import PredictWidget


def test_a_given_diameter_scales_and_the_status_says_so(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = load_sample()
    big = np.repeat(np.repeat(image[:128, :128], 2, 0), 2, 1)  # nuclei at twice the magnification
    viewer.add_image(big, name="big")
    predict = PredictWidget(viewer)
    predict.image.value, predict.model.value = "big", "pretrained:nuclei"
    predict.mc_samples.value = 0
    predict.diameter.value = "40"
    predict.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=60_000)
    assert "done" in predict.status.value
    assert "object size: given 40.0 px, learned 15.6 px; image scaled x0.39" in predict.status.value
    labels = viewer.layers[prediction_name("big")].data
    assert labels.shape == big.shape and labels.max() > 0
