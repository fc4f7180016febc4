"""The user-level decisions the CLI and the widgets share: array layouts (``arrays.layout``), the
class-count rule, the ``TrainConfig`` for a request, model specs (``workflows``) and automatic
prompts (``diffusion.auto_prompts``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_unet.arrays.layout import annotated_planes, array_layout
from napari_unet.cli import build_parser, train_request
from napari_unet.config import AugmentConfig, LossConfig, TrainConfig, UNetConfig
from napari_unet.diffusion.auto_prompts import auto_prompts
from napari_unet.errors import UserError
from napari_unet.workflows.classes import task_and_classes, user_task, zero_is_unannotated
from napari_unet.workflows.model_spec import CURRENT, batch_source, resolve_model, start_model
from napari_unet.workflows.train_request import TrainRequest, train_config_for


@pytest.mark.parametrize("shape, rgb, channels, dims, kind, spatial, channel_axis, stack_axis, n", [
    ((64, 80), False, None, 2, "image", (64, 80), None, None, 1),
    ((64, 80, 3), True, None, 2, "rgb", (64, 80), 2, None, 3),
    ((64, 80, 3), False, None, 2, "channels", (64, 80), 2, None, 3),  # a colour file (no rgb flag)
    ((2, 64, 80), False, None, 2, "channels", (64, 80), 0, None, 2),
    ((2, 64, 80), False, 2, 2, "channels", (64, 80), 0, None, 2),
    ((3, 64, 80), False, 1, 2, "channels", (64, 80), 0, None, 3),  # a grey model averages them
    ((7, 64, 80), False, None, 2, "stack", (64, 80), None, 0, 1),
    ((5, 64, 80, 3), True, None, 2, "rgb", (64, 80), 3, 0, 3),
    ((5, 2, 64, 80), False, None, 2, "stack", (64, 80), 1, 0, 2),
    ((16, 64, 80), False, None, 3, "volume", (16, 64, 80), None, None, 1),
    ((16, 2, 64, 80), False, None, 3, "volume", (16, 64, 80), 1, None, 2),
    ((2, 16, 64, 80), False, None, 3, "volume", (16, 64, 80), 0, None, 2),
    ((16, 64, 80, 3), True, None, 3, "rgb", (16, 64, 80), 3, None, 3),
])
def test_array_layout(shape, rgb, channels, dims, kind, spatial, channel_axis, stack_axis, n):
    layout = array_layout(shape, rgb, channels, dims)
    assert (layout.kind, layout.spatial, layout.channel_axis, layout.stack_axis, layout.n_channels) == \
        (kind, spatial, channel_axis, stack_axis, n)


@pytest.mark.parametrize("shape, dims", [((64,), 2), ((9, 9, 64, 80), 2), ((2, 3, 4, 64, 80), 2), ((16, 64), 3),
                                         ((16, 32, 64, 80), 3)])
def test_array_layout_refuses_what_is_no_image(shape, dims):
    with pytest.raises(UserError, match="shape"):
        array_layout(shape, dims=dims)


def test_stack_annotations_become_their_annotated_planes():
    image, labels = np.zeros((4, 8, 8)), np.zeros((4, 8, 8), np.uint16)
    labels[2, 1, 1] = 1
    assert [name for name, *_ in annotated_planes("s", image, labels)] == ["s[2]"]
    assert [name for name, *_ in annotated_planes("v", image, labels, dims=3)] == ["v"]


def test_a_3d_model_trains_on_the_annotated_slab_or_on_the_whole_volume_of_partial_annotations():
    image, labels = np.zeros((10, 8, 8)), np.zeros((10, 8, 8), np.uint16)
    labels[3, 1, 1], labels[6, 2, 2] = 1, 2  # two painted planes
    (_, slab, slab_labels), = annotated_planes("v", image, labels, dims=3)  # 0 = background: planes 3-6
    assert slab.shape == slab_labels.shape == (4, 8, 8) and slab_labels[0, 1, 1] == 1
    (_, whole, whole_labels), = annotated_planes("v", image, labels, dims=3, zero_unannotated=True)
    assert whole.shape == (10, 8, 8) and (whole_labels == labels).all()  # 0 = not annotated: every plane


@pytest.mark.parametrize("values, task, expected", [
    ({0, 255}, "classes", ("semantic", False, 2)),  # the binary file convention: 2 classes, not 256
    ({0, 1, 2}, "classes", ("semantic", False, 3)),
    ({0, 1}, "classes", ("semantic", False, 2)),
    ({0, 1, 3}, "sparse", ("semantic", True, 3)),  # 0 unlabelled, 1 background, 2.. classes
    ({0, 1}, "sparse", ("semantic", True, 2)),
    ({0, 5, 9}, "instances", ("instances", False, 2)),
])
def test_one_class_count_rule(values, task, expected):
    mask = np.array(sorted(values) * 4, np.uint16).reshape(4, -1)
    decided = task_and_classes([mask, np.zeros_like(mask)], task)
    assert (decided.task, decided.sparse, decided.n_classes) == expected


def test_class_count_given_and_its_checks():
    mask = np.array([[0, 1, 2]], np.uint8)
    assert task_and_classes([mask], "classes", n_classes=5).n_classes == 5
    with pytest.raises(UserError, match="3 classes, more than the 2"):
        task_and_classes([mask], "classes", n_classes=2)
    with pytest.raises(UserError, match="unknown task"):
        task_and_classes([mask], "painting")


def test_the_three_task_spellings_agree():
    assert user_task("semantic", sparse=True) == user_task("sparse") == "sparse"
    assert user_task("semantic") == "classes" and user_task("instances") == "instances"


def test_request_defaults_are_the_dataclass_defaults():
    image, mask = np.zeros((32, 32), np.float32), np.zeros((32, 32), np.uint16)
    assert train_config_for(TrainRequest(), [image], [mask]) == TrainConfig()
    colour = train_config_for(TrainRequest(instance_head="star"), [np.zeros((32, 32, 3))], [mask])
    assert colour.model.in_channels == 3 and colour.instance_head == "star"


def test_cli_flags_give_the_same_config_as_the_request(tmp_path):
    args = build_parser().parse_args(["train", "i", "m", "--out", str(tmp_path), "--task", "semantic",
                                      "--steps", "7", "--patch-size", "64", "--depth", "2"])
    masks = [np.array([[0, 255]], np.uint8)]
    cfg = train_config_for(train_request(args), [np.zeros((8, 8))], masks)
    assert cfg.n_classes == 2 and cfg.task == "semantic" and not cfg.sparse  # no 256-class head
    assert cfg.time_limit is None and cfg.steps == 7 and cfg.model == UNetConfig(depth=2)
    assert cfg.augment == AugmentConfig() and cfg.loss == LossConfig()


@pytest.mark.parametrize("request_, message", [
    (TrainRequest(time_limit=0), "time limit must be positive"),
    (TrainRequest(instance_head="blob"), "unknown instance head"),
    (TrainRequest(in_channels=6), "between 1 and 4"),
    (TrainRequest(synthetic=True, synthetic_ratio=1.5), "synthetic share"),
])
def test_bad_requests_are_one_line_errors(request_, message):
    with pytest.raises(UserError, match=message):
        train_config_for(request_, [np.zeros((8, 8))], [np.zeros((8, 8), np.uint8)])


def test_model_specs(tmp_path):
    nuclei = resolve_model("pretrained:nuclei")
    assert nuclei.task == "instances"
    assert resolve_model(CURRENT, current=nuclei) is nuclei
    assert resolve_model("none", required=False) is None
    assert batch_source(CURRENT, nuclei) == (CURRENT, nuclei)
    folder, preloaded = batch_source("pretrained:nuclei")
    assert preloaded is None and (Path(folder) / "model.json").is_file()
    assert start_model(None, "instances").config == nuclei.config  # the instances default
    assert start_model(None, "classes") is None and start_model(None, "instances", {"depth": 2}) is None
    for spec, message in [(CURRENT, "no model yet"), ("none", "a model is required"),
                          (tmp_path / "missing", "no such model folder"), ("pretrained:em", "unknown starting model"),
                          (tmp_path, "not a napari-unet model folder")]:
        with pytest.raises(UserError, match=message) as err:
            resolve_model(spec)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="depth 2 does not match the starting model"):
        start_model("pretrained:nuclei", "instances", {"depth": 2})
    with pytest.raises(UserError, match="dims 3 does not match the starting model .*2D"):  # the Train widget's 3D check
        start_model("pretrained:nuclei", "instances", {"dims": 3})


def test_auto_prompts_take_shapes_from_given_masks_first():
    mask = np.zeros((64, 64), np.uint16)
    mask[10:20, 10:22], mask[40:52, 30:38] = 1, 2
    prompts = auto_prompts(None, 3, 48, seed=1, fallback_masks=[mask], objects=4)
    assert len(prompts) == 3 and all(p.shape == (48, 48) and p.max() >= 1 for p in prompts)
    assert all(np.array_equal(a, b) for a, b in zip(prompts, auto_prompts(None, 3, 48, seed=1, source_masks=[mask],
                                                                          objects=4)))
    for kwargs, message in [(dict(count=0), "must be positive"), (dict(size=8), "at least 16"),
                            (dict(vary=True, objects=3), "leave out the object count"), (dict(), "need object shapes")]:
        args = dict(count=2, size=32) | kwargs
        with pytest.raises(UserError, match=message):
            auto_prompts(None, args.pop("count"), args.pop("size"), **args)


@pytest.mark.parametrize("task, zero_unannotated", [("instances", False), ("partial", True), ("classes", False),
                                                    ("sparse", True), ("semantic", False)])
def test_zero_means_not_annotated_in_partial_annotations_and_scribbles(task, zero_unannotated):
    assert zero_is_unannotated(task) is zero_unannotated
