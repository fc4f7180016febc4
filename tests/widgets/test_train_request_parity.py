"""The CLI and the Train widget turn the same request into the same ``TrainConfig``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_unet.cli import build_parser, train_request
from napari_unet.files.io import pair_files, read_image, read_mask, write_image
from napari_unet.widgets.train import SCRATCH, TASK_LABELS, TASKS, TrainWidget
from napari_unet.workflows.train_request import train_config_for


def partial_mask(instances: np.ndarray) -> np.ndarray:
    """A partial instance annotation of ground truth: the top half painted (background 1, objects
    2..), the bottom half left unannotated (0)."""
    mask = np.where(instances > 0, instances.astype(np.int64) + 1, 1).astype(np.uint16)
    mask[mask.shape[0] // 2:] = 0
    return mask


MASKS = {"binary": lambda inst: np.where(inst > 0, 255, 0).astype(np.uint8),
         "instances": lambda inst: inst.astype(np.uint16), "partial": partial_mask}


@pytest.mark.parametrize("widget_task, head, flags, kind", [
    ("classes (every pixel labelled)", "3class", ["--task", "semantic"], "binary"),  # {0, 255}: 2 classes both ways
    ("instances", "star", ["--instance-head", "star"], "instances"),
    (TASK_LABELS["partial"], "3class", ["--sparse"], "partial"),  # partial instances: instances + --sparse
    (TASK_LABELS["partial"], "3class", ["--task", "partial"], "partial"),  # the same, in the widget's word
])
def test_cli_and_widget_build_the_same_train_config(make_napari_viewer, tmp_path, widget_task, head, flags, kind):
    from napari_unet.data.samples import load_sample

    image, instances = load_sample()
    mask = MASKS[kind](instances)
    write_image(tmp_path / "images" / "a.tif", image)
    write_image(tmp_path / "masks" / "a.tif", mask)

    args = build_parser().parse_args(["train", str(tmp_path / "images"), str(tmp_path / "masks"), "--out",
                                      str(tmp_path / "model"), "--init", "none", "--time-limit", "45",
                                      "--patch-size", "64", "--batch-size", "4", "--depth", "3", "--base-width", "8",
                                      "--device", "cpu", "--checkpoint-every", "0", *flags])
    files = pair_files(args.images, args.masks)
    from_cli = train_config_for(train_request(args), [read_image(i) for i, _ in files],
                                [read_mask(m) for _, m in files])

    viewer = make_napari_viewer()
    viewer.add_image(image, name="a")
    viewer.add_labels(mask.astype(np.uint32), name="a annotations")
    widget = TrainWidget(viewer)
    widget.image.value, widget.labels.value = "a", "a annotations"
    widget.task.value, widget.instance_head.value, widget.init.value = widget_task, head, SCRATCH
    widget.time_limit.value, widget.patch_size.value, widget.batch_size.value = 45, 64, 4
    widget.depth.value, widget.base_width.value, widget.device.value = 3, 8, "cpu"
    widget.preview_mc.value = 0  # the live uncertainty layer has no CLI counterpart
    pairs, _ = widget._gather()
    from_widget = widget.config(pairs)

    assert from_widget.threads is not None  # the widget leaves a core to the viewer; the CLI uses torch's default
    assert replace(from_widget, threads=None) == from_cli
    assert from_cli.n_classes == 2 and from_cli.instance_head == head
    assert from_cli.sparse == (kind == "partial") and from_cli.task == ("semantic" if kind == "binary" else "instances")


def test_every_user_task_is_a_train_widget_choice():
    from napari_unet.workflows.classes import USER_TASKS

    assert sorted(TASKS.values()) == sorted(USER_TASKS)


def test_cli_and_widget_refuse_the_same_architecture_clash(make_napari_viewer, qtbot, notifications, tmp_path, capsys):
    """A depth the user asked for that is not the starting model's is one line in both front ends;
    the widget asks for it only when its advanced setting left the default."""
    from napari_unet.cli import main
    from napari_unet.config import UNetConfig
    from napari_unet.data.samples import load_sample

    image, instances = load_sample()
    write_image(tmp_path / "images" / "a.tif", image)
    write_image(tmp_path / "masks" / "a.tif", instances.astype(np.uint16))
    clash = "depth 3 does not match the starting model pretrained:nuclei"
    assert main(["train", str(tmp_path / "images"), str(tmp_path / "masks"), "--out", str(tmp_path / "model"),
                 "--init", "pretrained:nuclei", "--depth", "3", "--quiet"]) == 2
    assert f"--{clash}" in capsys.readouterr().err

    viewer = make_napari_viewer()
    viewer.add_image(image, name="a")
    viewer.add_labels(instances.astype(np.uint32), name="a annotations")
    widget = TrainWidget(viewer)
    widget.image.value, widget.labels.value, widget.init.value = "a", "a annotations", "pretrained:nuclei"
    widget.depth.value, widget.device.value = 3, "cpu"
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    errors = [text for kind, text in notifications if kind == "error"]
    assert errors and clash in errors[-1] and "\n" not in errors[-1]
    assert widget.session.model is None  # nothing trained

    widget.depth.value = UNetConfig().depth  # the default: the starting model's architecture is taken
    assert "depth" not in widget._train_run(widget.config(widget._gather()[0])).architecture
