"""StarDist 3D from scratch on bench_3d's training volumes for a budget of fit seconds, then its held-out volumes.

Runs in ``bench/peers/.venv-stardist`` (see setup.sh), never with napari_unet; ``bench/bench_3d.py
--peers stardist`` runs it on the volumes it wrote and scores its labels beside our 3D model:

    bench/peers/.venv-stardist/bin/python bench/peers/train_stardist3d.py --data DIR --z-scale 2 \
        --budget 120 --seed 0 --threads 1 --out DIR/stardist

Set-up as StarDist's own 3D example (``examples/3D/2_training.ipynb``): 96 rays on a golden spiral,
anisotropy from the voxel size (``(z_scale, 1, 1)``: the volumes' z-scale), grid 1 along an axis
whose anisotropy is over 1.5 and 2 otherwise, patches of at most 48 x 96 x 96 (never more than the
volumes hold), batch 2, the example's augmenter (flips and 90-degree turns in the (Y, X) plane,
a random flip along z, intensity scale and shift), no TensorBoard. Images normalised to percentiles
1-99.8, label holes filled; one training volume (chosen by ``--seed``) is held back for Keras
validation and ``optimize_thresholds``, as our CLI holds one of six back. The clock counts Keras
``fit`` only (from its first to its last callback): a callback stops training after the batch that
spends the budget. Writes ``DIR/labels.npz`` (held-out labels by volume name) and ``DIR/result.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from peer_common import (parse_args, split_held_back, stardist_budget, stardist_predict, stardist_result,
                         write_outputs)

N_HELD_BACK = 1
STEPS_PER_EPOCH = 100  # StarDist's default
N_RAYS = 96  # the 3D example's
EXAMPLE_PATCH = (48, 96, 96)  # the 3D example's train_patch_size, (Z, Y, X)
EXAMPLE_BATCH = 2


def more_arguments(parser: argparse.ArgumentParser) -> None:
    """The data folder bench_3d wrote and its voxel depth."""
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with train/images, train/masks and test/images (bench_3d.py --out)")
    parser.add_argument("--z-scale", type=float, default=1.0, help="voxel depth over pixel width of the volumes")


def grid_for(anisotropy: tuple[float, ...]) -> tuple[int, ...]:
    """The example's rule: no subsampling along an axis sampled 1.5 times coarser or more."""
    return tuple(1 if a > 1.5 else 2 for a in anisotropy)


def patch_for(shapes: list[tuple[int, ...]], grid: tuple[int, ...], depth: int = 2) -> tuple[int, ...]:
    """The example's patch, cut to the smallest volume's extent along each axis and down to a
    multiple of what the network divides by (``2**depth`` times the grid)."""
    out = []
    for axis, wanted in enumerate(EXAMPLE_PATCH):
        step = 2**depth * grid[axis]
        side = min(wanted, min(s[axis] for s in shapes))
        out.append(max(step, side // step * step))
    return tuple(out)


def read_set(folder: Path, masks: bool) -> list[tuple[str, object, object]]:
    """``(name, volume, labels or None)`` for every TIFF of ``folder/images`` (names sorted)."""
    import tifffile

    return [(f.stem, tifffile.imread(f), tifffile.imread(folder / "masks" / f.name) if masks else None)
            for f in sorted((folder / "images").glob("*.tif"))]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], more_arguments, argv)
    import numpy as np
    from csbdeep.utils import normalize
    from stardist import Rays_GoldenSpiral, fill_label_holes
    from stardist.models import Config3D, StarDist3D

    budget = stardist_budget(args)  # threads, seeds, and the callback that ends fit

    def prepare(volume: np.ndarray) -> np.ndarray:
        return normalize(volume, 1, 99.8, axis=(0, 1, 2)).astype(np.float32)  # (Z, Y, X) float32

    def augmenter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 3D example's: turns and flips in (Y, X), a flip along z, intensity scale and shift."""
        k = np.random.randint(4)
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
        for axis in (0, 1, 2):
            if np.random.rand() > 0.5:
                x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
        x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    train, test = read_set(args.data / "train", True), read_set(args.data / "test", False)
    if len(train) == 1:  # one annotated volume (bench_3d --volume): its left half fits, its right half is held back
        name, volume, labels = train[0]
        half = volume.shape[2] // 2
        fit, held = [(name, volume[..., :half], labels[..., :half])], [(name, volume[..., half:], labels[..., half:])]
    else:
        fit, held = split_held_back(train, N_HELD_BACK, args.seed)
    x_fit, y_fit = [prepare(v) for _, v, _ in fit], [fill_label_holes(m) for _, _, m in fit]
    x_held, y_held = [prepare(v) for _, v, _ in held], [fill_label_holes(m) for _, _, m in held]

    anisotropy = (float(args.z_scale), 1.0, 1.0)
    grid = grid_for(anisotropy)
    patch = patch_for([v.shape for v in x_fit], grid)
    conf = Config3D(rays=Rays_GoldenSpiral(N_RAYS, anisotropy=anisotropy), grid=grid, anisotropy=anisotropy,
                    use_gpu=False, n_channel_in=1, train_patch_size=patch, train_batch_size=EXAMPLE_BATCH,
                    train_tensorboard=False, train_steps_per_epoch=STEPS_PER_EPOCH)
    model = StarDist3D(conf, name="stardist3d", basedir=str(args.out))
    model.prepare_for_training()
    model.callbacks.append(budget)
    epochs = 10 ** 6 // STEPS_PER_EPOCH  # far more than any budget allows; the callback stops it
    start = time.perf_counter()
    model.train(x_fit, y_fit, validation_data=(x_held, y_held), augmenter=augmenter, seed=args.seed,
                epochs=epochs, steps_per_epoch=STEPS_PER_EPOCH)
    train_call_s = time.perf_counter() - start
    start = time.perf_counter()
    model.optimize_thresholds(x_held, y_held, save_to_json=False)
    thresholds_s = time.perf_counter() - start
    print(f"trained {budget.steps} steps in {budget.seconds:.0f} s; predicting {len(test)} volumes", flush=True)

    labels, post = {}, 0.0
    start = time.perf_counter()
    for name, volume, _ in test:
        lab, nms_s = stardist_predict(model, prepare(volume))
        labels[name] = lab.astype(np.int32)
        post += nms_s
    predict_s = (time.perf_counter() - start) / len(test)
    write_outputs(args.out, labels, stardist_result(
        args, budget, model, "StarDist 3D", z_scale=args.z_scale, anisotropy=anisotropy, grid=grid, patch=patch,
        batch=EXAMPLE_BATCH, n_rays=N_RAYS, train_call_s=train_call_s, thresholds_s=thresholds_s,
        predict_s_per_image=predict_s, post_s_per_image=post / len(test), n_fit=len(fit), n_held_back=len(held),
        n_test=len(test)))
    print(f"StarDist 3D {args.budget:.0f} s seed {args.seed}: {budget.steps} steps in {budget.seconds:.0f} s fit, "
          f"{EXAMPLE_BATCH} x {patch}, grid {grid}; predict {predict_s:.2f} s/volume", flush=True)


if __name__ == "__main__":
    main()
