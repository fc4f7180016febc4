"""Benchmark: 3D training with the default sizes, from the command line, on synthetic nuclei volumes.

Run: ``.venv/bin/python bench/bench_3d.py [--out /tmp/bench3d] [--train 6] [--test 4] [--time-limit 120]
[--z-scale 1] [--seed 0] [--extra "--steps 300"]``

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
    from napari_unet.io import write_image

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench3d", help="data, model and predictions (default: %(default)s)")
    parser.add_argument("--train", type=int, default=6)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--z-scale", type=float, default=1.0, help="voxel depth of the data and the flag")
    parser.add_argument("--seed", type=int, default=0, help="data seed (the test volumes use seed + 1000)")
    parser.add_argument("--extra", default="", help="more train flags, e.g. '--steps 300'")
    args = parser.parse_args()
    from napari_unet.io import read_mask
    from napari_unet.metrics import evaluate_instances

    out = Path(args.out)
    write_set(out / "train", args.train, args.seed, args.z_scale)
    write_set(out / "test", args.test, args.seed + 1000, args.z_scale)
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
