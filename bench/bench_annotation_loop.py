"""Does "annotate next" (epistemic uncertainty) pick better tiles to annotate than chance?

A simulated annotation loop on dsb2018_fluo: a pool of train-split images the shipped
``pretrained:nuclei`` model never trained on is cut into ``--tile`` px tiles. Each round reveals
one more tile's ground truth, fine-tunes the starting model for ``--seconds`` on the revealed
tiles (each tile its own image/mask pair, so unrevealed pixels are never called background) and
scores AP@0.5 on ``--val`` val-split images (argmax seed rule, objects pooled). Two strategies,
same rounds: the tile with the highest mean epistemic uncertainty (MC-dropout, ``--mc`` passes)
under the current model, or a random unrevealed tile.

    .venv/bin/python bench/bench_annotation_loop.py [--rounds 5] [--seconds 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_dsb, machine_description  # noqa: E402


def tiles_of(images: list, size: int) -> list[tuple[int, int, int]]:
    """(image index, y0, x0) of every full tile."""
    return [(i, y, x) for i, img in enumerate(images)
            for y in range(0, img.shape[0] - size + 1, size) for x in range(0, img.shape[1] - size + 1, size)]


def tile_uncertainty(bundle, images: list, tiles: list, size: int, mc: int) -> np.ndarray:
    """Mean epistemic uncertainty of each tile under ``bundle``."""
    from napari_unet.config import PredictConfig
    from napari_unet.inference.predict import predict_image

    maps = [predict_image(bundle, img, PredictConfig(mc_samples=mc)).uncertainty["epistemic"] for img in images]
    return np.array([maps[i][y:y + size, x:x + size].mean() for i, y, x in tiles])


def fine_tune(init, pairs: list, seconds: float, threads: int, seed: int):
    from napari_unet.cli import drive
    from napari_unet.config import TrainConfig
    from napari_unet.pretrained import fine_tune_config
    from napari_unet.training.engine import Trainer

    cfg = fine_tune_config(TrainConfig(time_limit=seconds, threads=threads, seed=seed, validation_fraction=0.0,
                                       preview_every=0, batch_size=8), init)
    return drive(Trainer(pairs, cfg, init=init).run(), "fine-tuning", quiet=True)


def score(bundle, val: list) -> float:
    from napari_unet.inference.predict import predict_image
    from napari_unet.metrics import evaluate_instances

    return float(evaluate_instances([(predict_image(bundle, img).labels, gt) for _, img, gt in val])["ap50"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=4, help="train-split images the tiles come from")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="fine-tuning per round")
    parser.add_argument("--val", type=int, default=24, help="val-split images scored")
    parser.add_argument("--mc", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from napari_unet.errors import UserError
    from napari_unet.pretrained import resolve_init
    from napari_unet.training.checkpoint import load_bundle

    torch.set_num_threads(args.threads)
    print(machine_description(), flush=True)
    start = load_bundle(resolve_init("pretrained:nuclei"))
    held = set(start.meta["training"]["held_out"])
    rng = np.random.default_rng(args.seed)
    candidates = [s for s in load_dsb("train") if s[0] in held]
    pool = [candidates[i] for i in rng.choice(len(candidates), size=args.pool, replace=False)]
    images, masks = [s[1] for s in pool], [s[2] for s in pool]
    tiles = tiles_of(images, args.tile)
    val = load_dsb("val")[: args.val]
    base = score(start, val)
    print(f"pool: {len(pool)} images, {len(tiles)} tiles of {args.tile}px; pretrained as-is AP@0.5 {base:.3f}",
          flush=True)
    curves: dict[str, list[float]] = {}
    for strategy in ("uncertainty", "random"):
        chosen: list[int] = []
        model, curve = start, []
        pick_rng = np.random.default_rng(args.seed + 1)
        for k in range(args.rounds):
            left = [t for t in range(len(tiles)) if t not in chosen]
            if strategy == "uncertainty":
                u = tile_uncertainty(model, images, [tiles[t] for t in left], args.tile, args.mc)
                chosen.append(left[int(np.argmax(u))])
            else:
                chosen.append(int(pick_rng.choice(left)))
            pairs = []
            for t in chosen:
                i, y, x = tiles[t]
                pairs.append((images[i][y:y + args.tile, x:x + args.tile], masks[i][y:y + args.tile, x:x + args.tile]))
            try:
                model = fine_tune(start, pairs, args.seconds, args.threads, args.seed)
            except UserError as exc:  # e.g. only empty tiles revealed so far: nothing to learn from yet
                print(f"{strategy:>11}: {k + 1} tile(s): not trained ({exc})", flush=True)
            curve.append(score(model, val))
            print(f"{strategy:>11}: {k + 1} tile(s) -> AP@0.5 {curve[-1]:.3f}", flush=True)
        curves[strategy] = curve
    print(json.dumps({"pretrained_as_is": round(base, 3), **{k: [round(v, 3) for v in c] for k, c in curves.items()}}))


if __name__ == "__main__":
    main()
