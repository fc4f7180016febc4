"""What the network's output channels mean: the instance heads.

Every instance model keeps the three-class head (background / interior / boundary softmax,
trained with the border-weighted cross-entropy of the U-Net paper). The ``star`` head adds
StarDist's representation (Schmidt et al. 2018): one object-probability channel (the
normalised distance of a pixel to its object's edge) and ``n_rays`` channels with the
distance from the pixel to its object's edge along equally spaced rays. Instances then come
from polygon non-maximum suppression (``inference.star``) instead of the watershed.

Output channel layout of a star model: ``[0:3]`` class logits, ``[3]`` probability logit,
``[4:4 + n_rays]`` ray lengths in units of ``DIST_SCALE`` pixels. ``OutputMaps`` turns them
into the maps that tiling blends and post-processing reads: softmax classes, sigmoid
probability and ray lengths in pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_unet.config import INSTANCE_HEADS, InstanceHead  # noqa: F401  (re-exported)
DIST_SCALE = 10.0  # ray lengths are predicted in units of 10 px, so a unit-sized output is a typical nucleus radius


class OutputMaps(nn.Module):
    """Logits (B, K, *S) -> maps (B, K, *S): softmax over the first ``n_classes`` channels;
    for a star head also sigmoid probability and non-negative ray lengths in pixels."""

    def __init__(self, n_classes: int, star: bool = False) -> None:
        super().__init__()
        self.n_classes, self.star = n_classes, star

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        k = self.n_classes
        classes = torch.softmax(logits[:, :k], dim=1)  # (B, k, *S)
        if not self.star:
            return classes
        prob = torch.sigmoid(logits[:, k:k + 1])  # (B, 1, *S)
        dist = torch.relu(logits[:, k + 1:]) * DIST_SCALE  # (B, R, *S) pixels
        return torch.cat([classes, prob, dist], dim=1)


def is_star(cfg) -> bool:
    """True for an instance model with the star-convex head (``cfg``: a ``TrainConfig``)."""
    return cfg.task == "instances" and cfg.instance_head == "star"


def extra_channels(cfg) -> int:
    """Output channels after the class logits: 1 + n_rays for the star head, else 0."""
    return 1 + cfg.n_rays if is_star(cfg) else 0
