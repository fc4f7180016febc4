"""Pixel-wise weighted cross-entropy (the U-Net loss) and an optional soft Dice term.

Each instance head builds its own loss on these (``heads``: ``Head.loss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_unet.data.targets import IGNORE


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over annotated pixels of w(x) * CE(x).

    logits (B, K, *S), target (B, *S) int64 with ``IGNORE`` for unannotated pixels,
    weights (B, *S) float.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=IGNORE)  # (B, *S)
    valid = (target != IGNORE).sum().clamp(min=1)
    return (ce * weights).sum() / valid


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


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Weighted CE plus ``dice_weight`` times the soft Dice loss."""
    loss = weighted_cross_entropy(logits, target, weights)
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, target)
    return loss
