"""Every widget opens with the obvious layers chosen: one image and its `<image> annotations`."""

from __future__ import annotations

import numpy as np


def _image_and_annotations(viewer):
    from napari_unet.data.samples import load_sample

    image, labels = load_sample()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels.astype(np.uint32), name="nuclei annotations")


def test_widgets_opened_after_the_layers_preselect_them(make_napari_viewer, notifications, monkeypatch):
    from napari_unet.widgets.annotate import AnnotateWidget
    from napari_unet.widgets.predict import PredictWidget
    from napari_unet.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    _image_and_annotations(viewer)  # the annotations layer is now the active one
    train, predict, annotate = TrainWidget(viewer), PredictWidget(viewer), AnnotateWidget(viewer)
    assert (train.image.value, train.labels.value) == ("nuclei", "nuclei annotations")
    assert predict.image.value == "nuclei"
    assert annotate.image.value == "nuclei"
    # Train finds a pair to train on with no click other than Train (the worker itself is not run here)
    started = []
    monkeypatch.setattr("napari_unet.widgets.train.run_in_thread", lambda *a, **k: started.append(a))
    train.start()
    assert started and not [m for kind, m in notifications if "nothing to train on" in m]
    assert "nuclei" in train.session.project.names()


def test_widgets_opened_first_follow_the_layers_but_keep_a_users_choice(make_napari_viewer):
    from napari_unet.widgets.predict import PredictWidget
    from napari_unet.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    train, predict = TrainWidget(viewer), PredictWidget(viewer)
    assert train.image.value is None and predict.image.value is None
    _image_and_annotations(viewer)
    assert (train.image.value, train.labels.value) == ("nuclei", "nuclei annotations")
    assert predict.image.value == "nuclei"
    viewer.add_image(np.zeros((64, 64), np.uint8), name="other")
    predict.image.value = "other"
    viewer.add_image(np.ones((64, 64), np.uint8), name="third")
    assert predict.image.value == "other" and train.image.value == "nuclei"
