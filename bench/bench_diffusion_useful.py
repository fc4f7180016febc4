"""Do synthetic pairs help when only 3 images are annotated? An honest, leak-free measurement.

    .venv/bin/python bench/bench_diffusion_useful.py --seeds 0 1 2

Per seed: draw 3 dsb2018_fluo train images (``default_rng(seed)``, as ``bench_diffusion`` did);
train the diffusion model on those 3 (image, mask) pairs alone, for a fixed number of steps (no
other image, no other mask); lay out ``--n-synthetic`` new masks from those 3 images' object
shapes (``varied_layouts``: magnification, crowding, touching or not, cut by the edges) and
generate their images; then train the segmentation U-Net from scratch for a fixed number of
optimiser steps (load-independent), real only and real + synthetic (``--ratio`` of the patches),
same seed. Both are scored on all val-split images (real; the synthetic pairs never enter
validation). ``--seg-seeds K`` trains each arm K times with different training seeds on the same
data and averages, which separates the effect of the data from the run-to-run swing. Writes ``bench/results/diffusion_useful.json`` and
``docs/images/synth_useful_grid.png`` (per seed: a real crop, then prompt | synthetic pairs).
Diffusion models and synthetic pairs are cached under ``--cache`` for re-runs.

``--unannotated N`` adds a third arm: a diffusion model that also learns the look of N more
train-split images given without their masks (``DiffusionTrainer(unannotated=...)``), as a user
with 3 annotated and N unannotated images would train it; its synthetic pairs (same layouts)
train a third segmentation model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_diffusion import _drive, colour_labels, save_grid  # noqa: E402
from bench.common import REPO, load_dsb, machine_description  # noqa: E402


def pick_images(train: list, seed: int) -> list:
    """The 3 annotated images of a seed."""
    return [train[int(i)] for i in np.random.default_rng(seed).choice(len(train), 3, replace=False)]


def pick_unannotated(train: list, few: list, n: int, seed: int) -> list:
    """``n`` more train images of a seed (none of the 3 annotated ones), used without masks."""
    names = {name for name, _, _ in few}
    rest = [t for t in train if t[0] not in names]
    return [rest[int(i)] for i in np.random.default_rng(seed + 10_000).choice(len(rest), n, replace=False)]


def diffusion_model(few: list, args: argparse.Namespace, seed: int, folder: Path, unannotated: list = ()):
    """The diffusion model of a seed, trained on its 3 pairs (and ``unannotated`` images; cached in ``folder``)."""
    from napari_unet.diffusion.bundle import load_diffusion, save_diffusion
    from napari_unet.diffusion.config import DiffusionConfig, DiffusionUNetConfig
    from napari_unet.diffusion.train import DiffusionTrainer

    if (folder / "model.json").is_file():
        bundle = load_diffusion(folder)
        done = bundle.meta["training"]
        if done["steps"] == args.diff_steps and done["images"] == 3 and done.get("unannotated_images", 0) == len(unannotated):
            return bundle
    cfg = DiffusionConfig(model=DiffusionUNetConfig(base_width=args.diff_width), crop_size=64, batch_size=8,
                          steps=args.diff_steps, time_limit=None, threads=1, seed=seed)
    bundle = _drive(DiffusionTrainer([(im, m) for _, im, m in few], cfg, names=[n for n, _, _ in few],
                                     unannotated=[im for _, im, _ in unannotated]).run())
    save_diffusion(bundle, folder)
    return bundle


def synthetic_pairs(bundle, few: list, args: argparse.Namespace, seed: int, cache: Path) -> list:
    """``--n-synthetic`` (image, mask) pairs for varied layouts of the 3 images' shapes (cached)."""
    from napari_unet.diffusion.config import SampleConfig
    from napari_unet.diffusion.prompts import median_density, object_shapes, varied_layouts
    from napari_unet.diffusion.sample import synthesize

    if cache.is_file():
        data = np.load(cache)
        if len(data["images"]) == args.n_synthetic:
            return list(zip(data["images"], data["masks"]))
    masks = [m for _, _, m in few]
    layouts = varied_layouts(object_shapes(masks), (args.size, args.size), args.n_synthetic,
                             density=median_density(masks), seed=seed)
    cfg = SampleConfig(steps=args.ddim_steps, guidance=args.guidance, seed=1000 * seed, batch_size=4, threads=1)
    images = _drive(synthesize(bundle, layouts, cfg))
    np.savez_compressed(cache, images=np.stack(images), masks=np.stack(layouts))
    return list(zip(images, layouts))


def segmentation_ap(few: list, synthetic: list | None, ratio: float, val: list, args: argparse.Namespace,
                    seed: int) -> dict:
    """Train from scratch for ``--seg-steps`` optimiser steps, ``--seg-seeds`` times (training seeds
    ``seed``, ``seed + 1000``, ...); the mean val AP@0.5 and Dice, and each run's AP@0.5."""
    from napari_unet.config import TrainConfig
    from napari_unet.inference.predict import predict_image
    from napari_unet.metrics import evaluate_instances
    from napari_unet.training.engine import Trainer

    t0 = time.perf_counter()
    aps, dices = [], []
    for run in range(args.seg_seeds):
        # a Trainer of its own, not bench.common.train_as_user: no validation split (few images, every
        # object trains) and in-memory synthetic pairs at a fixed ratio, which no flag of `train` gives
        cfg = TrainConfig(steps=args.seg_steps, time_limit=None, validation_fraction=0.0, seed=seed + 1000 * run,
                          threads=1, synthetic_ratio=ratio, preview_every=0)
        bundle = _drive(Trainer([(im, m) for _, im, m in few], cfg, synthetic=synthetic).run())
        preds = [predict_image(bundle, im).labels for _, im, _ in val]
        scores = evaluate_instances([(p, m) for p, (_, _, m) in zip(preds, val)])
        aps.append(float(scores["ap50"]))
        dices.append(float(scores["dice"]))
    result = {"ap50": round(float(np.mean(aps)), 3), "dice": round(float(np.mean(dices)), 3),
              "seconds": round(time.perf_counter() - t0, 1)}
    if args.seg_seeds > 1:
        result["ap50_runs"] = [round(a, 3) for a in aps]
    return result


def grid_row(few: list, synthetic: list, size: int) -> list:
    """A contrast-stretched real crop, then prompt | synthetic for three pairs."""
    _, image, _ = few[0]
    crop = image[:size, :size].astype(np.float32)
    lo, hi = np.percentile(crop, (1, 99.8))
    real = np.clip((crop - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    real = np.pad(real, ((0, size - real.shape[0]), (0, size - real.shape[1])))
    row = [real]
    for image, mask in synthetic[:3]:
        row += [colour_labels(mask), image]
    return row


def run_seed(seed: int, train: list, val: list, args: argparse.Namespace) -> tuple[dict, list]:
    few = pick_images(train, seed)
    folder = Path(args.cache) / f"seed{seed}"
    t0 = time.perf_counter()
    diffusion = diffusion_model(few, args, seed, folder / "diffusion")
    t_diff = time.perf_counter() - t0
    print(f"seed {seed}: images {[n for n, _, _ in few]}, diffusion {diffusion.meta['training']}", flush=True)
    t0 = time.perf_counter()
    synthetic = synthetic_pairs(diffusion, few, args, seed, folder / f"synthetic_{args.size}.npz")
    t_syn = time.perf_counter() - t0
    counts = [int(m.max()) for _, m in synthetic]
    print(f"seed {seed}: {len(synthetic)} synthetic pairs, objects per image {min(counts)}..{max(counts)}, "
          f"{t_syn:.0f} s", flush=True)
    result = {"images": [n for n, _, _ in few], "diffusion_training": diffusion.meta["training"],
              "diffusion_seconds_this_run": round(t_diff, 1), "synthesis_seconds": round(t_syn, 1),
              "synthetic_objects_per_image": [min(counts), int(np.median(counts)), max(counts)],
              "real only": segmentation_ap(few, None, 0.0, val, args, seed)}
    print(f"seed {seed}: real only {result['real only']}", flush=True)
    result["real + synthetic"] = segmentation_ap(few, synthetic, args.ratio, val, args, seed)
    print(f"seed {seed}: real + synthetic {result['real + synthetic']}", flush=True)
    if args.unannotated:
        extra = pick_unannotated(train, few, args.unannotated, seed)
        looks = diffusion_model(few, args, seed, folder / f"diffusion_unannotated{args.unannotated}", extra)
        print(f"seed {seed}: with {len(extra)} unannotated images, diffusion {looks.meta['training']}", flush=True)
        more = synthetic_pairs(looks, few, args, seed, folder / f"synthetic_{args.size}_unannotated{args.unannotated}.npz")
        result[UNANNOTATED_ARM] = segmentation_ap(few, more, args.ratio, val, args, seed)
        print(f"seed {seed}: real + synthetic from the model that saw unannotated images {result[UNANNOTATED_ARM]}",
              flush=True)
    return result, grid_row(few, synthetic, args.size)


UNANNOTATED_ARM = "real + synthetic (diffusion also saw unannotated images)"


def summarize(per_seed: dict) -> dict:
    """Means over seeds and the per-seed gains of each synthetic arm over real only (AP@0.5 and Dice)."""
    summary = {}
    for arm in ("real + synthetic", UNANNOTATED_ARM):
        if not all(arm in r for r in per_seed.values()):
            continue
        for metric in ("ap50", "dice"):
            real = [r["real only"][metric] for r in per_seed.values()]
            mixed = [r[arm][metric] for r in per_seed.values()]
            summary.setdefault(arm, {})[metric] = {"real_only_mean": round(float(np.mean(real)), 3),
                                                   "arm_mean": round(float(np.mean(mixed)), 3),
                                                   "gain_per_seed": [round(b - a, 3) for a, b in zip(real, mixed)],
                                                   "gain_mean": round(float(np.mean(mixed) - np.mean(real)), 3)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--diff-steps", type=int, default=1500, help="diffusion optimiser steps (8 x 64² crops)")
    parser.add_argument("--diff-width", type=int, default=16, help="diffusion U-Net base width")
    parser.add_argument("--n-synthetic", type=int, default=24)
    parser.add_argument("--size", type=int, default=128, help="synthetic image size (the segmentation patch)")
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--ratio", type=float, default=0.3, help="share of segmentation patches from synthetic")
    parser.add_argument("--seg-steps", type=int, default=300)
    parser.add_argument("--seg-seeds", type=int, default=1,
                        help="segmentation trainings per arm (training seeds differ, data the same); scores averaged")
    parser.add_argument("--no-grid", action="store_true", help="leave docs/images/synth_useful_grid.png as it is")
    parser.add_argument("--unannotated", type=int, default=0,
                        help="also train a diffusion model that sees this many more train images without masks")
    parser.add_argument("--cache", default="/tmp/synth_bench/useful")
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "diffusion_useful.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_description(), flush=True)
    train, val = load_dsb("train"), load_dsb("val")
    per_seed, rows = {}, []
    for seed in args.seeds:
        per_seed[str(seed)], row = run_seed(seed, train, val, args)
        rows.append(row)
    if not args.no_grid:
        save_grid(REPO / "docs" / "images" / "synth_useful_grid.png", rows)
    summary = summarize(per_seed)
    out = {"setup": {k: v for k, v in vars(args).items() if k != "cache"} | {"val_images": len(val),
                                                                               "machine": machine_description()},
           "per_seed": per_seed, "summary": summary}
    path = Path(args.json)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
