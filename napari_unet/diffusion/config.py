"""Configuration of the mask-conditioned diffusion model (network, noise process, training, sampling).

Plain frozen dataclasses, JSON-ready through ``napari_unet.config.to_dict`` and this module's
``diffusion_config_from_dict``; a diffusion model folder carries its ``DiffusionConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from napari_unet.config import from_dict, setting


@dataclass(frozen=True)
class DiffusionUNetConfig:
    """Architecture of the denoising U-Net (kept small by default for CPUs)."""

    image_channels: int = 1  # channels of the generated image
    mask_channels: int = 3  # prompt channels concatenated to the input: foreground, boundary, present
    base_width: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level
    blocks_per_level: int = 1
    attention_levels: tuple[int, ...] = (2,)  # levels (0 = full resolution) with self+cross attention
    head_width: int = 32  # channels per attention head
    context_dim: int = 64  # width of the prompt tokens the cross-attention reads
    dropout: float = 0.0
    groups: int = 8  # GroupNorm groups


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything a diffusion training run needs besides the data."""

    model: DiffusionUNetConfig = field(default_factory=DiffusionUNetConfig)
    schedule: Literal["linear", "cosine"] = "cosine"
    prediction: Literal["epsilon", "v"] = "v"
    train_timesteps: int = 1000
    crop_size: int = 64  # training crops (64-128 on CPU, larger on GPU)
    batch_size: int = 8
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_drop: float = 0.1  # chance of dropping mask and tags together (classifier-free guidance)
    unannotated_share: float = 0.5  # share of crops from images without masks, when some are given
    tags: tuple[str, ...] = ()  # vocabulary of style tags; filled from the training data
    max_tags: int = 4  # tag tokens per image (more are cut)
    steps: int | None = None
    time_limit: float | None = 600.0  # seconds; None = no limit
    device: str = setting("device", "auto")
    seed: int = 0
    threads: int | None = None
    low_precision: bool | None = None  # bf16 autocast on CPU / AMP on CUDA; None = auto
    percentiles: tuple[float, float] = (1.0, 99.8)


@dataclass(frozen=True)
class SampleConfig:
    """How to draw synthetic images from a trained diffusion model."""

    steps: int = 50  # DDIM steps
    guidance: float = 2.0  # classifier-free guidance scale (1 = conditional only, no extra pass)
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic given the initial noise)
    seed: int = 0
    batch_size: int = 4
    device: str = setting("device", "auto")
    threads: int | None = None
    low_precision: bool | None = None


def diffusion_config_from_dict(data: dict[str, Any]) -> DiffusionConfig:
    """Rebuild a ``DiffusionConfig`` (with its nested network config) from ``to_dict`` output."""
    data = dict(data)
    if isinstance(data.get("model"), dict):
        data["model"] = from_dict(DiffusionUNetConfig, data["model"])
    return from_dict(DiffusionConfig, data)
