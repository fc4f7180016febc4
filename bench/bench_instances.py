"""Instance heads side by side on dsb2018_fluo, in one run.

Each head trains from scratch on the train split (404 images) for each time budget and seed,
then predicts the val split (94 images, objects pooled) with the post-processing its own run
chose on its held-out train images: AP@0.5, AP@0.75, training steps and post-processing
seconds per image. Peers (StarDist, Cellpose) train from scratch in their own environments
(made by ``bench/peers/setup.sh``) on the same split, threads and budgets, one seed each (the first
of ``--seeds``); their val labels are scored here with the same ``evaluate_instances``.

    .venv/bin/python bench/bench_instances.py [--heads 3class star] [--budgets 120] [--seeds 0 1 2]
    .venv/bin/python bench/bench_instances.py --steps 400 1200 --seeds 0   # fixed step counts

``--steps`` trains each model for a fixed number of optimiser steps instead of a time budget:
comparisons that a loaded (shared) machine does not skew; ``ms_per_step`` then shows the cost.
    .venv/bin/python bench/bench_instances.py --budgets 120 600 --peers stardist cellpose
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_dsb, machine_description, train_as_user  # noqa: E402
from peers.peer_common import THREAD_VARIABLES  # noqa: E402

from napari_unet import heads  # noqa: E402
from napari_unet.cli import drive  # noqa: E402
from napari_unet.config import TrainConfig  # noqa: E402
from napari_unet.heads.calibrate import PRIOR_RULE  # noqa: E402
from napari_unet.heads.watershed import instances_from_probabilities  # noqa: E402
from napari_unet.inference.labels import labels_for  # noqa: E402
from napari_unet.inference.predict import predict_probabilities  # noqa: E402
from napari_unet.metrics import evaluate_instances  # noqa: E402
from napari_unet.workflows.train_request import TrainRequest  # noqa: E402


def run(train, val, head: str, budget: float, seed: int, base: TrainRequest, steps: int | None = None) -> dict:
    """Train one model as ``napari-unet train --init none --instance-head HEAD`` does (``budget``
    seconds, or ``steps`` optimiser steps) and score it on val; returns the row."""
    request = replace(base, instance_head=head, time_limit=None if steps else budget, steps=steps, seed=seed)
    bundle = drive(train_as_user(train, request), "training", quiet=True)
    maps = [predict_probabilities(bundle, im) for _, im, _ in val]
    start = time.perf_counter()
    labels = [labels_for(bundle, m) for m in maps]
    post_s = (time.perf_counter() - start) / len(val)
    scores = evaluate_instances([(lab, m) for lab, (_, _, m) in zip(labels, val)])
    big = [i for i, (_, im, _) in enumerate(val) if im.shape == (520, 696)]
    start = time.perf_counter()
    for i in big:
        labels_for(bundle, maps[i])
    post_520 = (time.perf_counter() - start) / max(len(big), 1)
    training = bundle.meta["training"]
    if bundle.config.instance_head != "3class":  # the same model's 3-class channels, watershed with the prior rule
        own3 = [instances_from_probabilities(m[:3], 10, **PRIOR_RULE) for m in maps]
        classes_ap50 = float(evaluate_instances([(lab, m) for lab, (_, _, m) in zip(own3, val)])["ap50"])
    else:
        classes_ap50 = float(scores["ap50"])
    row = {"head": head, "budget": budget if not steps else None, "seed": seed, "steps": training["steps"],
           "ms_per_step": 1000 * training["seconds"] / max(training["steps"], 1),
           "ap50": float(scores["ap50"]), "ap75": float(scores["ap75"]), "ap50_3class_channels": classes_ap50,
           "post_s": post_s, "post_s_520x696": post_520, "postprocess": bundle.postprocess}
    print(f"  {head:6s} {budget if not steps else 0:5.0f} s seed {seed}: {row['steps']} steps "
          f"({row['ms_per_step']:.0f} ms/step), AP@0.5 {row['ap50']:.3f}, "
          f"AP@0.75 {row['ap75']:.3f} (its 3-class channels {classes_ap50:.3f}), "
          f"post-processing {post_s:.3f} s/image ({post_520:.3f} s at 520x696), "
          f"{bundle.postprocess}", flush=True)
    return row


PEERS_DIR = REPO / "bench" / "peers"
PEER_NAMES = {"stardist": "StarDist", "cellpose": "Cellpose"}


def peer_python(peer: str) -> Path:
    """The python of a peer's venv (made by bench/peers/setup.sh)."""
    return PEERS_DIR / f".venv-{peer}" / "bin" / "python"


def peer_ready(peer: str) -> bool:
    """Whether setup.sh finished the peer's venv."""
    return (PEERS_DIR / f".venv-{peer}" / ".complete").exists()


def run_peer(peer: str, val, budget: float, seed: int, threads: int, out: Path) -> dict | None:
    """Run one peer's script in its venv and score its val labels; the row, or None if it failed."""
    cmd = [str(peer_python(peer)), str(PEERS_DIR / f"train_{peer}.py"), "--budget", str(budget),
           "--seed", str(seed), "--threads", str(threads), "--out", str(out)]
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}  # before its numpy loads
    out.mkdir(parents=True, exist_ok=True)
    with (out / "log.txt").open("w") as log:  # Keras progress bars, Cellpose logs
        if subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            print(f"  {PEER_NAMES[peer]} {budget:.0f} s failed, no row; see {out / 'log.txt'}", flush=True)
            return None
    result = json.loads((out / "result.json").read_text())
    with np.load(out / "labels.npz") as labels:  # keyed by val image name
        scores = evaluate_instances([(labels[name], m) for name, _, m in val])
    row = {"head": PEER_NAMES[peer], "budget": budget, "seed": seed, "steps": result["steps"],
           "ap50": float(scores["ap50"]), "ap75": float(scores["ap75"]),
           "post_s": result["post_s_per_image"], "predict_s": result["predict_s_per_image"],
           "train_s": result["train_s"], "postprocess": result.get("thresholds")}
    print(f"  {row['head']:8s} {budget:5.0f} s seed {seed}: {row['steps']} steps in {row['train_s']:.0f} s, "
          f"AP@0.5 {row['ap50']:.3f}, AP@0.75 {row['ap75']:.3f}, predict {row['predict_s']:.2f} s/image "
          f"(post-processing {row['post_s']:.3f})", flush=True)
    return row


def save_rows(rows: list[dict], out: Path) -> None:
    """Write the rows so far (after every run: a late failure keeps the finished ones)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", nargs="+", default=list(heads.names()), choices=heads.names())
    parser.add_argument("--budgets", type=float, nargs="+", default=[120.0])
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="fixed optimiser step counts instead of --budgets")
    parser.add_argument("--validate-every", type=float, default=TrainConfig.validate_every,
                        help="seconds between validations while training (large: only the final one)")
    parser.add_argument("--val-limit", type=int, default=None, help="score the first N val images only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--peers", nargs="*", default=None, choices=list(PEER_NAMES),
                        help="peers to run beside the heads (default: those whose venv exists)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "instances.json"))
    args = parser.parse_args()
    peers = [p for p in PEER_NAMES if peer_ready(p)] if args.peers is None else args.peers
    missing = [p for p in peers if not peer_ready(p)]
    if missing:
        sys.exit(f"no venv for {', '.join(missing)}: run bash bench/peers/setup.sh {' '.join(missing)}")
    if not peers and args.peers is None:
        print("no peers: bash bench/peers/setup.sh makes their venvs (StarDist, Cellpose)", flush=True)
    print(machine_description(), flush=True)
    train, val = load_dsb("train"), load_dsb("val", args.val_limit)
    print(f"dsb2018_fluo: {len(train)} train, {len(val)} val images", flush=True)
    base = TrainRequest(validate_every=args.validate_every)
    rows: list[dict] = []
    out = Path(args.out)
    runs = [(0.0, n) for n in args.steps] if args.steps else [(b, None) for b in args.budgets]
    for budget, steps in runs:
        for seed in args.seeds:
            for head in args.heads:  # heads interleaved, so machine load drifts hit both alike
                rows.append(run(train, val, head, budget, seed, base, steps))
                save_rows(rows, out)
    seed = args.seeds[0]  # one seed for the peers
    for budget in [] if args.steps else args.budgets:  # peers train on time budgets only
        for peer in peers:
            row = run_peer(peer, val, budget, seed, torch.get_num_threads(),
                           out.with_suffix("") / "peers" / f"{peer}-{budget:.0f}s-seed{seed}")
            if row is not None:  # a failed peer run gives no row
                rows.append(row)
                save_rows(rows, out)
    print(f"\n{'head':8s} {'budget':>7s} {'AP@0.5 mean ± sd':>18s} {'min':>6s} {'AP@0.75':>8s} {'steps':>6s} "
          f"{'post s/img':>10s}")
    for budget, steps in runs:
        for head in [*args.heads, *(PEER_NAMES[p] for p in peers)]:
            sel = [r for r in rows if r["head"] == head and r["budget"] == (None if steps else budget)
                   and (steps is None or r["steps"] == steps)]
            if not sel:
                continue
            ap = np.array([r["ap50"] for r in sel])
            print(f"{head:8s} {steps or budget:7.0f} {ap.mean():9.3f} ± {ap.std():.3f} {ap.min():6.3f} "
                  f"{np.mean([r['ap75'] for r in sel]):8.3f} {np.mean([r['steps'] for r in sel]):6.0f} "
                  f"{np.mean([r['post_s'] for r in sel]):10.3f}")
    save_rows(rows, out)


if __name__ == "__main__":
    main()
