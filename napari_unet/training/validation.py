"""Scoring the network on held-out images while it trains."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from napari_unet.config import PredictConfig, TrainConfig
from napari_unet.data.dataset import PreparedPair, n_output_channels, n_output_classes
from napari_unet.models.heads import has_instance_maps
from napari_unet.inference.postprocess import instances_from_probabilities
from napari_unet.training.calibrate import counts_ap, rule_counts
from napari_unet.volumes import voxel_spacing

# Besides the argmax rule, the keep-best score tries these (seed threshold, split height) rules:
# the post-processing chosen after training usually splits interiors, and a model whose boundary
# class grows stronger can lose AP under the argmax rule while gaining under the chosen one.
SCORE_RULES = ((0.5, 1.0), (0.7, 1.0))


def semantic_scores(pred: np.ndarray, target: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and mean IoU over annotated pixels (target >= 0)."""
    valid = target >= 0
    p, t = pred[valid], target[valid]
    ious = []
    for c in range(n_classes):
        union = np.logical_or(p == c, t == c).sum()
        if union:
            ious.append(np.logical_and(p == c, t == c).sum() / union)
    return {"accuracy": float((p == t).mean()) if t.size else 0.0, "iou": float(np.mean(ious)) if ious else 0.0}


def validate(net: torch.nn.Module, pairs: Sequence[PreparedPair], cfg: TrainConfig,
             dtype: torch.dtype | None, should_stop: Callable[[], bool] | None = None,
             keep: dict | None = None) -> dict[str, float] | None:
    """Metrics on the validation pairs; ``score`` is the one used to keep the best model.

    Instances: AP@0.5 (objects pooled; ``score`` is the best of the argmax rule and
    ``SCORE_RULES``), semantic: mean IoU on annotated pixels. Returns None
    when ``should_stop()`` turns true between images (the run was cancelled). ``keep``, when
    given, receives the ``probs`` and (instances) the per-image TP/FP/FN ``counts`` of the
    scoring rule and ``rule_counts`` of every rule scored, keyed (seed threshold, split height,
    foreground threshold), for callers that reuse them.
    """
    from napari_unet.inference.predict import predict_normalized
    from napari_unet.metrics import evaluate_instances

    was_training = net.training
    net.eval()
    pcfg = PredictConfig()
    k = n_output_channels(cfg)
    try:
        probs = []
        for p in pairs:
            if should_stop is not None and should_stop():
                return None
            probs.append(predict_normalized(net, p.image, k, pcfg, dtype))
    finally:
        net.train(was_training)
    if keep is not None:
        keep["probs"] = probs
    if has_instance_maps(cfg):
        return _head_scores(cfg.instance_head, probs, [p.truth for p in pairs], keep)
    if cfg.task == "instances":
        spacing = voxel_spacing(cfg)  # an anisotropic volume splits at saddles of physical distances
        metrics = evaluate_instances([(instances_from_probabilities(pr, spacing=spacing), p.truth)
                                      for pr, p in zip(probs, pairs)])
        scores = {"ap50": float(metrics["ap50"]), "map": float(metrics["map"]), "dice": float(metrics["dice"])}
        gts = [p.truth for p in pairs]
        by_rule = {(None, None, 0.5): np.array([[r["tp50"], r["fp50"], r["fn50"]] for r in metrics["per_image"]],
                                               np.float64)}
        by_rule.update({(seed, split, 0.5): rule_counts(probs, gts, seed, 0.5, split, spacing=spacing)
                        for seed, split in SCORE_RULES})
        counts = max(list(by_rule.values())[1:], key=counts_ap)
        scores["score"] = max(scores["ap50"], counts_ap(counts))
        if keep is not None:
            keep["counts"] = counts if counts_ap(counts) >= scores["ap50"] else by_rule[(None, None, 0.5)]
            keep["rule_counts"] = by_rule
        return scores
    preds = np.concatenate([pr.argmax(0).ravel() for pr in probs])
    targets = np.concatenate([p.target.ravel() for p in pairs])
    scores = semantic_scores(preds, targets, n_output_classes(cfg))
    scores["score"] = scores["iou"]
    return scores


def _head_scores(head: str, maps: list[np.ndarray], gts: list[np.ndarray], keep: dict | None) -> dict[str, float]:
    """Star / flow head: AP@0.5 with the head's default thresholds (``score``), per-image counts in ``keep``."""
    from napari_unet.inference.postprocess import head_postprocess
    from napari_unet.metrics import evaluate_instances

    instances, rule = head_postprocess(head)
    metrics = evaluate_instances([(instances(m, 10, **rule), g) for m, g in zip(maps, gts)])
    scores = {"ap50": float(metrics["ap50"]), "map": float(metrics["map"]), "dice": float(metrics["dice"])}
    scores["score"] = scores["ap50"]
    if keep is not None:
        keep["counts"] = np.array([[r["tp50"], r["fp50"], r["fn50"]] for r in metrics["per_image"]], np.float64)
    return scores
