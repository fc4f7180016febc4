"""Choosing a model's instance post-processing thresholds on its held-out images.

After a short training run the boundary class is often too faint where two nuclei touch, so
the argmax rule merges crowded objects. After training, a coordinate search over the seed rule
(interior probability that starts an object, and whether to split interiors at the saddles of
their distance map) and the foreground threshold picks the settings with the best pooled
AP@0.5 on the validation images; they travel in the model folder (``meta["postprocess"]``) and
every prediction path applies them.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from napari_unet.config import MIN_SIZE
from napari_unet.heads.watershed import Spacing, grow_seeds, instance_seeds, instances_from_probabilities
from napari_unet.metrics import evaluate_instances

# (seed threshold, split height) pairs tried first; None: the argmax rule / no splitting
SEED_RULES: tuple[tuple[float | None, float | None], ...] = (
    (None, None), (0.5, None), (0.6, None), (0.7, None), (0.8, None), (0.9, None),
    (0.4, 1.0), (0.5, 0.5), (0.5, 1.0), (0.5, 1.5), (0.6, 1.0), (0.7, 1.0),
)
FG_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# The rule a search keeps unless another beats it in CONFIDENCE of bootstrap resamples of the
# validation images: with a dozen images the best of 17 rules is partly noise (one crowded image
# can carry a rule), and rules picked that way often transferred badly to other images. This one
# had the best mean AP@0.5 over four short-run models, each scored on its own 12 held-out
# train-split images (docs/experiments.md, "Width, calibration and keep-best").
PRIOR_RULE: dict[str, float | None] = {"seed_threshold": 0.7, "split_height": 1.0, "fg_threshold": 0.8}
CONFIDENCE = 0.9  # an earlier checkpoint replaces the final weights (one comparison, engine keep-best)
# The searched rule is the best of 17 on the same images it is then tested on, so its bootstrap
# win rate is inflated by the choice (the winner's curse of many comparisons): it needs 0.99.
# At 0.9, 5 of 9 default 120 s dsb2018_fluo runs replaced the prior; on the val split the three
# measured lost 0.052 and 0.082 and gained 0.007 (docs/benchmarks.md, "Accuracy"). A prior that finds next to
# nothing (an under-confident model) still loses in every resample and is replaced.
RULE_CONFIDENCE = 0.99
RESAMPLES = 1000
WORKERS = min(2, os.cpu_count() or 1)  # images post-processed at once (the sorting inside frees the GIL)


def _each(fn: Callable, *arrays: Sequence) -> list:
    """``[fn(*items) for items in zip(*arrays)]`` on ``WORKERS`` threads."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(fn, *arrays))


def pooled_ap50(probs: Sequence[np.ndarray], instances: Sequence[np.ndarray], seed_threshold: float | None,
                fg_threshold: float, split_height: float | None = None, spacing: Spacing = None,
                min_size: int = MIN_SIZE) -> float:
    """Pooled AP@0.5 of the instances post-processed with these settings."""
    return counts_ap(rule_counts(probs, instances, seed_threshold, fg_threshold, split_height, spacing=spacing,
                                 min_size=min_size))


def rule_counts(probs: Sequence[np.ndarray], instances: Sequence[np.ndarray], seed_threshold: float | None,
                fg_threshold: float, split_height: float | None = None,
                seeds: Sequence[np.ndarray] | None = None, spacing: Spacing = None,
                min_size: int = MIN_SIZE) -> np.ndarray:
    """(images, 3) TP, FP, FN at IoU 0.5 per image (``seeds``: reuse these instead of the seed rule;
    ``spacing``: an anisotropic volume's voxel size, for the split at saddles; ``min_size``: the
    smallest object kept, as the model's labels keep it)."""
    if seeds is None:
        preds = _each(lambda p: instances_from_probabilities(p, min_size, fg_threshold, seed_threshold, split_height,
                                                             spacing), probs)
    else:
        preds = _each(lambda p, s: grow_seeds(p, s, fg_threshold, min_size), probs, seeds)
    return image_counts(preds, instances)


def image_counts(preds: Sequence[np.ndarray], instances: Sequence[np.ndarray]) -> np.ndarray:
    """(images, 3) TP, FP, FN at IoU 0.5 of predicted vs true instance labels, per image."""
    rows = evaluate_instances(list(zip(preds, instances)), thresholds=(0.5,))["per_image"]
    return np.array([[r["tp50"], r["fp50"], r["fn50"]] for r in rows], dtype=np.float64).reshape(-1, 3)


def counts_ap(counts: np.ndarray) -> float:
    """Pooled TP / (TP + FP + FN) of per-image counts (1 when there is nothing to find or find)."""
    tp, fp, fn = counts.sum(axis=0)
    return float(tp / (tp + fp + fn)) if tp + fp + fn else 1.0


def bootstrap_win_rate(better: np.ndarray, worse: np.ndarray, resamples: int = RESAMPLES) -> float:
    """Share of bootstrap resamples of the images (seeded) in which ``better`` has the higher pooled AP."""
    if len(better) == 0:
        return 0.0
    index = np.random.default_rng(0).integers(len(better), size=(resamples, len(better)))
    a, b = better[index].sum(axis=1), worse[index].sum(axis=1)  # (resamples, 3)
    ap = lambda c: c[:, 0] / np.maximum(c.sum(axis=1), 1)  # noqa: E731
    return float((ap(a) > ap(b)).mean())


def tune_thresholds(probs: Sequence[np.ndarray], instances: Sequence[np.ndarray],
                    should_stop: Callable[[], bool] | None = None,
                    known: dict[tuple, np.ndarray] | None = None, spacing: Spacing = None,
                    min_size: int = MIN_SIZE) -> dict[str, float | None]:
    """Best ``seed_threshold``/``split_height``/``fg_threshold`` on (3, H, W) probabilities vs ids.

    The seed rule first (foreground fixed at 0.5), then the foreground threshold for that rule:
    17 evaluations instead of the 72 of the full grid. The winner replaces ``PRIOR_RULE`` only
    if it beats it in ``RULE_CONFIDENCE`` of the bootstrap resamples of the images. Returns the
    settings with their ``ap50``, the argmax rule's ``ap50_argmax``, and ``confidence`` (the
    winner's bootstrap win rate over the prior); ``should_stop()`` ends the search early.
    ``known``: per-image counts already computed for these probabilities, keyed (seed threshold,
    split height, foreground threshold) as in ``validate``'s ``rule_counts``; those are not redone.
    ``spacing``: an anisotropic volume's voxel size (split heights in pixel widths); ``min_size``:
    the smallest object the model's labels keep (``known`` must have been counted with it).
    """
    known = dict(known or {})

    def counts_of(seed: float | None, split: float | None, fg: float, seeds: list | None = None) -> np.ndarray:
        """Counts of a rule, computed once (``seeds``: that rule's seeds, already made)."""
        if (seed, split, fg) not in known:
            known[(seed, split, fg)] = rule_counts(probs, instances, seed, fg, split, seeds=seeds, spacing=spacing,
                                                   min_size=min_size)
        return known[(seed, split, fg)]

    counts = counts_of(None, None, 0.5)
    argmax = counts_ap(counts)
    best = {"seed_threshold": None, "split_height": None, "fg_threshold": 0.5, "ap50": argmax}
    for seed, split in SEED_RULES[1:]:
        if should_stop is not None and should_stop():
            break
        c = counts_of(seed, split, 0.5)
        if counts_ap(c) > best["ap50"]:
            best, counts = {"seed_threshold": seed, "split_height": split, "fg_threshold": 0.5, "ap50": counts_ap(c)}, c
    rule = (best["seed_threshold"], best["split_height"])
    seeds = _each(lambda p: instance_seeds(p, *rule, min_size, spacing), probs)  # fixed from here on
    for fg in FG_THRESHOLDS:
        if should_stop is not None and should_stop():
            break
        c = counts_of(*rule, fg, seeds=seeds)  # the same seeds as the rule itself, grown over another foreground
        if counts_ap(c) > best["ap50"]:
            best, counts = {**best, "fg_threshold": fg, "ap50": counts_ap(c)}, c
    prior = counts_of(PRIOR_RULE["seed_threshold"], PRIOR_RULE["split_height"], PRIOR_RULE["fg_threshold"])
    confidence = bootstrap_win_rate(counts, prior) if counts_ap(counts) > counts_ap(prior) else 0.0
    if confidence < RULE_CONFIDENCE:
        best = {**PRIOR_RULE, "ap50": counts_ap(prior)}
    return {**best, "ap50_argmax": argmax, "confidence": round(confidence, 3)}


# A head's own thresholds (``Head.threshold_grid``), searched as StarDist's ``optimize_thresholds``
# does: the first threshold (the object probability) over a grid, then refined next to the best,
# for each value of the others (the star head's NMS overlap, the flow head's flow-consistency error).


def head_counts(head, maps: Sequence[np.ndarray], instances: Sequence[np.ndarray], min_size: int = MIN_SIZE,
                **rule: float) -> np.ndarray:
    """(images, 3) TP, FP, FN at IoU 0.5 per image of ``head``'s instances (``heads.Head``) with ``rule``."""
    return image_counts(_each(lambda m: head.instances(m, min_size, **rule), maps), instances)


def tune_head_thresholds(head, maps: Sequence[np.ndarray], instances: Sequence[np.ndarray],
                         should_stop: Callable[[], bool] | None = None, min_size: int = MIN_SIZE) -> dict[str, float]:
    """Best thresholds of ``head`` (its ``threshold_grid``) on the validation maps.

    The winner replaces the head's ``default_rule`` when it beats it in ``CONFIDENCE`` of the
    bootstrap resamples of the images. Returns the thresholds with their ``ap50``, the default
    rule's ``ap50_default`` and the winner's ``confidence``.
    """
    grid = head.threshold_grid
    keys = [name for name, _ in grid]
    default_rule = dict(head.default_rule)
    known: dict[tuple[float, ...], np.ndarray] = {}

    def counts_of(*values: float) -> np.ndarray:
        key = tuple(round(v, 3) for v in values)
        if key not in known:
            known[key] = head_counts(head, maps, instances, min_size, **dict(zip(keys, key)))
        return known[key]

    default = counts_of(*(default_rule[k] for k in keys))
    best, counts = dict(default_rule), default
    for others in itertools.product(*(values for _, values in reversed(grid[1:]))):  # the last one outermost
        for a in grid[0][1]:
            if should_stop is not None and should_stop():
                break
            rule = dict(zip(keys, (a, *reversed(others))))
            c = counts_of(*rule.values())
            if counts_ap(c) > counts_ap(counts):
                best, counts = rule, c
    for step in (-0.05, 0.05):  # refine the first threshold (the probability) next to the best
        a = best[keys[0]] + step
        if 0.0 < a < 1.0:
            c = counts_of(a, *(best[k] for k in keys[1:]))
            if counts_ap(c) > counts_ap(counts):
                best, counts = {**best, keys[0]: round(a, 3)}, c
    confidence = bootstrap_win_rate(counts, default) if counts_ap(counts) > counts_ap(default) else 0.0
    if confidence < CONFIDENCE:
        best, counts = dict(default_rule), default
    return {**best, "ap50": counts_ap(counts), "ap50_default": counts_ap(default), "confidence": round(confidence, 3)}
