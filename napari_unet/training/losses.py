"""Pixel-wise weighted cross-entropy (the U-Net loss) and an optional soft Dice term."""

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


def _classes_and_probability(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, prob: torch.Tensor,
                             n_classes: int, dice_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The class loss plus the BCE of the object probability (channel ``n_classes``) on annotated
    pixels, and the annotated-pixel mask (B, H, W) float."""
    loss = segmentation_loss(logits[:, :n_classes], target, weights, dice_weight)
    valid = (target != IGNORE).float()  # (B, H, W)
    bce = F.binary_cross_entropy_with_logits(logits[:, n_classes], prob, reduction="none")  # (B, H, W)
    return loss + (bce * valid).sum() / valid.sum().clamp(min=1), valid


def flow_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, prob: torch.Tensor,
              flows: torch.Tensor, n_classes: int, dice_weight: float = 0.0) -> torch.Tensor:
    """Border-weighted CE on the class channels + BCE on the object probability + half the mean
    squared error of the flows in ``FLOW_SCALE`` units (Cellpose's loss).

    logits (B, K + 3, H, W); target, weights, prob (B, H, W); flows (B, 2, H, W) unit vectors
    (0 on background). Unannotated pixels (``IGNORE``) count in none of the terms.
    """
    from napari_unet.models.heads import FLOW_SCALE

    logits = logits.float()
    loss, valid = _classes_and_probability(logits, target, weights, prob, n_classes, dice_weight)
    sq = (logits[:, n_classes + 1:n_classes + 3] - FLOW_SCALE * flows) ** 2  # (B, 2, H, W)
    return loss + 0.5 * (sq.mean(dim=1) * valid).sum() / valid.sum().clamp(min=1)


def star_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, prob: torch.Tensor,
              dist: torch.Tensor, n_classes: int, dice_weight: float = 0.0, grid: int = 2) -> torch.Tensor:
    """Border-weighted CE on the class channels + BCE on the object probability + the
    probability-weighted L1 of the ray lengths (StarDist's loss, in ``DIST_SCALE`` units).

    logits (B, K + 1 + R, H, W); target, weights, prob (B, H, W); dist (B, R, H/grid, W/grid)
    in pixels. Unannotated pixels (``IGNORE``) count in none of the terms.
    """
    from napari_unet.models.heads import DIST_SCALE

    logits = logits.float()
    loss, valid = _classes_and_probability(logits, target, weights, prob, n_classes, dice_weight)
    rays = logits[:, n_classes + 1:, ::grid, ::grid]  # (B, R, h, w) in DIST_SCALE units
    mask = (prob * valid)[:, None, ::grid, ::grid]  # (B, 1, h, w): StarDist weights rays by the probability
    l1 = (rays - dist / DIST_SCALE).abs().mean(dim=1, keepdim=True)  # (B, 1, h, w)
    return loss + (l1 * mask).sum() / mask.sum().clamp(min=1e-6)
