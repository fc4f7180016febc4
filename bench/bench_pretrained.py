"""What the shipped ``pretrained:nuclei`` starting model buys, measured side by side in one run.

Five rows, all scored on the dsb2018_fluo val split (94 images, objects pooled, AP@0.5):

1. the pretrained model as-is (no training);
2. pretrained + ``--finetune`` seconds (30) of fine-tuning on 5 train-split images, with the
   fine-tune guard off (``TrainConfig.fine_tune_guard``: the fine-tuned weights whatever they score);
3. the same with the guard on (the default: the starting model stays unless the fine-tuned one validates higher);
4. scratch for ``--scratch`` seconds (120) on the same 5 images;
5. scratch for ``--scratch`` seconds on the whole train split (404 images).

``--finetune-steps N`` fine-tunes for N steps instead of seconds (the same training on a loaded
machine); ``--no-scratch`` leaves out rows 4 and 5.

The 5 images are drawn (seeded) from the dsb2018_fluo train-split images the starting model held
out for keep-best validation, so it never trained on them. Every run uses the engine's defaults (as
``napari-unet train`` does), so each holds out one of the 5 images for keep-best.

``--start MODEL`` measures another starting model (a candidate to ship, a folder) in place of
``pretrained:nuclei``; ``--held-by MODEL...`` draws the images among those every named model held
out too, so two starting models are fine-tuned on the same images (a candidate trained on other
kinds as well holds out stained and brightfield images, which are not in this split):

    .venv/bin/python bench/bench_pretrained.py [--finetune 30] [--finetune-steps N] [--scratch 120]
        [--no-scratch] [--threads 2] [--start MODEL] [--held-by MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_dsb, machine_description, train_as_user  # noqa: E402

from napari_unet.cli import drive  # noqa: E402
from napari_unet.config import PredictConfig  # noqa: E402
from napari_unet.inference.predict import predict_image  # noqa: E402
from napari_unet.metrics import evaluate_instances  # noqa: E402
from napari_unet.models.bundle import ModelBundle  # noqa: E402
from napari_unet.workflows.model_spec import CURRENT, resolve_model  # noqa: E402
from napari_unet.workflows.train_request import TrainRequest  # noqa: E402


def few_images(n: int, seed: int, models: list[ModelBundle], train_names: set[str]) -> list[str]:
    """``n`` names (seeded) among the ``train_names`` every one of ``models`` held out."""
    held = set(train_names)
    for model in models:
        names = model.meta["training"].get("held_out")
        if not names:
            raise SystemExit("a starting model records no held-out images; re-train it with scripts/train_pretrained.py")
        held &= set(names)
    if len(held) < n:
        raise SystemExit(f"only {len(held)} train-split images are held out by every model; ask for fewer (--n-images)")
    return sorted(np.random.default_rng(seed).choice(sorted(held), size=n, replace=False).tolist())


def train(samples, seconds: float, init: ModelBundle | None, threads: int, seed: int, steps: int | None = None,
          guard: bool = True) -> tuple[ModelBundle, dict]:
    """Train as ``napari-unet train`` does (``--init none``, or fine-tuning ``init``: the loaded
    ``pretrained:nuclei``) for ``seconds`` or ``steps`` (data preparation excluded)."""
    request = TrainRequest(time_limit=None if steps else seconds, steps=steps, seed=seed, threads=threads,
                           preview_every=0.0)
    start = time.perf_counter()
    bundle = drive(train_as_user(samples, request, "none" if init is None else CURRENT, current=init,
                                 fine_tune_guard=guard), "training", quiet=True)
    info = {"steps": bundle.meta["training"]["steps"], "train_s": round(time.perf_counter() - start, 1),
            "guard": bundle.meta["training"].get("fine_tune_guard")}
    return bundle, info


def score(bundle: ModelBundle, val, threads: int) -> dict:
    """Pooled instance metrics on the val split."""
    pcfg = PredictConfig(threads=threads)
    result = evaluate_instances([(predict_image(bundle, im, pcfg).labels, m) for _, im, m in val])
    return {k: float(result[k]) for k in ("ap50", "map", "dice")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finetune", type=float, default=30.0, help="fine-tuning seconds")
    parser.add_argument("--finetune-steps", type=int, default=None, help="fine-tune for this many steps instead")
    parser.add_argument("--scratch", type=float, default=120.0, help="training-from-scratch seconds")
    parser.add_argument("--no-scratch", action="store_true", help="leave out the two runs from scratch")
    parser.add_argument("--n-images", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", default="pretrained:nuclei", help="the starting model measured (a spec or folder)")
    parser.add_argument("--held-by", nargs="*", default=[], metavar="MODEL",
                        help="draw the images among those these models held out too")
    args = parser.parse_args()
    print(machine_description(), flush=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    train_split, val = load_dsb("train"), load_dsb("val")
    pretrained = resolve_model(args.start)
    others = [resolve_model(spec) for spec in args.held_by]
    names = few_images(args.n_images, args.seed, [pretrained, *others], {s[0] for s in train_split})
    few = [s for s in train_split if s[0] in names]
    print(f"starting model {args.start}; {len(few)} images for the few-image runs: {', '.join(names)}", flush=True)

    rows: dict[str, dict] = {"pretrained as-is": {"steps": 0, "train_s": 0.0, **score(pretrained, val, args.threads)}}
    print("pretrained as-is:", rows["pretrained as-is"], flush=True)
    tuning = f"{args.finetune_steps} steps" if args.finetune_steps else f"{args.finetune:.0f} s"
    runs = [  # (label, samples, seconds, init, fine-tuning steps, guard)
        (f"pretrained + {tuning} fine-tuning, {len(few)} images, guard off", few, args.finetune, pretrained,
         args.finetune_steps, False),
        (f"pretrained + {tuning} fine-tuning, {len(few)} images, guard on", few, args.finetune, pretrained,
         args.finetune_steps, True),
    ]
    if not args.no_scratch:
        runs += [(f"scratch {args.scratch:.0f} s, same {len(few)} images", few, args.scratch, None, None, True),
                 (f"scratch {args.scratch:.0f} s, whole train split ({len(train_split)})", train_split, args.scratch,
                  None, None, True)]
    for label, samples, seconds, init, steps, guard in runs:
        bundle, info = train(samples, seconds, init, args.threads, args.seed, steps, guard)
        rows[label] = {**info, **score(bundle, val, args.threads)}
        print(f"{label}: {rows[label]}", flush=True)

    print(f"\nval split ({len(val)} images, objects pooled); load average at end: {os.getloadavg()}")
    print(f"{'run':64s} {'steps':>6s} {'AP@0.5':>7s} {'mAP':>6s} {'Dice':>6s}  kept (guard on)")
    for label, r in rows.items():
        kept = (r.get("guard") or {}).get("kept", "")
        print(f"{label:64s} {r['steps']:6d} {r['ap50']:7.3f} {r['map']:6.3f} {r['dice']:6.3f}  {kept}")
    guarded = rows[runs[1][0]]
    print(f"guard on: {guarded['guard']}")
    if not args.no_scratch:
        ft, few_scratch = guarded["ap50"], rows[runs[2][0]]["ap50"]
        all_scratch = rows[runs[3][0]]["ap50"]
        print(f"\nfine-tuned {tuning} (guard on) / scratch {args.scratch:.0f} s on the same images: "
              f"AP@0.5 x{ft / max(few_scratch, 1e-9):.2f}; / scratch on the whole train split: "
              f"x{ft / max(all_scratch, 1e-9):.2f}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrained.json").write_text(json.dumps({"start": args.start, "images": names, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
