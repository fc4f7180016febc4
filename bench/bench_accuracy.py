"""Accuracy on real data, measured side by side in one run.

dsb2018_fluo: the default U-Net trained for ``--time-limit`` seconds on the train split (3
seeds), against the ilastik-style random forest, the classic tutorial U-Net (base 64, fp32, plain
cross-entropy, same time) and the Otsu floors; all scored on the val split (94 images, objects
pooled). isbi2012_em: semantic U-Net on 25 sections, pixel error on 5.

    .venv/bin/python bench/bench_accuracy.py [--time-limit 120] [--seeds 0 1 2] [--skip-rf]
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
from common import REPO, load_dsb, load_isbi, machine_description, train_as_user  # noqa: E402

from napari_unet.cli import drive  # noqa: E402
from napari_unet.config import PredictConfig, TrainConfig  # noqa: E402
from napari_unet.heads.calibrate import PRIOR_RULE  # noqa: E402
from napari_unet.heads.watershed import instances_from_probabilities  # noqa: E402
from napari_unet.inference.predict import predict_image, predict_probabilities  # noqa: E402
from napari_unet.metrics import evaluate_instances, evaluate_semantic  # noqa: E402
from napari_unet.training.engine import Trainer  # noqa: E402
from napari_unet.workflows.train_request import TrainRequest  # noqa: E402


def drain(gen):
    """Run a core generator to the end (validation lines printed, no bar); return its value."""
    return drive(gen, "training", quiet=True)


def classic_config() -> TrainConfig:
    """The tutorial U-Net: base width 64, fp32, plain (unweighted) cross-entropy."""
    from napari_unet.config import LossConfig, UNetConfig

    return TrainConfig(model=UNetConfig(base_width=64, dropout=0.0), loss=LossConfig(border_w0=0.0, balance_classes=False),
                       low_precision=False, batch_size=4, patch_size=256)


def unet_dsb(train, val, seed: int, time_limit: float, setup: TrainRequest | TrainConfig = TrainRequest()) -> dict:
    """``setup``: a ``TrainRequest`` trains as ``napari-unet train --init none`` does; a ``TrainConfig``
    (the classic U-Net: settings no flag gives) gets a ``Trainer`` of its own."""
    start = time.perf_counter()
    if isinstance(setup, TrainConfig):
        cfg = replace(setup, time_limit=time_limit, seed=seed)
        bundle = drain(Trainer([(im, m) for _, im, m in train], cfg, names=[n for n, _, _ in train]).run())
    else:
        bundle = drain(train_as_user(train, replace(setup, time_limit=time_limit, seed=seed)))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    probs = [predict_probabilities(bundle, im, PredictConfig()) for _, im, _ in val]
    result = evaluate_instances([(instances_from_probabilities(p, 10, **bundle.postprocess), m)
                                 for p, (_, _, m) in zip(probs, val)])  # what `napari-unet predict` writes
    argmax = evaluate_instances([(instances_from_probabilities(p, 10), m) for p, (_, _, m) in zip(probs, val)])
    prior = evaluate_instances([(instances_from_probabilities(p, 10, **PRIOR_RULE), m)
                                for p, (_, _, m) in zip(probs, val)])  # had the run kept its starting rule
    result.update(train_s=train_s, predict_s=time.perf_counter() - start, steps=bundle.meta["training"]["steps"],
                  ap50_argmax_rule=argmax["ap50"], argmax=argmax, ap50_prior_rule=prior["ap50"])
    result["tuning_s"] = bundle.meta["training"].get("tuning_seconds", 0.0)
    print(f"  seed {seed}: {result['steps']} steps on {bundle.meta['training']['device']}, {train_s:.0f} s in all "
          f"({result['tuning_s']:.0f} s choosing the post-processing), "
          f"post-processing {bundle.postprocess or 'argmax rule'} "
          f"(win rate over the prior {bundle.meta.get('postprocess', {}).get('confidence', 'n/a')}): "
          f"AP@0.5 {result['ap50']:.3f} (argmax rule {argmax['ap50']:.3f}, prior rule {prior['ap50']:.3f})",
          flush=True)
    return result


def unet_isbi(time_limit: float, seed: int = 0) -> dict:
    data = load_isbi()
    train, test = data[:25], data[25:]
    bundle = drain(train_as_user(train, TrainRequest(task="classes", time_limit=time_limit, seed=seed)))
    preds = [(predict_image(bundle, im).labels, (m > 0).astype(np.uint8)) for _, im, m in test]
    result = evaluate_semantic(preds)
    result["steps"] = bundle.meta["training"]["steps"]
    always_interior = evaluate_semantic([(np.ones_like(g), g) for _, g in preds])["pixel_error"]
    result["baseline_all_interior"] = always_interior
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-rf", action="store_true")
    parser.add_argument("--skip-isbi", action="store_true")
    parser.add_argument("--skip-classic", action="store_true", help="skip the base-64 fp32 plain-CE tutorial U-Net")
    defaults = TrainConfig()
    parser.add_argument("--batch", type=int, default=defaults.batch_size, help="U-Net batch size")
    parser.add_argument("--patch", type=int, default=defaults.patch_size, help="U-Net patch size")
    parser.add_argument("--width", type=int, default=defaults.model.base_width, help="U-Net base width")
    args = parser.parse_args()
    ours = TrainRequest(batch_size=args.batch, patch_size=args.patch, base_width=args.width)  # the CLI's flags
    print(machine_description(), flush=True)
    train, val = load_dsb("train"), load_dsb("val")
    print(f"dsb2018_fluo: {len(train)} train, {len(val)} val images", flush=True)
    rows: dict[str, dict] = {}
    if not args.skip_rf:
        from reference_rf import run_rf_reference

        rows.update(run_rf_reference(train, val, seed=0))
    unet = []
    for seed in args.seeds:
        print(f"U-Net seed {seed}: training {args.time_limit:.0f} s", flush=True)
        unet.append(unet_dsb(train, val, seed, args.time_limit, ours))
        rows[f"U-Net {args.time_limit:.0f}s seed {seed}"] = unet[-1]
    if not args.skip_classic:
        print(f"classic U-Net (base 64, fp32, plain cross-entropy), seed 0: training {args.time_limit:.0f} s", flush=True)
        classic = unet_dsb(train, val, 0, args.time_limit, classic_config())
        rows[f"classic U-Net {args.time_limit:.0f}s, argmax"] = classic["argmax"]
        rows[f"classic U-Net {args.time_limit:.0f}s, tuned"] = classic
    print(f"\n{'method':36s} {'AP@0.5':>7s} {'mAP':>6s} {'Dice':>6s}")
    for name, r in rows.items():
        print(f"{name:36s} {r['ap50']:7.3f} {r['map']:6.3f} {r['dice']:6.3f}")
    ap = np.array([r["ap50"] for r in unet])
    best_rf = max((r["ap50"] for n, r in rows.items() if not n.startswith(("U-Net", "otsu", "Otsu", "classic"))), default=float("nan"))
    summary = {"unet_ap50_mean": float(ap.mean()), "unet_ap50_std": float(ap.std()), "best_rf_ap50": best_rf}
    print(f"\nU-Net AP@0.5 {ap.mean():.3f} ± {ap.std():.3f} over seeds {args.seeds} "
          f"(min {ap.min():.3f}, max {ap.max():.3f}); best random forest {best_rf:.3f}; "
          f"ratio {ap.mean() / best_rf:.2f}x")
    if not args.skip_isbi:
        print(f"\nisbi2012_em: training {args.time_limit:.0f} s on 25 sections", flush=True)
        isbi = unet_isbi(args.time_limit)
        summary.update(isbi_pixel_error=isbi["pixel_error"], isbi_rand_error=isbi.get("rand_error"),
                       isbi_all_interior=isbi["baseline_all_interior"])
        print(f"isbi2012_em pixel error on 5 held-out sections: {isbi['pixel_error']:.4f} "
              f"(all-interior baseline {isbi['baseline_all_interior']:.4f}), rand error {isbi.get('rand_error')}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: {m: v for m, v in r.items() if isinstance(v, (int, float))} for k, r in rows.items()}
    (out / "accuracy.json").write_text(json.dumps({"rows": clean, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
