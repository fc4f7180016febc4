"""Tiny diffusion configurations so the tests stay fast on two CPU cores."""

from __future__ import annotations

import pytest
import torch

from napari_unet.diffusion.config import DiffusionConfig, DiffusionUNetConfig

TINY_NET = DiffusionUNetConfig(base_width=8, channel_mults=(1, 2), attention_levels=(1,), head_width=8,
                               context_dim=16, groups=4)


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_net() -> DiffusionUNetConfig:
    return TINY_NET


@pytest.fixture()
def tiny_cfg() -> DiffusionConfig:
    return DiffusionConfig(model=TINY_NET, crop_size=32, batch_size=2, steps=3, time_limit=None,
                           device="cpu", low_precision=False, train_timesteps=100)
