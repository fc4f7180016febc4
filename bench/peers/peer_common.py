"""What both peer scripts share: arguments, thread limits, the data split, timing and the output files.

Runs inside a peer's own venv (numpy, imageio; no napari_unet). The images come from
``bench/common.py``'s ``load_dsb``, so a peer sees the same split, order and names as our heads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Sample, load_dsb  # noqa: E402

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def parse_args(description: str, more: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None) -> argparse.Namespace:
    """``--budget SECONDS --seed N --threads T --out DIR`` (and the arguments ``more`` adds); also sets
    the thread variables (before any numerical library is imported by the caller)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--budget", type=float, required=True, help="training seconds (fit time only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="folder for labels.npz and result.json")
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def split_held_back(train: list[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """``(fit, held_back)``: ``n`` train images chosen by ``seed`` are kept out of fitting."""
    order = np.random.default_rng(seed).permutation(len(train))
    held = set(order[:n].tolist())
    return ([s for i, s in enumerate(train) if i not in held],
            [s for i, s in enumerate(train) if i in held])


def predict_split(val: list[Sample], predict: Callable[[np.ndarray], tuple[np.ndarray, float]],
                  ) -> tuple[dict[str, np.ndarray], float, float]:
    """Label every val image; ``predict(image)`` returns ``(labels (H, W), post-processing seconds)``.

    Returns ``(labels by name, seconds per image in all, post-processing seconds per image)``.
    """
    labels: dict[str, np.ndarray] = {}
    post = 0.0
    start = time.perf_counter()
    for name, image, _ in val:
        lab, post_s = predict(image)
        labels[name] = lab.astype(np.int32)
        post += post_s
    total = time.perf_counter() - start
    return labels, total / len(val), post / len(val)


def write_outputs(out: Path, labels: dict[str, np.ndarray], result: dict) -> None:
    """``labels.npz`` (one int32 label image per val name) and ``result.json``."""
    np.savez_compressed(out / "labels.npz", **labels)
    (out / "result.json").write_text(json.dumps(result, indent=2))


def load_splits() -> tuple[list[Sample], list[Sample]]:
    """The dsb2018_fluo train and val splits, as our heads load them."""
    return load_dsb("train"), load_dsb("val")


def stardist_budget(args: argparse.Namespace):
    """Set up a StarDist (TensorFlow) run: ``args.threads`` threads, every random seed from
    ``args.seed``; returns a Keras callback that stops ``fit`` after the batch that spends
    ``args.budget`` seconds and counts ``steps`` and ``seconds`` (TensorFlow is imported here, in
    the StarDist venv only)."""
    import random

    import tensorflow as tf
    from csbdeep.utils.tf import keras_import

    Callback = keras_import("callbacks", "Callback")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)

    class Budget(Callback):
        """Stops ``fit`` after the batch that spends the budget; counts steps and fit seconds."""

        def on_train_begin(self, logs=None):
            self.start, self.steps = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if time.perf_counter() - self.start >= args.budget:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    return Budget()


def stardist_result(args: argparse.Namespace, budget, model, peer: str, **fields) -> dict:
    """The ``result.json`` of a StarDist run: the budget, seed and threads asked, the steps and fit
    seconds spent (``budget``: ``stardist_budget``'s callback), the thresholds StarDist chose, the
    versions, then ``fields``."""
    import stardist
    import tensorflow as tf

    return {"peer": peer, "budget": args.budget, "seed": args.seed, "threads": args.threads,
            "steps": budget.steps, "train_s": budget.seconds,
            "thresholds": {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)},
            **fields, "versions": {"tensorflow": tf.__version__, "stardist": stardist.__version__}}


def stardist_predict(model, image: np.ndarray) -> tuple[np.ndarray, float]:
    """(labels, seconds of its non-maximum suppression) of a StarDist model on a prepared image or
    volume; StarDist's own generator marks where the suppression (its post-processing) starts."""
    nms_start = None
    for item in model._predict_instances_generator(image, show_tile_progress=False):
        if isinstance(item, str):
            if item == "nms":
                nms_start = time.perf_counter()
            continue
        labels, _ = item
    return labels, time.perf_counter() - nms_start
