"""Re-train the shipped ``pretrained:nuclei`` starting model from the dev data.

Trains the default U-Net (TrainConfig defaults: base width 16, depth 4, instance task) with the
project's own engine on the dsb2018_fluo *train* split. Keep-best validation uses images held
out of the train split (never the val split); the val split (94 images) is used only once, at
the end, for the figures in the model card. Writes to ``--out``:

* ``model/``         the best model (float32 model folder)
* ``figures.json``   val-split figures (pooled AP@0.5, mAP, Dice) and the run's metadata
* ``train.log``      (when launched as below) the validation lines

``--install`` also writes the float16 copy into ``napari_unet/pretrained/nuclei/``.

    OMP_NUM_THREADS=1 nohup .venv/bin/python scripts/train_pretrained.py \\
        --time-limit 3300 --threads 1 --out /tmp/pretrained_run > /tmp/pretrained_run.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from common import load_dsb, machine_description  # noqa: E402

from napari_unet.cli import drive  # noqa: E402
from napari_unet.config import PredictConfig, TrainConfig  # noqa: E402
from napari_unet.inference.predict import predict_image  # noqa: E402
from napari_unet.metrics import evaluate_instances  # noqa: E402
from napari_unet.training.checkpoint import save_bundle  # noqa: E402
from napari_unet.training.engine import Trainer  # noqa: E402


def split_holdout(n: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held-out) of a seeded random split of ``n`` train-split images."""
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[holdout:].tolist()), sorted(order[:holdout].tolist())


def evaluate_val(bundle, threads: int | None, limit: int | None = None) -> dict:
    """Pooled instance metrics of ``bundle`` on the 94 val-split images."""
    val = load_dsb("val", limit)
    pcfg = PredictConfig(threads=threads)
    start = time.perf_counter()
    pairs = [(predict_image(bundle, im, pcfg).labels, m) for _, im, m in val]
    result = evaluate_instances(pairs)
    figures = {k: float(v) for k, v in result.items() if np.isscalar(v)}
    figures.update(images=len(val), predict_s=round(time.perf_counter() - start, 1))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/pretrained_run")
    parser.add_argument("--time-limit", type=float, default=3300.0, help="training seconds (data prep excluded)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=int, default=24, help="train-split images held out for keep-best")
    parser.add_argument("--validate-every", type=float, default=120.0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N train/val images (smoke test)")
    parser.add_argument("--install", action="store_true", help="also write the float16 copy into the package")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(machine_description(), flush=True)
    data = load_dsb("train", args.limit)
    train_idx, hold_idx = split_holdout(len(data), args.holdout, args.seed)
    train = [data[i] for i in train_idx]
    held = [data[i] for i in hold_idx]
    print(f"train split: {len(train)} for training, {len(held)} held out for keep-best", flush=True)
    cfg = replace(TrainConfig(), time_limit=args.time_limit, seed=args.seed, threads=args.threads,
                  validate_every=args.validate_every, preview_every=0.0)
    trainer = Trainer([(im, m) for _, im, m in train], cfg, names=[n for n, _, _ in train],
                      validation=[(im, m) for _, im, m in held])
    bundle = drive(trainer.run(), "training", quiet=True)
    bundle.meta["training"].update(data="dsb2018_fluo train split", held_out=[n for n, _, _ in held],
                                   command="scripts/train_pretrained.py " + " ".join(argv or sys.argv[1:]))
    save_bundle(bundle, out / "model")
    print(f"saved {out / 'model'}", flush=True)
    figures = evaluate_val(bundle, args.threads, args.limit)
    report = {"val": figures, "training": bundle.meta["training"], "keep_best": bundle.meta["validation"],
              "machine": machine_description()}
    (out / "figures.json").write_text(json.dumps(report, indent=2))
    print("val split: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
    if args.install:
        from napari_unet.pretrained import install_bundle

        print(f"installed {install_bundle(bundle, 'nuclei', figures)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
