"""Does the uncertainty point at the model's errors? A check without retraining.

The annotation-loop benchmark (``bench_annotation_loop.py``) asks whether annotating the most
uncertain tiles trains a better model, and its per-round training noise (about ±0.05 AP)
hides any effect. This one asks the question underneath, with no training in the loop: on
images the model never saw, do the "annotate next" tiles hold its mistakes?

For each dsb2018_fluo val-split image: predict with ``--mc`` MC-dropout passes (as the Predict
widget does), take the labels from the mean probabilities with the model's own post-processing,
and match them to the ground truth at IoU > 0.5. Every missed ground-truth object (FN) and
every unmatched predicted object (FP) is an *object error*, counted in the ``--tile`` px tile that
holds its centroid (full tiles only). Pixels whose predicted foreground differs from the true
foreground are *pixel errors*.

Reported:

* pixel AUROC of each uncertainty map (epistemic, aleatoric, total) for the pixel errors
  (0.5 = no information);
* the share of all object errors inside the top 10 % / 25 % of tiles when tiles are ranked by
  their mean epistemic uncertainty (what "annotate next" ranks by), by total or aleatoric
  uncertainty, by the number of predicted objects (a "go where it is crowded" rule that needs
  no uncertainty at all), at random (the expected share is the fraction itself) and by the
  errors themselves (the best any ranking can do);
* the error rate per object (errors / (true objects + false positives)) in those top tiles
  against all tiles: crowded tiles hold more errors simply because they hold more objects,
  the rate says whether the ranked tiles are *harder*, not only fuller;
* Spearman correlations of tile uncertainty with tile error counts and rates.

Models: ``pretrained:nuclei`` (default; it never trained on the val split), or with
``--scratch-images N`` a weak model trained from scratch for ``--scratch-steps`` optimiser
steps on N random train-split images (the situation of a user who has annotated little).

    .venv/bin/python bench/bench_uncertainty_errors.py [--mc 16] [--tile 128] [--val N]
    .venv/bin/python bench/bench_uncertainty_errors.py --scratch-images 3 --scratch-steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_dsb, machine_description  # noqa: E402

MAPS = ("epistemic", "total", "aleatoric")
FRACTIONS = (0.10, 0.25)
RESULTS = Path(__file__).resolve().parent / "results" / "uncertainty_errors.json"


def centroids(labels: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """(n, 2) centroids (row, col) of the objects ``ids`` of ``labels`` (default: all of them)."""
    from scipy import ndimage

    ids = np.unique(labels)[1:] if ids is None else ids
    if len(ids) == 0:
        return np.zeros((0, 2))
    return np.array(ndimage.center_of_mass(np.ones_like(labels), labels, ids)).reshape(-1, 2)


def object_errors(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroids of unmatched predicted objects (FP) and unmatched true objects (FN) at
    IoU > 0.5, and the centroids of all true objects."""
    from napari_unet.metrics import match_instances

    iou, ids_p, ids_g = match_instances(pred, gt, return_ids=True)
    matched = iou > 0.5  # pairs above 0.5 are unique, see metrics._count_matches
    return centroids(pred, ids_p[~matched.any(axis=1)]), centroids(gt, ids_g[~matched.any(axis=0)]), centroids(gt, ids_g)


def count_in_tiles(points: np.ndarray, shape: tuple[int, int], tile: int) -> np.ndarray:
    """(rows, cols) counts of ``points`` per full tile; points outside full tiles are dropped."""
    rows, cols = shape[0] // tile, shape[1] // tile
    counts = np.zeros((rows, cols), dtype=np.int64)
    if len(points):
        r, c = (points[:, 0] // tile).astype(int), (points[:, 1] // tile).astype(int)
        keep = (r < rows) & (c < cols)
        np.add.at(counts, (r[keep], c[keep]), 1)
    return counts


def tile_means(image: np.ndarray, tile: int) -> np.ndarray:
    """(rows, cols) mean of ``image`` over each full tile."""
    rows, cols = image.shape[0] // tile, image.shape[1] // tile
    return image[:rows * tile, :cols * tile].reshape(rows, tile, cols, tile).mean(axis=(1, 3))


def analyse_image(bundle, image: np.ndarray, gt: np.ndarray, args: argparse.Namespace, rng) -> dict:
    """Per-tile statistics and a pixel sample of one image."""
    from napari_unet.config import PredictConfig
    from napari_unet.inference.predict import predict_image

    pred = predict_image(bundle, image, PredictConfig(mc_samples=args.mc))
    fp, fn, true = object_errors(pred.labels, gt)
    shape = gt.shape
    tiles = {
        "errors": count_in_tiles(fp, shape, args.tile) + count_in_tiles(fn, shape, args.tile),
        "false_positives": count_in_tiles(fp, shape, args.tile),
        "true_objects": count_in_tiles(true, shape, args.tile),
        "predicted_objects": count_in_tiles(centroids(pred.labels), shape, args.tile),
    }
    tiles.update({name: tile_means(pred.uncertainty[name], args.tile) for name in MAPS})
    wrong = (pred.labels > 0) != (gt > 0)
    take = rng.choice(wrong.size, size=min(args.pixels, wrong.size), replace=False)
    pixels = {"wrong": wrong.ravel()[take]}
    pixels.update({name: pred.uncertainty[name].ravel()[take] for name in MAPS})
    return {"tiles": {k: v.ravel() for k, v in tiles.items()}, "pixels": pixels,
            "objects": (len(true), len(fp), len(fn))}


def top_tiles(order_key: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the top ``fraction`` of tiles by ``order_key``, ties broken at random (seeded),
    so a ranking with many ties (object counts) is not ordered by tile position."""
    jitter = np.random.default_rng(0).random(len(order_key)) * 1e-9
    return np.argsort(-(order_key + jitter))[: max(1, int(round(fraction * len(order_key))))]


def error_rate(tiles: dict, index: np.ndarray) -> float:
    """Object errors per object (true objects + false positives) in the tiles ``index``."""
    objects = tiles["true_objects"][index].sum() + tiles["false_positives"][index].sum()
    return float(tiles["errors"][index].sum() / max(objects, 1))


def summarise(tiles: dict, pixels: dict) -> dict:
    """The figures listed in the module docstring."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    out: dict = {"tiles": int(len(tiles["errors"])), "object_errors": int(tiles["errors"].sum())}
    out["pixel_auroc"] = {name: float(roc_auc_score(pixels["wrong"], pixels[name])) for name in MAPS}
    rankings = {name: tiles[name] for name in MAPS}
    rankings["predicted objects"] = tiles["predicted_objects"].astype(float)
    rankings["errors (oracle)"] = tiles["errors"].astype(float)
    rate = tiles["errors"] / np.maximum(tiles["true_objects"] + tiles["false_positives"], 1)
    out["share_of_errors"], out["error_rate_in_top"] = {}, {}
    for fraction in FRACTIONS:
        key = f"top {round(fraction * 100)}%"
        top = {name: top_tiles(r, fraction) for name, r in rankings.items()}  # the same tiles for both figures
        total = max(tiles["errors"].sum(), 1)
        out["share_of_errors"][key] = {name: float(tiles["errors"][t].sum() / total) for name, t in top.items()}
        out["share_of_errors"][key]["random (expected)"] = fraction
        out["error_rate_in_top"][key] = {name: error_rate(tiles, t) for name, t in top.items() if "oracle" not in name}
    out["error_rate_all_tiles"] = error_rate(tiles, np.arange(len(rate)))
    busy = (tiles["true_objects"] + tiles["false_positives"]) > 0
    out["spearman"] = {
        name: {"errors": float(spearmanr(tiles[name], tiles["errors"]).statistic),
               "error_rate (tiles with objects)": float(spearmanr(tiles[name][busy], rate[busy]).statistic),
               "predicted_objects": float(spearmanr(tiles[name], tiles["predicted_objects"]).statistic)}
        for name in MAPS}
    return out


def weak_model(args: argparse.Namespace):
    """A default U-Net trained from scratch for ``--scratch-steps`` steps on a few train images."""
    from napari_unet.cli import drive
    from napari_unet.config import TrainConfig
    from napari_unet.training.engine import Trainer

    train = load_dsb("train")
    pick = np.random.default_rng(args.seed).choice(len(train), args.scratch_images, replace=False)
    pairs = [(train[int(i)][1], train[int(i)][2]) for i in pick]
    print(f"training from scratch on {[train[int(i)][0] for i in pick]} for {args.scratch_steps} steps", flush=True)
    # a Trainer of its own, not bench.common.train_as_user: a deliberately weak model (few fixed steps,
    # no validation split) whose errors the uncertainty has to find
    cfg = TrainConfig(steps=args.scratch_steps, time_limit=None, seed=args.seed, validation_fraction=0.0,
                      preview_every=0, threads=args.threads)
    return drive(Trainer(pairs, cfg).run(), "training", quiet=True)


def print_summary(s: dict) -> None:
    print(f"\n{s['tiles']} full tiles, {s['object_errors']} object errors (FP + FN at IoU 0.5)")
    print("pixel AUROC for foreground errors: " + ", ".join(f"{k} {v:.3f}" for k, v in s["pixel_auroc"].items()))
    for key, shares in s["share_of_errors"].items():
        print(f"share of all object errors in the {key} of tiles ranked by:")
        for name, v in shares.items():
            rate = s["error_rate_in_top"][key].get(name)
            extra = f"   errors per object there {rate:.3f}" if rate is not None else ""
            print(f"  {name:22s} {v:6.3f}{extra}")
    print(f"errors per object over all tiles: {s['error_rate_all_tiles']:.3f}")
    for name, c in s["spearman"].items():
        print(f"Spearman, tile mean {name}: " + ", ".join(f"vs {k} {v:+.3f}" for k, v in c.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pretrained:nuclei", help="model folder or pretrained:NAME")
    parser.add_argument("--scratch-images", type=int, default=0, help="train a weak model on N train images instead")
    parser.add_argument("--scratch-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mc", type=int, default=16, help="MC-dropout passes")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--val", type=int, default=None, help="first N val images (default: all)")
    parser.add_argument("--pixels", type=int, default=20000, help="pixels sampled per image for the AUROC")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()

    import torch

    from napari_unet.workflows.model_spec import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_description(), flush=True)
    start = time.perf_counter()
    bundle = weak_model(args) if args.scratch_images else resolve_model(args.model)
    val = load_dsb("val", args.val)
    rng = np.random.default_rng(args.seed)
    tiles: dict[str, list] = {}
    pixels: dict[str, list] = {}
    objects = np.zeros(3, dtype=np.int64)
    for name, image, gt in val:
        one = analyse_image(bundle, image, gt, args, rng)
        for k, v in one["tiles"].items():
            tiles.setdefault(k, []).append(v)
        for k, v in one["pixels"].items():
            pixels.setdefault(k, []).append(v)
        objects += one["objects"]
    t = {k: np.concatenate(v) for k, v in tiles.items()}
    p = {k: np.concatenate(v) for k, v in pixels.items()}
    tp = objects[0] - objects[2]
    ap50 = tp / max(tp + objects[1] + objects[2], 1)
    print(f"model: {'scratch' if args.scratch_images else args.model}; {len(val)} val images, AP@0.5 {ap50:.3f} "
          f"(MC mean, own post-processing); {time.perf_counter() - start:.0f} s", flush=True)
    summary = summarise(t, p)
    summary["ap50"] = float(ap50)
    print_summary(summary)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine_description(), "args": vars(args), **summary}, indent=2))


if __name__ == "__main__":
    main()
