"""Pixel-wise weighted cross-entropy (the U-Net loss) and an optional soft Dice term.

Each instance head builds its own loss on these (``heads``: ``Head.loss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_unet.data.targets import IGNORE


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                           pull: float = 0.0) -> torch.Tensor:
    """Mean over annotated pixels of w(x) * CE(x), plus the unannotated pixels' pull towards background.

    logits (B, K, *S), target (B, *S) int64 with ``IGNORE`` for unannotated pixels,
    weights (B, *S) float. ``pull`` > 0 (partial instance annotations, ``data.targets.unannotated_pull``):
    each ``IGNORE`` pixel with a positive weight (``unannotated_prior``; not padding, not held-out
    zones) adds ``pull`` * CE(background) and counts ``pull`` in the mean's denominator. With
    ``pull`` 0 this is the plain mean over annotated pixels.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE)  # (B, *S)
    unannotated = target == IGNORE
    valid = (~unannotated).sum()
    if pull <= 0:
        return (ce * weights).sum() / valid.clamp(min=1)
    prior = (unannotated & (weights > 0)).float() * pull  # (B, *S)
    to_background = F.cross_entropy(logits, torch.zeros_like(target), reduction="none")  # (B, *S)
    return ((ce * weights).sum() + (to_background * prior).sum()) / (valid + prior.sum()).clamp(min=1e-6)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (1..K-1), on annotated pixels only."""
    probs = logits.float().softmax(dim=1)  # (B, K, *S)
    valid = (target != IGNORE).unsqueeze(1)  # (B, 1, *S)
    onehot = F.one_hot(target.clamp(min=0), probs.shape[1]).movedim(-1, 1)  # (B, K, *S)
    probs, onehot = probs * valid, onehot * valid
    dims = [0] + list(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)[1:]
    denom = (probs.sum(dims) + onehot.sum(dims))[1:]
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, dice_weight: float,
                      pull: float = 0.0) -> torch.Tensor:
    """Weighted CE (with the unannotated pixels' ``pull`` towards background) plus ``dice_weight``
    times the soft Dice loss (annotated pixels only)."""
    loss = weighted_cross_entropy(logits, target, weights, pull)
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, target)
    return loss
