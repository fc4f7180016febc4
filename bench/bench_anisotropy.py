"""Benchmark: a 3D U-Net on anisotropic volumes, with and without telling it the z-scale.

Run: ``.venv/bin/python bench/bench_anisotropy.py [--steps 80] [--seeds 1] [--first-seed 0] [--runs 1:24 2:24]``

Data: synthetic noisy balls (``samples.ball_volume``), 12 x 40 x 40 voxels twice as deep as
wide (z_scale 2), 4 training volumes (one held out for validation) and 3 test volumes. Each run
``Z:P`` trains a depth-2, width-4 3D U-Net for a fixed number of steps with ``TrainConfig.z_scale
= Z`` and ``patch_size = P`` (``Z = 1`` treats the voxels as cubes: deeper patches, isotropic
elastic displacements and border-weight distances), then prints the foreground IoU and AP@0.5
on the test volumes. Fixed steps, so the figures do not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from napari_unet.arrays.volumes import patch_shape  # noqa: E402
from napari_unet.config import TrainConfig, UNetConfig  # noqa: E402
from napari_unet.data.samples import ball_volume  # noqa: E402
from napari_unet.inference.predict import predict_image  # noqa: E402
from napari_unet.metrics import evaluate_instances  # noqa: E402
from napari_unet.training.engine import train  # noqa: E402

TRUE_Z_SCALE = 2.0
SHAPE = (12, 40, 40)


def run(z_scale: float, patch: int, steps: int, seed: int) -> tuple[float, float]:
    """(foreground IoU, AP@0.5) on the test volumes after ``steps`` steps told ``z_scale``."""
    rng = np.random.default_rng(seed)
    pairs = [ball_volume(rng, SHAPE, 5, TRUE_Z_SCALE) for _ in range(4)]
    tests = [ball_volume(np.random.default_rng(1000 + seed + i), SHAPE, 5, TRUE_Z_SCALE) for i in range(3)]
    cfg = TrainConfig(model=UNetConfig(dims=3, depth=2, base_width=4), patch_size=patch, z_scale=z_scale,
                      batch_size=2, steps=steps, time_limit=None, learning_rate=1e-2, validation_fraction=0.25,
                      validate_every=1e9, seed=seed)
    events = train(pairs, cfg)
    try:
        while True:
            next(events)
    except StopIteration as stop:
        bundle = stop.value
    ious, preds = [], []
    for image, truth in tests:
        labels = predict_image(bundle, image).labels
        ious.append(np.logical_and(labels > 0, truth > 0).sum() / np.logical_or(labels > 0, truth > 0).sum())
        preds.append((labels, truth))
    return float(np.mean(ious)), float(evaluate_instances(preds)["ap50"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=["1:24", "2:24"], help="Z_SCALE:PATCH pairs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"| told z_scale | patch (z, y, x) | foreground IoU | AP@0.5 |  ({args.steps} steps, "
          f"{args.seeds} seed(s), true z_scale {TRUE_Z_SCALE:g})")
    for spec in args.runs:
        z_scale, patch = float(spec.split(":")[0]), int(spec.split(":")[1])
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        scores = [run(z_scale, patch, args.steps, seed) for seed in seeds]
        iou, ap = (float(np.mean(v)) for v in zip(*scores))
        shape = patch_shape(TrainConfig(model=UNetConfig(dims=3), patch_size=patch, z_scale=z_scale))
        print(f"| {z_scale:g} | {' x '.join(map(str, shape))} | {iou:.3f} | {ap:.3f} |", flush=True)


if __name__ == "__main__":
    main()
