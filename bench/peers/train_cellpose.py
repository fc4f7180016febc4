"""Cellpose from random weights on the dsb2018_fluo train split for a budget of fit seconds, then the val split.

Runs in ``bench/peers/.venv-cellpose`` (see setup.sh), never with napari_unet:

    bench/peers/.venv-cellpose/bin/python bench/peers/train_cellpose.py --budget 120 --seed 0 --out DIR

Set-up as in the shared peer notes: ``CellposeModel(pretrained_model=False, model_type=None)``,
``train.train_seg`` defaults (AdamW, lr 0.005, batch 8, 224² tiles) with ``rescale=False`` and
``nimg_per_epoch=8`` (one batch per epoch, so its 10-epoch lr warm-up is 10 steps); flows are
computed before training and not counted. ``train_seg`` takes its epoch count up front (its lr
schedule depends on it) and has no callback, so the budget is met in two parts: a throwaway
network trains 5 epochs first to measure the step time (not counted), then the real one gets
``planned_epochs`` (a margin over ``budget / fastest probe step``), and a forward pre-hook on it
ends training at the first step that would start past the budget. The clock runs from its first
training step. Predicts at native scale (``diameter`` = ``diam_mean``); post-processing is the
time in Cellpose's mask computation from the flows. Writes ``DIR/labels.npz`` (val labels by image name) and ``DIR/result.json``.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from importlib import metadata
from pathlib import Path

from peer_common import load_splits, parse_args, predict_split, write_outputs

CALIBRATION_EPOCHS = 5
TRAIN_ARGS = dict(channels=[0, 0], rescale=False, nimg_per_epoch=8)
GRAYSCALE = [0, 0]


FLAT_LR_EPOCHS = 100  # up to this many epochs train_seg's lr is flat after its warm-up; above, its last 50 decay
EPOCH_MARGIN = 1.25  # probe steps ran 10-20 % slower than the real ones (a 600 s run planned from them ended at 496 s)


def planned_epochs(budget: float, step_s: float) -> int:
    """The epoch count for ``train_seg``: a margin over ``budget / step_s`` while the lr stays flat (the step
    clock ends training at the budget, so extra epochs cost nothing), else the count itself (cutting the
    decaying last epochs would cost more than a short run)."""
    fit = budget / step_s
    if fit > FLAT_LR_EPOCHS:
        return int(fit)
    return max(1, min(FLAT_LR_EPOCHS, math.ceil(EPOCH_MARGIN * fit)))


class BudgetSpent(Exception):
    """Raised by the step clock to end ``train_seg`` once the budget is spent."""


class StepClock:
    """Forward pre-hook on the network: times training steps and ends training past ``budget``."""

    def __init__(self, budget: float) -> None:
        self.budget, self.starts = budget, []

    def __call__(self, module, inputs) -> None:
        if not module.training:
            return
        now = time.perf_counter()
        if self.starts and now - self.starts[0] >= self.budget:
            raise BudgetSpent
        self.starts.append(now)


def train_for(model, images, flows, budget: float, n_epochs: int, save_path: Path) -> StepClock:
    """``train_seg`` on ``model.net`` for ``n_epochs``, ended early by the clock; returns the clock."""
    from cellpose import train

    clock = StepClock(budget)
    handle = model.net.register_forward_pre_hook(clock)
    try:
        train.train_seg(model.net, train_data=images, train_labels=flows, n_epochs=n_epochs,
                        save_path=str(save_path), model_name="cellpose", **TRAIN_ARGS)
    except BudgetSpent:
        pass
    finally:
        handle.remove()
    clock.end = time.perf_counter()
    return clock


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    import numpy as np
    import torch
    from cellpose import dynamics, models

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)

    train, val = load_splits()
    images = [im for _, im, _ in train]
    start = time.perf_counter()
    flows = dynamics.labels_to_flows([m for _, _, m in train], device=torch.device("cpu"))  # (4, H, W) each
    flows_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(args.seed + 1000)
        probe = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)
        timed = train_for(probe, images, flows, float("inf"), CALIBRATION_EPOCHS, Path(scratch))
        step_s = float(np.min(np.diff(timed.starts[1:])))  # the first step warms up
    n_epochs = planned_epochs(args.budget, step_s)
    print(f"flows {flows_s:.0f} s; the fastest probe step took {step_s:.2f} s, so {n_epochs} epochs "
          f"(a margin over the budget's {args.budget / step_s:.0f})", flush=True)

    torch.manual_seed(args.seed)
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)
    clock = train_for(model, images, flows, args.budget, n_epochs, args.out)
    train_s = clock.end - clock.starts[0]
    print(f"trained {len(clock.starts)} steps in {train_s:.0f} s; predicting {len(val)} val images", flush=True)

    post = [0.0]
    compute_masks = model._compute_masks

    def timed_masks(*a, **k):
        start = time.perf_counter()
        masks = compute_masks(*a, **k)
        post[0] += time.perf_counter() - start
        return masks

    model._compute_masks = timed_masks  # only measures Cellpose's own mask step

    def predict(image: np.ndarray) -> tuple[np.ndarray, float]:
        before = post[0]
        masks = model.eval(image, channels=GRAYSCALE, diameter=model.diam_mean)[0]  # (H, W)
        return masks, post[0] - before

    labels, predict_s, post_s = predict_split(val, predict)
    write_outputs(args.out, labels, {
        "peer": "Cellpose", "budget": args.budget, "seed": args.seed, "threads": args.threads,
        "steps": len(clock.starts), "n_epochs_planned": n_epochs, "calibration_step_s": step_s,
        "train_s": train_s, "flows_s": flows_s,
        "predict_s_per_image": predict_s, "post_s_per_image": post_s,
        "n_fit": len(train), "n_val": len(val),
        "versions": {"torch": torch.__version__, "cellpose": metadata.version("cellpose")},
    })
    print(f"Cellpose {args.budget:.0f} s seed {args.seed}: {len(clock.starts)} steps in {train_s:.0f} s "
          f"(planned {n_epochs} epochs at {step_s:.2f} s/step), predict {predict_s:.2f} s/image "
          f"(masks {post_s:.3f})", flush=True)


if __name__ == "__main__":
    main()
