"""Synthetic training pairs: train the diffusion model on dsb2018_fluo, then measure it.

    .venv/bin/python bench/bench_diffusion.py train --minutes 50 --out /tmp/synth_bench/diffusion
    .venv/bin/python bench/bench_diffusion.py evaluate --model /tmp/synth_bench/diffusion

``train`` uses the 404 train-split images (tags from ``auto_tags``), one torch thread, and
saves a snapshot every 10 minutes. ``evaluate`` prints the four figures of the README:
mask consistency (Dice of a real-data segmentation model on synthetic images vs the prompt
masks), copying (nearest-neighbour normalised correlation to training crops), usefulness
(val AP@0.5 with 3 real images, real-only vs real + synthetic) and DDIM-50 speed; it writes
the sample grid to docs/images/synth_grid.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import REPO, load_dsb, machine_description  # noqa: E402
from napari_unet.diffusion.bundle import save_diffusion  # noqa: E402
from napari_unet.diffusion.config import DiffusionConfig  # noqa: E402
from napari_unet.diffusion.prompts import auto_tags  # noqa: E402
from napari_unet.diffusion.train import DiffusionTrainer  # noqa: E402
from napari_unet.events import Finished, LossReport, Message  # noqa: E402


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    train = load_dsb("train")
    pairs = [(im, m) for _, im, m in train]
    tags = [auto_tags(m) for _, _, m in train]
    cfg = DiffusionConfig(time_limit=args.minutes * 60, threads=1, seed=args.seed, crop_size=args.crop)
    trainer = DiffusionTrainer(pairs, cfg, tags=tags, names=[n for n, _, _ in train])
    print(machine_description(), flush=True)
    last_save = time.perf_counter()
    for event in trainer.run():
        if isinstance(event, Message):
            print(event.text, flush=True)
        elif isinstance(event, LossReport) and event.step % 100 < 2:
            print(f"step {event.step} loss {event.loss:.4f} {event.elapsed:.0f}s", flush=True)
        elif isinstance(event, Finished):
            save_diffusion(event.result, args.out)
            print(f"saved {args.out}: {event.summary}", flush=True)
        if time.perf_counter() - last_save > 600:
            snap = trainer.snapshot()
            if snap is not None:
                save_diffusion(snap, args.out)
                print(f"snapshot saved at step {snap.meta['training']['steps']}", flush=True)
            last_save = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--minutes", type=float, default=50.0)
    t.add_argument("--out", default="/tmp/synth_bench/diffusion")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--crop", type=int, default=64)
    t.set_defaults(func=cmd_train)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
