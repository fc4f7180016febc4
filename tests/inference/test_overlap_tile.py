"""Overlap-tile prediction agrees with whole-image prediction (same and valid networks, 2D and 3D)."""

import numpy as np
import pytest
import torch

from napari_unet.config import PredictConfig, UNetConfig
from napari_unet.inference.predict import predict_normalized, tile_geometry
from napari_unet.inference.tiling import iter_tiled, read_box, reflect_index, Slab, TileSpec, tile_starts
from napari_unet.models import UNet

torch.set_num_threads(2)


def _net(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_width=4, out_channels=3, **kw)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("padding, depth", [("valid", 2), ("same", 2), ("same", 3)])
def test_tiled_matches_whole_image_2d(padding, depth):
    net = _net(padding=padding, depth=depth)
    image = np.random.default_rng(0).random((1, 150, 203)).astype(np.float32)
    whole = predict_normalized(net, image, 3, PredictConfig(tile_size=512), None)
    tiled = predict_normalized(net, image, 3, PredictConfig(tile_size=48, overlap=16, batch_size=3), None)
    spec, _ = tile_geometry(net, PredictConfig(tile_size=48))
    assert whole.shape == tiled.shape == (3, 150, 203)
    assert np.allclose(whole.sum(0), 1, atol=1e-5)
    assert np.abs(whole - tiled).max() < 1e-4
    assert spec.tile < 150  # really tiled


def test_tiled_matches_whole_volume_3d():
    net = _net(padding="same", depth=2, dims=3)
    volume = np.random.default_rng(1).random((1, 20, 45, 38)).astype(np.float32)
    whole = predict_normalized(net, volume, 3, PredictConfig(tile_size=64), None)
    tiled = predict_normalized(net, volume, 3, PredictConfig(tile_size=16, overlap=4, batch_size=2), None)
    assert whole.shape == (3, 20, 45, 38) and np.abs(whole - tiled).max() < 1e-4


def test_valid_geometry_margin_and_alignment():
    net = _net(padding="valid", depth=4)
    spec, allowed = tile_geometry(net, PredictConfig(tile_size=388))
    assert spec.margin == 92 and spec.tile == 388 and spec.align == 16  # the paper's 572 -> 388
    assert allowed(100) >= 100 and all(s % 16 == 0 for s in tile_starts(2000, spec.tile, 64, 16))


def test_reflect_index_matches_numpy_reflect_padding():
    row = np.arange(7)
    padded = np.pad(row, (20, 25), mode="reflect")
    assert np.array_equal(row[reflect_index(np.arange(-20, 32), 7)], padded)
    image = np.random.default_rng(2).random((2, 9, 11)).astype(np.float32)
    ref = np.pad(image, ((0, 0), (5, 5), (3, 14)), mode="reflect")
    assert np.array_equal(read_box(image, (-5, -3), (14, 25)), ref)


def test_slabs_stream_in_order_and_cover_once():
    image = np.random.default_rng(3).random((1, 130, 70)).astype(np.float32)
    slabs = [s for s in iter_tiled(lambda b: b * 2, image, 1, TileSpec(32, 8)) if isinstance(s, Slab)]
    assert slabs[0].start == 0 and slabs[-1].stop == 130 and len(slabs) > 2
    assert all(a.stop == b.start for a, b in zip(slabs, slabs[1:]))
    out = np.concatenate([s.data for s in slabs], axis=1)
    assert np.allclose(out, image * 2, atol=1e-6)


def test_volume_blocks_cover_once_and_equal_the_band_tiling():
    """``iter_tiled_blocks`` (rows of tiles along z, then y) blends exactly as ``iter_tiled``:
    same and valid geometries, several channels, a volume smaller than one tile."""
    from napari_unet.inference.tiling import Block, iter_tiled_blocks, predict_tiled

    rng = np.random.default_rng(0)
    cases = [((1, 50, 37, 29), TileSpec(16, 4, context=4, align=4)), ((2, 33, 70, 20), TileSpec(16, 8)),
             ((1, 40, 40, 40), TileSpec(12, 4, margin=3, align=4)), ((1, 9, 9, 9), TileSpec(16, 4))]
    for shape, spec in cases:
        image = rng.random(shape).astype(np.float32)

        def fn(b):
            return np.concatenate([b * 2, b + 1], 1)

        out = np.zeros((2 * shape[0], *shape[1:]), np.float32)
        cover = np.zeros(shape[1:], int)
        for item in iter_tiled_blocks(fn, image, 2 * shape[0], spec):
            if isinstance(item, Block):
                out[(slice(None), *item.box)] = item.data
                cover[item.box] += 1
        ref = predict_tiled(fn, image, 2 * shape[0], spec.tile, spec.overlap, margin=spec.margin,
                            context=spec.context, align=spec.align)
        assert cover.min() == cover.max() == 1
        assert np.abs(out - ref).max() < 1e-5
