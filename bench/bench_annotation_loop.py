"""Does "annotate next" (epistemic uncertainty) pick better tiles to annotate than chance?

A simulated annotation loop on dsb2018_fluo, repeated for ``--seeds`` seeds. Per seed, a pool of
``--pool`` train-split images the shipped ``pretrained:nuclei`` model never trained on is cut
into ``--tile`` px tiles. Each round reveals one more tile's ground truth and fine-tunes the
starting model on all revealed tiles (each tile its own image/mask pair, so unrevealed pixels are
never called background), then scores AP@0.5 on the first ``--val`` val-split images (objects
pooled; every model scored with the shipped model's post-processing thresholds, so only the
network changes). Two strategies, paired (same seed, pool, rounds and fine-tuning seeds): the
tile with the highest mean epistemic uncertainty (MC-dropout, ``--mc`` passes) under the current
model, or a random unrevealed tile.

Fine-tuning is ``--steps`` optimiser steps per round (not seconds: results do not depend on the
machine's load) at ``--lr-scale`` times the fine-tuning learning rate of ``fine_tune_config``
(which is already 0.2x the from-scratch rate). Every round fine-tunes **from the starting
model** on the tiles revealed so far, not from the previous round's model: a round's model then
depends only on which tiles are revealed, so one bad round cannot drift every later round, the
two strategies differ only in their choice of tiles, and it is what a user of the Train widget
does (start from pretrained:nuclei, train on the current training set).

``--from-scratch`` is the harder test for a weak model: no starting model; the first tile is
revealed at random (the same for both strategies), and every round trains a default U-Net from
scratch for ``--steps`` steps on all tiles revealed so far; from the second tile on, the
strategy picks the tile with that round's model. ``--whole-train`` (with ``--from-scratch``) draws
the pool from the whole train split instead of the 24 images the shipped model held out, so a
large pool mixes more kinds of image. ``--first-seed`` and ``--json`` split one run over processes; ``--merge A.json B.json``
prints the summary over all their seeds. ``--own-rule`` scores each model with its own
post-processing instead of the shipped thresholds: a model trained from scratch without
validation images uses the argmax rule, as it would in the Train widget (the shipped seed
threshold of 0.7 finds nothing in an under-confident model whose interior never passes 0.5).

Prints per round the mean ± std over seeds of both strategies and of their paired difference;
writes everything to ``bench/results/annotation_loop.json`` (``annotation_loop_scratch.json``).

    .venv/bin/python bench/bench_annotation_loop.py [--seeds 3] [--rounds 4] [--steps 50] [--val 16] [--threads 1]
    .venv/bin/python bench/bench_annotation_loop.py --from-scratch --steps 300 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_dsb, machine_description  # noqa: E402

STRATEGIES = ("uncertainty", "random")
RESULTS = Path(__file__).resolve().parent / "results" / "annotation_loop.json"


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


def fine_tune(start, pairs: list, args: argparse.Namespace, seed: int):
    """``start`` fine-tuned for ``args.steps`` steps on ``pairs`` (no validation split, no previews)."""
    from napari_unet.cli import drive
    from napari_unet.config import TrainConfig
    from napari_unet.pretrained import fine_tune_config
    from napari_unet.training.engine import Trainer

    # a Trainer of its own, not bench.common.train_as_user: no validation split and a scaled fine-tuning
    # learning rate (--lr-scale) are settings no flag of `napari-unet train` gives
    cfg = TrainConfig(steps=args.steps, time_limit=None, threads=args.threads, seed=seed,
                      validation_fraction=0.0, preview_every=0, batch_size=8)
    if args.from_scratch:
        return drive(Trainer(pairs, cfg).run(), "training", quiet=True)
    cfg = fine_tune_config(cfg, start)
    cfg = replace(cfg, learning_rate=cfg.learning_rate * args.lr_scale)
    return drive(Trainer(pairs, cfg, init=start).run(), "fine-tuning", quiet=True)


def score(bundle, val: list, rule: dict | None) -> float:
    """AP@0.5 over ``val`` with the post-processing thresholds ``rule`` (None: the model's own)."""
    from napari_unet.inference.predict import predict_image
    from napari_unet.metrics import evaluate_instances

    if rule is not None:
        bundle.meta["postprocess"] = dict(rule)
    return float(evaluate_instances([(predict_image(bundle, img).labels, gt) for _, img, gt in val])["ap50"])


def run_loop(strategy: str, start, pool: list, val: list, rule: dict, args: argparse.Namespace, seed: int) -> list[float]:
    """AP@0.5 after each round of revealing one tile with ``strategy``."""
    from napari_unet.errors import UserError

    images, masks = [s[1] for s in pool], [s[2] for s in pool]
    tiles = tiles_of(images, args.tile)
    pick_rng = np.random.default_rng(1000 + seed)
    chosen: list[int] = []
    if args.from_scratch:  # the first tile is random and shared by both strategies
        chosen.append(int(np.random.default_rng(2000 + seed).integers(len(tiles))))
    model, curve = start, []
    for k in range(args.rounds):
        left = [t for t in range(len(tiles)) if t not in chosen]
        if len(chosen) > k:
            pass  # the shared first tile
        elif strategy == "uncertainty" and model is not None:
            u = tile_uncertainty(model, images, [tiles[t] for t in left], args.tile, args.mc)
            chosen.append(left[int(np.argmax(u))])
        else:
            chosen.append(int(pick_rng.choice(left)))
        pairs = [(images[i][y:y + args.tile, x:x + args.tile], masks[i][y:y + args.tile, x:x + args.tile])
                 for i, y, x in (tiles[t] for t in chosen)]
        try:
            model = fine_tune(start, pairs, args, seed=100 * seed + k)  # from the start model, see the docstring
        except UserError as exc:  # only empty tiles revealed so far: the starting model stays (none: AP 0)
            print(f"  seed {seed} {strategy:>11}: {k + 1} tile(s): not trained ({exc})", flush=True)
            model = None if args.from_scratch else start
        curve.append(0.0 if model is None else score(model, val, None if args.own_rule else rule))
        i, y, x = tiles[chosen[-1]]
        revealed = masks[i][y:y + args.tile, x:x + args.tile]
        objects = len(np.unique(revealed[revealed > 0]))
        print(f"  seed {seed} {strategy:>11}: {k + 1} tile(s) -> AP@0.5 {curve[-1]:.3f} "
              f"(last tile: {pool[i][0]} at y {y} x {x}, {objects} object(s))", flush=True)
    return curve


def summarise(curves: dict[str, list[list[float]]]) -> dict:
    """Per round: mean and std over seeds of each strategy and of the paired difference."""
    unc, rnd = np.array(curves["uncertainty"]), np.array(curves["random"])  # (seeds, rounds)
    diff = unc - rnd
    ddof = 1 if len(unc) > 1 else 0

    def stats(a: np.ndarray) -> dict:
        return {"mean": np.round(a.mean(0), 4).tolist(), "std": np.round(a.std(0, ddof=ddof), 4).tolist()}

    return {"uncertainty": stats(unc), "random": stats(rnd), "difference": stats(diff),
            "difference_all_rounds": {"mean": round(float(diff.mean()), 4),
                                      "std_of_seed_means": round(float(diff.mean(1).std(ddof=ddof)), 4)},
            "uncertainty_wins": int((diff > 0).sum()), "random_wins": int((diff < 0).sum()), "pairs": int(diff.size)}


def print_summary(curves: dict[str, list[list[float]]]) -> dict:
    """Print the per-round table and the paired difference over all rounds; return the summary."""
    summary = summarise(curves)
    rounds = len(summary["difference"]["mean"])
    print("\ntiles revealed      " + "".join(f"{k + 1:>16d}" for k in range(rounds)))
    for name in (*STRATEGIES, "difference"):
        row = summary[name]
        print(f"{name:<20}" + "".join(f"{m:>+9.3f} ± {s:.3f}" if name == "difference" else f"{m:>9.3f} ± {s:.3f}"
                                      for m, s in zip(row["mean"], row["std"])))
    d = summary["difference_all_rounds"]
    print(f"paired difference over all rounds {d['mean']:+.3f} (std of per-seed means {d['std_of_seed_means']:.3f}); "
          f"uncertainty better in {summary['uncertainty_wins']}/{summary['pairs']} pairs, "
          f"random in {summary['random_wins']}")
    return summary


def merge(paths: list[Path]) -> None:
    """One summary over the seeds of several result files (a run split with --first-seed)."""
    records = [json.loads(p.read_text()) for p in paths]
    curves = {k: [c for r in records for c in r["curves"][k]] for k in STRATEGIES}
    print(f"{sum(len(r['curves']['random']) for r in records)} seeds from {len(paths)} file(s)")
    print_summary(curves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="repeats (pool, random picks, fine-tuning seeds)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run are first-seed .. first-seed + seeds - 1 (split a run over processes)")
    parser.add_argument("--whole-train", action="store_true",
                        help="with --from-scratch: draw the pool from the whole train split (more kinds of image), "
                             "not only the images the shipped model held out")
    parser.add_argument("--own-rule", action="store_true",
                        help="score each model with its own post-processing (from scratch without validation: "
                             "the argmax rule) instead of the shipped model's thresholds")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results/...)")
    parser.add_argument("--pool", type=int, default=4, help="train-split images the tiles come from")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="optimiser steps per round (batch 8)")
    parser.add_argument("--lr-scale", type=float, default=0.2,
                        help="times the fine-tuning learning rate of fine_tune_config (1e-3): 0.2 -> 2e-4")
    parser.add_argument("--val", type=int, default=16, help="val-split images scored")
    parser.add_argument("--mc", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--from-scratch", action="store_true",
                        help="no starting model: every round trains from scratch on the revealed tiles")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="only print one summary over the seeds of these result files")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge)
    if args.whole_train and not args.from_scratch:
        parser.error("--whole-train needs --from-scratch (the shipped model trained on the rest of the train split)")

    import torch

    from napari_unet.workflows.model_spec import resolve_model

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    print(machine_description(), flush=True)
    start = resolve_model("pretrained:nuclei")
    rule = dict(start.postprocess)
    held = set(start.meta["training"]["held_out"])
    candidates = [s for s in load_dsb("train") if s[0] in held or (args.from_scratch and args.whole_train)]
    val = load_dsb("val")[: args.val]
    base = score(start, val, rule)
    how = "from scratch" if args.from_scratch else f"fine-tuning at lr x{args.lr_scale}"
    print(f"pretrained as-is AP@0.5 {base:.3f} on {len(val)} val images; {args.steps} steps/round {how}; "
          f"{args.seeds} seed(s) x {args.rounds} round(s)", flush=True)
    curves: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}
    pools = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rng = np.random.default_rng(seed)
        pool = [candidates[i] for i in rng.choice(len(candidates), size=args.pool, replace=False)]
        pools.append([s[0] for s in pool])
        n_tiles = len(tiles_of([s[1] for s in pool], args.tile))
        print(f"seed {seed}: pool {pools[-1]} ({n_tiles} tiles)", flush=True)
        if n_tiles < 3 * args.rounds:
            print(f"  warning: {n_tiles} tiles for {args.rounds} rounds leave the strategies little to choose "
                  f"between; use a larger --pool or a smaller --tile", flush=True)
        for strategy in STRATEGIES:
            curves[strategy].append(run_loop(strategy, start, pool, val, rule, args, seed))
    summary = print_summary(curves)
    seconds = time.perf_counter() - began
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"machine": machine_description(), "args": settings, "pretrained_as_is": round(base, 4),
              "postprocess": rule, "pools": pools, "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
              "curves": {k: [[round(v, 4) for v in c] for c in cs] for k, cs in curves.items()},
              "summary": summary, "seconds": round(seconds, 1)}
    out = args.json or (RESULTS.with_name("annotation_loop_scratch.json") if args.from_scratch else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
