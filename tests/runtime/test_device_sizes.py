"""Batch and patch size sized to the device when left unset (fake CUDA cards, so it runs on the CPU)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_unet.config import (CPU_SIZES, CPU_VOLUME_SIZES, CUDA_VOLUME_SIZES, MAX_VOLUME_BATCH, MPS_SIZES,
                                TrainConfig, UNetConfig)
from napari_unet.arrays.volumes import patch_shape
from napari_unet.cli import drive
from napari_unet.runtime import device as device_module
from napari_unet.runtime.device import default_sizes, describe, with_device_sizes
from napari_unet.runtime.sizes import describe_sizes, fit_extent, volume_patch
from napari_unet.training.engine import Trainer

CUDA = torch.device("cuda")


def _card(monkeypatch, gigabytes: float, name: str = "Fake GPU") -> None:
    props = SimpleNamespace(name=name, total_memory=int(gigabytes * 1e9))
    monkeypatch.setattr(device_module.torch.cuda, "get_device_properties", lambda _device=None: props)


@pytest.mark.parametrize("gigabytes, sizes", [(80, (32, 256)), (40, (32, 256)), (24, (16, 256)),
                                              (12, (8, 256)), (6, CPU_SIZES)])
def test_cuda_sizes_follow_the_card_memory(monkeypatch, gigabytes, sizes):
    _card(monkeypatch, gigabytes)
    assert default_sizes(CUDA) == sizes


VOLUMES = [(32, 96, 96)] * 6  # the 3D benchmark's volumes (bench/bench_3d.py)


def test_3d_patches_fit_the_volumes_and_follow_the_z_scale():
    side, budget = CPU_VOLUME_SIZES
    cpu = torch.device("cpu")
    batch, patch = default_sizes(cpu, 3, VOLUMES)
    assert patch == (32, side, side) and batch == max(budget // (32 * side * side), 1)  # not 8 x 128³
    assert default_sizes(cpu, 3, [(16, 96, 96)], z_scale=2.0)[1] == (16, side, side)  # side / z_scale planes
    assert default_sizes(cpu, 3, [(200, 400, 400)], z_scale=4.0)[1] == (16, side, side)
    batch, patch = default_sizes(cpu, 3, [(10, 40, 40), (12, 30, 44)])  # smaller than a patch: never padding
    assert patch == (12, 32, 32) and batch == min(budget // (12 * 32 * 32), MAX_VOLUME_BATCH)
    assert volume_patch(64, [(5, 9, 200)], 1.0, 4) == (5, 9, 64)  # under 2**depth: the extent itself
    assert [fit_extent(w, None, 16) for w in (4, 21, 24, 41)] == [16, 16, 32, 48]  # multiples of 2**depth
    assert describe_sizes(2, (16, 64, 64)) == "2 patches of 16 × 64 × 64"


def test_3d_sizes_on_a_gpu_follow_the_card_memory(monkeypatch):
    _card(monkeypatch, 80)
    gb, side, budget = CUDA_VOLUME_SIZES[0]
    batch, patch = default_sizes(CUDA, 3, [(256, 512, 512)])
    assert patch == (side, side, side) and batch == budget // side**3
    _card(monkeypatch, 6)  # under the smallest row: the CPU's sizes
    assert default_sizes(CUDA, 3, [(64, 512, 512)]) == default_sizes(torch.device("cpu"), 3, [(64, 512, 512)])


def test_a_3d_patch_the_user_sets_gets_the_batch_that_fills_the_budget():
    volume = UNetConfig(dims=3)
    cpu = torch.device("cpu")
    mine = with_device_sizes(TrainConfig(model=volume, patch_size=(16, 32, 32)), cpu, VOLUMES)
    assert mine.patch_size == (16, 32, 32) and mine.batch_size == min(CPU_VOLUME_SIZES[1] // (16 * 32 * 32),
                                                                      MAX_VOLUME_BATCH)
    side = with_device_sizes(TrainConfig(model=volume, patch_size=32, batch_size=3), cpu, VOLUMES)
    assert (side.batch_size, patch_shape(side)) == (3, (32, 32, 32))  # an int is still the y/x side
    auto = with_device_sizes(TrainConfig(model=volume, z_scale=2.0), cpu, VOLUMES)
    assert patch_shape(auto) == auto.patch_size == (32, 64, 64)  # 64 / 2 planes


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


def test_unset_3d_sizes_train_fit_the_volumes_and_are_stored(tmp_path):
    """A 3D run with unset sizes trains on patches no larger than its volumes, in bf16 where the CPU
    has it (the 2-plane level of a 16-plane patch once turned the weights to NaN), and the model
    folder stores the (z, y, x) extents; an old folder's int patch size still loads."""
    import json

    from napari_unet.models.bundle import load_bundle, save_bundle
    from napari_unet.data.samples import ball_volume

    rng = np.random.default_rng(0)
    pairs = [ball_volume(rng, (16, 40, 40), 4) for _ in range(2)]
    cfg = TrainConfig(model=UNetConfig(dims=3, depth=3, base_width=4), steps=3, time_limit=None, preview_every=0,
                      device="cpu", threads=1, validation_fraction=0.0)
    bundle = drive(Trainer(pairs, cfg).run(), "t", quiet=True)
    assert bundle.config.patch_size == (16, 40, 40)  # the volumes' extents, under the 64 side
    assert bundle.config.batch_size == min(CPU_VOLUME_SIZES[1] // (16 * 40 * 40), MAX_VOLUME_BATCH)
    assert all(torch.isfinite(p).all() for p in bundle.net.parameters())
    save_bundle(bundle, tmp_path / "m")
    assert load_bundle(tmp_path / "m").config.patch_size == (16, 40, 40)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["config"]["patch_size"] = 24  # a folder saved before per-axis extents
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    assert patch_shape(load_bundle(tmp_path / "m").config) == (24, 24, 24)


def test_3d_prediction_tiles_are_sized_by_memory():
    """The 3D tile is the largest whose input (tile + halo per side, clipped to the volume) fits the
    forward budget: smaller with a smaller budget, a wider network or a larger halo; larger on a thin
    volume; one pooling cell at least; a CUDA card's budget follows its free memory."""
    from napari_unet.config import CUDA_VOLUME_FORWARD_SHARE
    from napari_unet.runtime.sizes import forward_bytes_per_voxel, volume_forward_budget, volume_tile

    budget, per_voxel, big = volume_forward_budget("cpu"), forward_bytes_per_voxel(8), (256, 1024, 1024)
    tile = volume_tile(budget, per_voxel, 32, 16, big)
    assert tile % 16 == 0 and (tile + 64) ** 3 * per_voxel <= budget < (tile + 16 + 64) ** 3 * per_voxel
    assert volume_tile(budget / 4, per_voxel, 32, 16, big) < tile
    assert volume_tile(budget, forward_bytes_per_voxel(16), 32, 16, big) < tile
    assert forward_bytes_per_voxel(8, low_precision=False) > per_voxel
    assert volume_tile(budget, per_voxel, 48, 16, big) < tile
    thin = volume_tile(budget, per_voxel, 32, 16, (32, 1024, 1024))
    assert thin > tile and 32 * (thin + 64) ** 2 * per_voxel <= budget
    assert volume_tile(budget, per_voxel, 96, 16, big) == 16  # the receptive-radius halo alone overflows it
    assert volume_tile(budget, per_voxel, 32, 16, (20, 40, 40)) == 256  # a small volume: one tile (the cap)
    assert volume_forward_budget("cuda", 40e9) == CUDA_VOLUME_FORWARD_SHARE * 40e9 > budget
