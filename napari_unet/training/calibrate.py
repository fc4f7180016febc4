"""Choosing a model's instance post-processing thresholds on its held-out images.

After a short training run the boundary class is often too faint where two nuclei touch, so
the argmax rule merges crowded objects. After training, a coordinate search over the seed rule
(interior probability that starts an object, and whether to split interiors at the saddles of
their distance map) and the foreground threshold picks the settings with the best pooled
AP@0.5 on the validation images; they travel in the model folder (``meta["postprocess"]``) and
every prediction path applies them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from napari_unet.inference.postprocess import grow_seeds, instance_seeds, instances_from_probabilities
from napari_unet.metrics import evaluate_instances

# (seed threshold, split height) pairs tried first; None: the argmax rule / no splitting
SEED_RULES: tuple[tuple[float | None, float | None], ...] = (
    (None, None), (0.5, None), (0.6, None), (0.7, None), (0.8, None), (0.9, None),
    (0.4, 1.0), (0.5, 0.5), (0.5, 1.0), (0.5, 1.5), (0.6, 1.0), (0.7, 1.0),
)
FG_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# The rule a search keeps unless another beats it by more than PRIOR_MARGIN on the validation
# images: with 12 images the best of 17 rules is partly noise, and the aggressive splits it
# often picked there (seeds 0.5, split 0.5 px) over-split the large nuclei of other images.
# This rule had the best mean AP@0.5 over four short-run models, each scored on its own 12
# held-out train-split images (README, "Choosing the post-processing").
PRIOR_RULE: dict[str, float | None] = {"seed_threshold": 0.7, "split_height": 1.0, "fg_threshold": 0.8}
PRIOR_MARGIN = 0.02
WORKERS = min(2, os.cpu_count() or 1)  # images post-processed at once (the sorting inside frees the GIL)


def _each(fn: Callable, *arrays: Sequence) -> list:
    """``[fn(*items) for items in zip(*arrays)]`` on ``WORKERS`` threads."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(fn, *arrays))


def pooled_ap50(probs: Sequence[np.ndarray], instances: Sequence[np.ndarray], seed_threshold: float | None,
                fg_threshold: float, split_height: float | None = None) -> float:
    """Pooled AP@0.5 of the instances post-processed with these settings."""
    preds = _each(lambda p: instances_from_probabilities(p, 10, fg_threshold, seed_threshold, split_height), probs)
    return _ap50(preds, instances)


def _ap50(preds: Sequence[np.ndarray], instances: Sequence[np.ndarray]) -> float:
    return float(evaluate_instances(list(zip(preds, instances)), thresholds=(0.5,))["ap50"])


def tune_thresholds(probs: Sequence[np.ndarray], instances: Sequence[np.ndarray],
                    should_stop: Callable[[], bool] | None = None) -> dict[str, float | None]:
    """Best ``seed_threshold``/``split_height``/``fg_threshold`` on (3, H, W) probabilities vs ids.

    The seed rule first (foreground fixed at 0.5), then the foreground threshold for that rule:
    17 evaluations instead of the 72 of the full grid. ``PRIOR_RULE`` is kept unless the search
    beats it by more than ``PRIOR_MARGIN``. Returns the settings with their ``ap50`` and the
    argmax rule's ``ap50_argmax``; ``should_stop()`` ends the search early with the best so far.
    """
    argmax = pooled_ap50(probs, instances, None, 0.5)
    best = {"seed_threshold": None, "split_height": None, "fg_threshold": 0.5, "ap50": argmax}
    for seed, split in SEED_RULES[1:]:
        if should_stop is not None and should_stop():
            break
        ap = pooled_ap50(probs, instances, seed, 0.5, split)
        if ap > best["ap50"]:
            best = {"seed_threshold": seed, "split_height": split, "fg_threshold": 0.5, "ap50": ap}
    seeds = _each(lambda p: instance_seeds(p, best["seed_threshold"], best["split_height"]), probs)  # fixed from here on
    for fg in FG_THRESHOLDS:
        if fg == 0.5 or (should_stop is not None and should_stop()):
            continue
        ap = _ap50(_each(lambda p, s: grow_seeds(p, s, fg), probs, seeds), instances)
        if ap > best["ap50"]:
            best = {**best, "fg_threshold": fg, "ap50": ap}
    prior = pooled_ap50(probs, instances, PRIOR_RULE["seed_threshold"], PRIOR_RULE["fg_threshold"],
                        PRIOR_RULE["split_height"])
    if best["ap50"] - prior <= PRIOR_MARGIN:
        best = {**PRIOR_RULE, "ap50": prior}
    return {**best, "ap50_argmax": argmax}
