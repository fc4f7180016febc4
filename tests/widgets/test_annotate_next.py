"""Annotate next across the training set: ranking every training-set image, switching the viewer
between images as the tour goes, and predicting the uncertainty maps that are missing."""

from __future__ import annotations

import numpy as np
import torch

from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.inference.suggest import rank_regions_across
from napari_unet.models.bundle import ModelBundle, build_network
from napari_unet.widgets._layers import annotations_name, show_uncertainty, uncertainty_name
from napari_unet.widgets._session import session_for
from napari_unet.widgets.predict import TRAINING_SET, PredictWidget
from napari_unet.widgets.train import CURRENT


def _training_set(viewer, images: dict) -> None:
    """Image layers (b shifted right, as a second tile would be) attached with empty annotations."""
    session = session_for(viewer)
    for i, (name, data) in enumerate(images.items()):
        layer = viewer.add_image(data, name=name, translate=(0, 500 * i))
        session.attach(layer, viewer.add_labels(np.zeros(data.shape[:2], np.uint32), name=annotations_name(name),
                                                translate=(0, 500 * i)))


def test_tour_ranks_all_training_images_and_switches_between_them(make_napari_viewer):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    _training_set(viewer, {"a": rng.random((120, 160)), "b": rng.random((100, 100))})
    ua, ub = np.zeros((120, 160)), np.zeros((100, 100))
    ua[10:40, 20:50] = 0.6
    ub[50:80, 60:90], ub[5:30, 5:30] = 1.0, 0.3
    show_uncertainty(viewer, viewer.layers["a"], ua, "epistemic")
    show_uncertainty(viewer, viewer.layers["b"], ub, "epistemic")
    widget = PredictWidget(viewer)
    widget.image.value = "a"
    widget.scope.value = TRAINING_SET
    widget.n_regions.value, widget.region_size.value = 3, 32
    viewer.layers.selection.active = viewer.layers["a annotations"]  # the user was painting image a

    widget.suggest()
    assert [r.name for r in widget.tour.regions] == ["b", "a", "b"]
    layers = viewer.layers
    assert layers["b"].visible and layers["b annotations"].visible  # switched to b, the best region's image
    assert not any(layers[n].visible for n in ("a", "a annotations", "a uncertainty"))
    assert layers.selection.active is layers["b annotations"] and widget.image.value == "b"
    boxes = layers["annotate next"]
    assert len(boxes.data) == 2 and tuple(boxes.translate) == (0, 500)  # only b's boxes, where b is
    assert list(boxes.text.values) == ["#1", "#3"]
    assert np.allclose(viewer.camera.center[-2:], np.add(widget.tour.regions[0].centre, (0, 500)))
    assert 50 <= widget.tour.regions[0].centre[0] <= 80 and "region 1/3 in b" in widget.status.value
    assert "× the image's mean uncertainty" in widget.status.value

    widget.go_to_next()
    assert layers["a"].visible and layers["a uncertainty"].visible and not layers["b"].visible
    assert layers.selection.active is layers["a annotations"] and widget.image.value == "a"
    assert len(layers["annotate next"].data) == 1 and tuple(layers["annotate next"].translate) == (0, 0)
    assert np.allclose(viewer.camera.center[-2:], widget.tour.regions[1].centre)
    assert "region 2/3 in a" in widget.status.value

    widget.go_to_next()
    assert layers["b"].visible and not layers["a"].visible and len(layers["annotate next"].data) == 2


def test_missing_uncertainty_is_predicted_before_ranking(make_napari_viewer, qtbot, showcase):
    viewer = make_napari_viewer()
    image = showcase[0]
    grey = image.mean(-1) if image.ndim == 3 else image
    _training_set(viewer, {"a": grey[:96, :128].astype(np.float32), "b": grey[96:192, :96].astype(np.float32)})
    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4, dropout=0.3))
    session = session_for(viewer)
    session.model = ModelBundle(build_network(cfg).eval(), cfg)
    widget = PredictWidget(viewer)
    widget.model.reset_choices()
    widget.model.value = CURRENT
    widget.image.value = "a"
    widget.mc_samples.value = 2
    widget.scope.value = TRAINING_SET
    widget.n_regions.value, widget.region_size.value = 4, 32

    widget.suggest()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    maps = []
    for name, shape in (("a", (96, 128)), ("b", (96, 96))):
        layer = viewer.layers[uncertainty_name(name)]
        assert layer.data.shape == shape and layer.metadata["kind"] == "epistemic" and np.isfinite(layer.data).all()
        maps.append(np.asarray(layer.data))
    regions = widget.tour.regions
    assert regions == rank_regions_across(maps, 32, 4, ["a", "b"])  # the same ranking as the core function
    assert "annotate next" in viewer.layers and "region 1/4 in" in widget.status.value


def test_empty_training_set_warns(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="lonely")
    widget = PredictWidget(viewer)
    widget.scope.value = TRAINING_SET
    widget.suggest()
    assert notifications and "training set is empty" in notifications[-1][1] and widget.worker is None
