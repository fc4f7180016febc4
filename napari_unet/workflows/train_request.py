"""What a user asks a training run for, and the one ``TrainConfig`` it means.

The CLI fills a ``TrainRequest`` from its flags, the Train widget from its controls; both call
``train_config_for``. Every default is read from the config dataclasses, so a setting nobody
touched means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from napari_unet.arrays.layout import MAX_CHANNELS, array_layout
from napari_unet.config import SYNTHETIC_RATIO, AugmentConfig, LossConfig, TrainConfig, UNetConfig
from napari_unet.errors import UserError
from napari_unet.workflows.classes import task_and_classes


@dataclass(frozen=True)
class TrainRequest:
    """A training request in the user's terms (``task``: "instances" | "classes" | "sparse").

    None means "decide from the data / the dataclass default": ``n_classes`` from the masks,
    ``in_channels`` from the first image, ``depth``/``base_width`` from ``UNetConfig``, and the
    time limit ``TrainConfig.time_limit`` when neither epochs nor steps are given.
    """

    task: str = "instances"
    instance_head: str = TrainConfig.instance_head
    n_classes: int | None = None
    in_channels: int | None = None
    dims: int = UNetConfig.dims  # 2: images (stacks slice by slice); 3: volumes
    z_scale: float = TrainConfig.z_scale  # 3D: voxel depth / pixel width
    volume_scale: str | float = TrainConfig.volume_scale  # 3D: "auto", "off" or a y/x factor
    depth: int | None = None
    base_width: int | None = None
    time_limit: float | None = None
    epochs: int | None = None
    steps: int | None = None
    patch_size: int | tuple[int, ...] | None = TrainConfig.patch_size  # None: sized to the device (3D: and volumes)
    batch_size: int | None = TrainConfig.batch_size
    learning_rate: float = TrainConfig.learning_rate
    elastic: bool = AugmentConfig.elastic
    border_w0: float = LossConfig.border_w0
    border_sigma: float = LossConfig.border_sigma
    preview_every: float = TrainConfig.preview_every
    preview_mc_samples: int = TrainConfig.preview_mc_samples
    validate_every: float = TrainConfig.validate_every
    device: str = TrainConfig.device
    seed: int = TrainConfig.seed
    threads: int | None = TrainConfig.threads
    checkpoint_every: float | None = TrainConfig.checkpoint_every
    synthetic: bool = False  # synthetic pairs are mixed in (then ``synthetic_ratio`` applies)
    synthetic_ratio: float = SYNTHETIC_RATIO


def input_channels(images: Sequence[np.ndarray], dims: int = 2) -> int:
    """Network input channels for training images: the first image's channel count."""
    if not images:
        raise UserError("no training images")
    return array_layout(np.shape(images[0]), dims=dims).n_channels


def train_config_for(request: TrainRequest, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> TrainConfig:
    """The ``TrainConfig`` for ``request`` on these training images and masks (``UserError`` if invalid)."""
    r = request
    if r.time_limit is not None and r.time_limit <= 0:
        raise UserError("the time limit must be positive")
    from napari_unet import heads  # here: the heads import torch, and the widgets import this module

    heads.get(r.instance_head)  # UserError for an unknown head
    if r.synthetic and not 0 <= r.synthetic_ratio < 1:
        raise UserError("the synthetic share must be at least 0 and below 1")
    if r.patch_size is not None and not np.isscalar(r.patch_size) and len(r.patch_size) != r.dims:
        raise UserError(f"a {r.dims}D model needs {r.dims} patch extents, got {len(r.patch_size)}")
    classes = task_and_classes(masks, r.task, r.n_classes)
    heads.check_head_dims(classes.task, r.instance_head, r.dims)
    in_channels = r.in_channels if r.in_channels is not None else input_channels(images, r.dims)
    if not 1 <= in_channels <= MAX_CHANNELS:
        raise UserError(f"input channels must be between 1 and {MAX_CHANNELS}, not {in_channels}")
    default = UNetConfig()
    model = UNetConfig(in_channels=in_channels, dims=r.dims,
                       depth=default.depth if r.depth is None else r.depth,
                       base_width=default.base_width if r.base_width is None else r.base_width)
    time_limit = r.time_limit
    if time_limit is None and r.epochs is None and r.steps is None:
        time_limit = TrainConfig.time_limit
    return TrainConfig(
        task=classes.task, sparse=classes.sparse, n_classes=classes.n_classes, instance_head=r.instance_head,
        model=model, augment=AugmentConfig(elastic=r.elastic),
        loss=LossConfig(border_w0=r.border_w0, border_sigma=r.border_sigma),
        patch_size=r.patch_size, batch_size=r.batch_size, learning_rate=r.learning_rate,
        epochs=r.epochs, steps=r.steps, time_limit=time_limit, validate_every=r.validate_every,
        preview_every=r.preview_every, preview_mc_samples=r.preview_mc_samples, device=r.device, seed=r.seed,
        threads=r.threads, checkpoint_every=r.checkpoint_every, z_scale=r.z_scale,
        volume_scale=r.volume_scale, synthetic_ratio=r.synthetic_ratio if r.synthetic else 0.0)
