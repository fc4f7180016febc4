"""Benchmark: 3D training with the default sizes, from the command line, on synthetic nuclei volumes.

Run: ``.venv/bin/python bench/bench_3d.py [--out /tmp/bench3d] [--train 6] [--test 4] [--time-limit 120]
[--z-scale 1] [--seed 0] [--extra "--seed 1"]``; ``--split 20 [--old-sizes]`` times 20 steps split into
data and network (and one validation) instead of training.

Data: ``--train`` + ``--test`` volumes of 32 x 96 x 96 voxels (``--z-scale 2``: 16 planes of twice
the depth, the same tissue) holding crowded ellipsoid nuclei (radii 5-8 in z, 6-10 in y/x,
touching: a voxel inside several belongs to the nearest centre), each with its own brightness
and a grainy texture, blurred twice as much along z as in y/x (an axially elongated PSF), on a
background with a gradient, with Poisson and Gaussian noise, written as uint16 TIFFs.

The training is the user's command, nothing else set:
``napari-unet train DATA/train/images DATA/train/masks --dims 3 --time-limit 120 --out DATA/model``
(``--z-scale`` added when it is not 1), then ``napari-unet predict DATA/model DATA/test/images``;
the held-out volumes' labels are scored with ``napari_unet.metrics.evaluate_instances`` (3D
IoU matching, objects pooled). Prints the steps, seconds per step, the sizes chosen, the
validation score and AP@0.5 / mean AP on the held-out volumes, with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = (32, 96, 96)  # (Z, Y, X) at z-scale 1


def nuclei_volume(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE, n: int = 60,
                  z_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Crowded ellipsoid nuclei: (image uint16 (Z, Y, X), instance labels uint16 (Z, Y, X)).

    ``shape`` is at z-scale 1; with ``z_scale`` s the volume holds ``Z / s`` planes of s pixel
    widths each (the same tissue, sampled coarser in z). Up to ``n`` nuclei are placed by
    rejection so that neighbours touch but do not swallow each other.
    """
    planes = max(int(round(shape[0] / z_scale)), 1)
    zz, yy, xx = np.indices((planes, shape[1], shape[2]), dtype=np.float32)
    zz = zz * z_scale + (z_scale - 1) / 2  # plane centres in pixel widths
    centres, radii = [], []
    for _ in range(n * 30):
        if len(centres) == n:
            break
        c = rng.uniform([0, 0, 0], shape)
        r = np.array([rng.uniform(5, 8), *rng.uniform(6, 10, 2)])
        if all(np.linalg.norm((c - c2) / ((r + r2) / 2)) > 0.8 for c2, r2 in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    best = np.full(zz.shape, 1.0, np.float32)  # normalised distance of the nearest centre (< 1: inside)
    labels = np.zeros(zz.shape, np.uint16)
    image = np.zeros(zz.shape, np.float32)
    grain = ndi.gaussian_filter(rng.normal(0, 1, zz.shape).astype(np.float32), 1.0)
    for i, (c, r) in enumerate(zip(centres, radii)):
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - c[1], xx - c[2]
        u, v = np.cos(angle) * dy + np.sin(angle) * dx, -np.sin(angle) * dy + np.cos(angle) * dx
        d = ((zz - c[0]) / r[0]) ** 2 + (u / r[1]) ** 2 + (v / r[2]) ** 2
        inside = d < best
        labels[inside], best[inside] = i + 1, d[inside]
        brightness = rng.uniform(0.5, 1.5)
        image[inside] = brightness * (1 + 0.25 * grain[inside]) * (1 - 0.3 * d[inside])
    image = ndi.gaussian_filter(image, (2.0 / z_scale, 1.0, 1.0))  # the PSF: twice as long along z
    image += 0.15 + 0.1 * xx / shape[2]  # background with a gradient
    photons = rng.poisson(np.clip(image, 0, None) * 60).astype(np.float32) / 60
    image = photons + rng.normal(0, 0.05, image.shape)
    image = np.clip(image * 4000 + 500, 0, 65535).astype(np.uint16)
    return image, relabel(labels)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids, dropping nuclei that kept fewer than 20 voxels (cut by neighbours or the edge)."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    lut = np.zeros(int(labels.max()) + 1, np.uint16)
    keep = ids[counts >= 20]
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels]


def write_set(folder: Path, count: int, seed: int, z_scale: float) -> None:
    """``count`` volumes and masks under ``folder/images`` and ``folder/masks``."""
    from napari_unet.files.io import write_image

    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = nuclei_volume(rng, z_scale=z_scale)
        write_image(folder / "images" / f"v{i}.tif", image)
        write_image(folder / "masks" / f"v{i}.tif", mask)


def run(cmd: list[str]) -> float:
    """Run a CLI command (printed), fail loudly; return its wall-clock seconds."""
    print("$", shlex.join(cmd), flush=True)
    began = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - began


def step_split(folder: Path, steps: int, sizes: tuple[int, tuple[int, int, int]] | None = None) -> None:
    """Seconds per step in data (patch sampling + augmentation) and network (forward, loss, backward,
    optimiser) with the default sizes on this machine's CPU (or ``sizes``: (batch, patch)), and of one
    validation of a held-out volume (prediction + scoring), as the engine runs them."""
    import torch

    from napari_unet.config import TrainConfig, UNetConfig
    from napari_unet.data.augment import augment_batch
    from napari_unet.data.dataset import PatchSampler, prepare_pairs
    from napari_unet.files.io import read_image, read_mask
    from napari_unet.models.bundle import build_network
    from napari_unet.runtime.device import (autocast, channels_last_format, low_precision_dtype,
                                              with_device_sizes)
    from napari_unet.heads.losses import segmentation_loss
    from napari_unet.training.validation import validate
    from napari_unet.arrays.volumes import patch_shape, voxel_spacing

    files = sorted((folder / "images").glob("*.tif"))
    pairs = [(read_image(f), read_mask(folder / "masks" / f.name)) for f in files]
    cpu = torch.device("cpu")
    cfg = TrainConfig(model=UNetConfig(dims=3))
    prepared = prepare_pairs(pairs, cfg)
    cfg = with_device_sizes(cfg, cpu, [p.target.shape for p in prepared])
    if sizes is not None:
        cfg = TrainConfig(model=cfg.model, batch_size=sizes[0], patch_size=sizes[1])
    dtype = low_precision_dtype(cpu, None)
    net = build_network(cfg).to(memory_format=channels_last_format(3)) if dtype else build_network(cfg)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate)
    sampler = PatchSampler(prepared[1:], patch_shape(cfg), np.random.default_rng(0))
    generator = torch.Generator().manual_seed(0)
    data = network = 0.0
    for step in range(steps + 1):  # the first step warms up
        began = time.perf_counter()
        images, targets, weights = (torch.from_numpy(a) for a in sampler.sample(cfg.batch_size))
        images, targets, weights = augment_batch(images, targets, weights, cfg.augment, generator, voxel_spacing(cfg))
        if dtype:
            images = images.contiguous(memory_format=channels_last_format(3))
        middle = time.perf_counter()
        with autocast(cpu, dtype):
            logits = net(images)
        loss = segmentation_loss(logits, targets, weights, cfg.loss.dice_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            data, network = data + middle - began, network + time.perf_counter() - middle
    began = time.perf_counter()
    validate(net, prepared[:1], cfg, dtype)
    print(f"{cfg.batch_size} x {patch_shape(cfg)} per step, {steps} steps: data {data / steps:.3f} s, network "
          f"{network / steps:.3f} s per step; one validation of a {prepared[0].target.shape} volume "
          f"{time.perf_counter() - began:.2f} s; load {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench3d", help="data, model and predictions (default: %(default)s)")
    parser.add_argument("--train", type=int, default=6)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--z-scale", type=float, default=1.0, help="voxel depth of the data and the flag")
    parser.add_argument("--seed", type=int, default=0, help="data seed (the test volumes use seed + 1000)")
    parser.add_argument("--extra", default="", help="more train flags, e.g. '--steps 300'")
    parser.add_argument("--split", type=int, default=0, metavar="STEPS",
                        help="instead: time STEPS steps split into data and network, and one validation")
    parser.add_argument("--old-sizes", action="store_true", help="with --split: the former 3D default, 8 x 128³")
    args = parser.parse_args()
    from napari_unet.files.io import read_mask
    from napari_unet.metrics import evaluate_instances

    out = Path(args.out)
    write_set(out / "train", args.train, args.seed, args.z_scale)
    write_set(out / "test", args.test, args.seed + 1000, args.z_scale)
    if args.split:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI's entry point (torch not loaded yet)
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        step_split(out / "train", args.split, (8, (128, 128, 128)) if args.old_sizes else None)
        return
    cli = [sys.executable, "-m", "napari_unet"]
    model = out / "model"
    train = [*cli, "train", str(out / "train/images"), str(out / "train/masks"), "--dims", "3",
             "--time-limit", f"{args.time_limit:g}", "--out", str(model)]
    train += ["--z-scale", f"{args.z_scale:g}"] if args.z_scale != 1 else []
    load_before = os.getloadavg()
    run([*train, *shlex.split(args.extra)])
    load_after = os.getloadavg()
    meta = json.loads((model / "model.json").read_text())
    training, cfg = meta["meta"]["training"] if "meta" in meta else meta["training"], meta["config"]
    predict_seconds = run([*cli, "predict", str(model), str(out / "test/images"), "--out", str(out / "pred"),
                           "--overwrite", "--quiet"])
    pairs = [(read_mask(out / "pred" / f"v{i}.tif"), read_mask(out / "test/masks" / f"v{i}.tif"))
             for i in range(args.test)]
    scores = evaluate_instances(pairs)
    steps, seconds = training["steps"], training["seconds"]
    print(f"steps {steps} in {seconds:.0f} s ({seconds / max(steps, 1):.2f} s/step); batch {cfg['batch_size']}, "
          f"patch {cfg['patch_size']}; held-out AP@0.5 {scores['ap50']:.3f}, mean AP {scores['map']:.3f} on "
          f"{args.test} volumes ({sum(r['n_gt'] for r in scores['per_image'])} nuclei); predict {predict_seconds:.0f} s "
          f"(with start-up); load {load_before[0]:.2f} before, {load_after[0]:.2f} after training")


if __name__ == "__main__":
    main()
