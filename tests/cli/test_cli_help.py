"""The CLI's --help states the real defaults, read from the config dataclasses."""

from __future__ import annotations

import re

from napari_unet.cli import build_parser
from napari_unet.config import CPU_SIZES, CPU_VOLUME_SIZES, PredictConfig, TrainConfig, UNetConfig
from napari_unet.workflows.batch import BatchConfig


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return re.sub(r"\s+", " ", sub.format_help())


def test_train_help_states_the_config_defaults():
    text, t, u = _help("train"), TrainConfig(), UNetConfig()
    assert f"--base-width BASE_WIDTH default {u.base_width} (from scratch only)" in text
    assert f"--depth DEPTH default {u.depth} " in text
    sized = f"(default: sized to the device: {CPU_SIZES[0]} x {CPU_SIZES[1]}² on the CPU, up to"
    assert t.batch_size is None and t.patch_size is None and text.count(sized) == 1  # None: sized to the device
    assert f"{CPU_VOLUME_SIZES[1]:,} voxels per step on the CPU" in text and "sized as --batch-size says" in text
    assert f"default {t.time_limit:g} when no --epochs/--steps" in text
    args = build_parser().parse_args(["train", "i", "m", "--out", "o"])
    assert (args.batch_size, args.patch_size, args.seed, args.device) == (t.batch_size, t.patch_size, t.seed, t.device)
    assert build_parser().parse_args(["train", "i", "m", "--out", "o", "--patch-size", "16,64,64"]).patch_size == (16, 64, 64)


def test_predict_help_states_the_config_defaults():
    text, p, b = _help("predict"), PredictConfig(), BatchConfig()
    assert f"(default: {p.tile_size})" in text and f"--uncertainty (default: {b.mc_samples})" in text
    args = build_parser().parse_args(["predict", "pretrained:nuclei", "x.png", "--out", "o"])
    assert (args.tile_size, args.mc_samples, args.format) == (p.tile_size, b.mc_samples, b.format)
