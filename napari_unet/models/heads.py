"""What the network's output channels mean: the instance heads.

Every instance model keeps the three-class head (background / interior / boundary softmax,
trained with the border-weighted cross-entropy of the U-Net paper). The ``star`` head adds
StarDist's representation (Schmidt et al. 2018): one object-probability channel (the
normalised distance of a pixel to its object's edge) and ``n_rays`` channels with the
distance from the pixel to its object's edge along equally spaced rays. Instances then come
from polygon non-maximum suppression (``inference.star``) instead of the watershed.

The ``flow`` head adds Cellpose's representation (Stringer et al. 2021): one object-probability
channel (inside an object or not) and two flow channels (dy, dx), the unit vectors along which
each pixel travels to its object's centre (``data.flow_targets``); instances come from
following the flows (``inference.flows``). Layout: ``[0:3]`` class logits, ``[3]`` probability
logit, ``[4:6]`` flows in units of ``1 / FLOW_SCALE`` (from the half-resolution side branch,
as the star head's rays); the maps hold the flows divided by ``FLOW_SCALE``, clipped to [-1, 1].

Output channel layout of a star model: ``[0:3]`` class logits, ``[3]`` probability logit,
``[4:4 + n_rays]`` ray lengths in units of ``DIST_SCALE`` pixels. ``OutputMaps`` turns them
into the maps that tiling blends and post-processing reads: softmax classes, sigmoid
probability and ray lengths in pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_unet.config import INSTANCE_HEADS, InstanceHead  # noqa: F401  (re-exported)
FLOW_SCALE = 5.0  # flows are trained as 5 x the unit vectors, as Cellpose does (larger targets for the MSE)
DIST_SCALE = 10.0  # ray lengths are predicted in units of 10 px, so a unit-sized output is a typical nucleus radius


class OutputMaps(nn.Module):
    """Logits (B, K, *S) -> maps (B, K, *S): softmax over the first ``n_classes`` channels;
    for a star head also sigmoid probability and non-negative ray lengths in pixels, for a flow
    head sigmoid probability and flows in [-1, 1]."""

    def __init__(self, n_classes: int, star: bool = False, flow: bool = False) -> None:
        super().__init__()
        self.n_classes, self.star, self.flow = n_classes, star, flow

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        k = self.n_classes
        classes = torch.softmax(logits[:, :k], dim=1)  # (B, k, *S)
        if not (self.star or self.flow):
            return classes
        prob = torch.sigmoid(logits[:, k:k + 1])  # (B, 1, *S)
        if self.flow:
            flows = (logits[:, k + 1:k + 3] / FLOW_SCALE).clamp(-1.0, 1.0)  # (B, 2, *S) dy, dx
            return torch.cat([classes, prob, flows], dim=1)
        dist = torch.relu(logits[:, k + 1:]) * DIST_SCALE  # (B, R, *S) pixels
        return torch.cat([classes, prob, dist], dim=1)


def is_star(cfg) -> bool:
    """True for an instance model with the star-convex head (``cfg``: a ``TrainConfig``)."""
    return cfg.task == "instances" and cfg.instance_head == "star"


def is_flow(cfg) -> bool:
    """True for an instance model with the flow head (``cfg``: a ``TrainConfig``)."""
    return cfg.task == "instances" and cfg.instance_head == "flow"


def has_instance_maps(cfg) -> bool:
    """True for a head whose instances come from its own maps (star, flow) rather than the watershed."""
    return is_star(cfg) or is_flow(cfg)


def side_channels(cfg) -> int:
    """Outputs of the half-resolution side branch: the star head's rays, the flow head's flows."""
    return cfg.n_rays if is_star(cfg) else 2 if is_flow(cfg) else 0


def extra_channels(cfg) -> int:
    """Output channels after the class logits: 1 + n_rays for the star head, 3 for the flow head, else 0."""
    return 1 + side_channels(cfg) if has_instance_maps(cfg) else 0
