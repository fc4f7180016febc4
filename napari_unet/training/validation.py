"""Scoring the network on held-out images while it trains."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from napari_unet import heads
from napari_unet.arrays.volumes import anisotropic_spacing
from napari_unet.config import MIN_SIZE, PredictConfig, TrainConfig
from napari_unet.data.dataset import PreparedPair
from napari_unet.inference import predict  # through the module, so a patched predictor is seen


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
             keep: dict | None = None, min_size: int = MIN_SIZE) -> dict[str, float] | None:
    """Metrics on the validation pairs; ``score`` is the one used to keep the best model.

    Instances: the instance head's ``score`` (AP@0.5, objects pooled; ``heads.Head.score``),
    semantic: mean IoU on annotated pixels. Returns None when ``should_stop()`` turns true
    between images (the run was cancelled). ``keep``, when given, receives the ``probs`` and
    (instances) what the head's ``score`` keeps: the per-image TP/FP/FN ``counts`` of the
    scoring rule (and for the 3-class head the ``rule_counts`` of every rule scored), for
    callers that reuse them. ``min_size``: the smallest object the model's labels will keep
    (``volume_scale.floor_of``), so validation scores the objects a user will see.
    """
    was_training = net.training
    net.eval()
    pcfg = PredictConfig()
    k = heads.n_output_channels(cfg)
    try:
        probs = []
        for p in pairs:
            if should_stop is not None and should_stop():
                return None
            probs.append(predict.predict_normalized(net, p.image, k, pcfg, dtype))
    finally:
        net.train(was_training)
    if keep is not None:
        keep["probs"] = probs
    head = heads.of(cfg)
    if head is not None:
        spacing = anisotropic_spacing(cfg)  # an anisotropic volume splits at saddles of physical distances
        told = {} if spacing is None else {"spacing": spacing}
        return head.score(probs, [p.truth for p in pairs], keep, min_size=min_size, **told)
    preds = np.concatenate([pr.argmax(0).ravel() for pr in probs])
    targets = np.concatenate([p.target.ravel() for p in pairs])
    scores = semantic_scores(preds, targets, heads.n_output_classes(cfg))
    scores["score"] = scores["iou"]
    return scores

