"""Batch and patch size sized to the device when left unset (fake CUDA cards, so it runs on the CPU)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_unet.config import CPU_SIZES, MPS_SIZES, TrainConfig, UNetConfig
from napari_unet.training import device as device_module
from napari_unet.training.device import default_sizes, describe, with_device_sizes
from napari_unet.training.engine import Trainer
from napari_unet.cli import drive

CUDA = torch.device("cuda")


def _card(monkeypatch, gigabytes: float, name: str = "Fake GPU") -> None:
    props = SimpleNamespace(name=name, total_memory=int(gigabytes * 1e9))
    monkeypatch.setattr(device_module.torch.cuda, "get_device_properties", lambda _device=None: props)


@pytest.mark.parametrize("gigabytes, sizes", [(80, (32, 256)), (40, (32, 256)), (24, (16, 256)),
                                              (12, (8, 256)), (6, CPU_SIZES)])
def test_cuda_sizes_follow_the_card_memory(monkeypatch, gigabytes, sizes):
    _card(monkeypatch, gigabytes)
    assert default_sizes(CUDA) == sizes
    assert default_sizes(CUDA, dims=3) == CPU_SIZES  # a 256³ patch would not fit


def test_cpu_and_mps_sizes_and_explicit_values_win(monkeypatch):
    assert default_sizes(torch.device("cpu")) == CPU_SIZES and default_sizes(torch.device("mps")) == MPS_SIZES
    _card(monkeypatch, 80)
    auto = with_device_sizes(TrainConfig(), CUDA)
    assert (auto.batch_size, auto.patch_size) == (32, 256)
    mine = with_device_sizes(TrainConfig(batch_size=4, patch_size=96), CUDA)
    assert (mine.batch_size, mine.patch_size) == (4, 96)
    half = with_device_sizes(TrainConfig(batch_size=4), CUDA)
    assert (half.batch_size, half.patch_size) == (4, 256)


def test_describe_shows_the_card_and_its_memory(monkeypatch):
    _card(monkeypatch, 79.6, "NVIDIA H100 80GB HBM3")
    assert describe(CUDA) == "CUDA: NVIDIA H100 80GB HBM3, 80 GB"
    assert describe(torch.device("cpu")).startswith("CPU (")


def test_an_unset_size_trains_with_the_cpu_default_and_is_recorded():
    mask = np.zeros((160, 160), np.uint16)
    mask[20:50, 30:60], mask[90:130, 80:120] = 1, 2
    image = ((mask > 0) * 0.7 + np.random.default_rng(0).random(mask.shape) * 0.3).astype(np.float32)
    cfg = replace(TrainConfig(), model=UNetConfig(depth=2, base_width=4), steps=1, time_limit=None,
                  preview_every=0, low_precision=False, device="cpu", threads=1)
    bundle = drive(Trainer([(image, mask)], cfg).run(), "t", quiet=True)
    assert (bundle.config.batch_size, bundle.config.patch_size) == CPU_SIZES  # the saved config holds numbers
    assert bundle.meta["training"]["batch_size"] == CPU_SIZES[0]
