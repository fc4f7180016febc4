"""OME-Zarr resolution pyramids: level shapes, NGFF 0.4 metadata, subsampled labels, averaged
images, built block by block."""

import numpy as np
import zarr

from napari_unet.files import omezarr
from napari_unet.files.omezarr import level_shapes, open_ome_zarr, open_pyramid, write_ome_zarr


def _datasets(path):
    return zarr.open_group(str(path), mode="r").attrs["multiscales"][0]["datasets"]


def test_levels_halve_y_x_until_the_smaller_side_reaches_the_minimum():
    assert level_shapes((203, 251), 40) == [(203, 251), (102, 126), (51, 63), (26, 32)]
    assert level_shapes((3, 5, 3000, 2100), 1024) == [(3, 5, 3000, 2100), (3, 5, 1500, 1050), (3, 5, 750, 525)]
    assert level_shapes((512, 4096), 1024) == [(512, 4096)]  # small side already under the minimum


def test_label_pyramid_subsamples_and_declares_its_scales(tmp_path):
    labels = np.random.default_rng(0).integers(0, 500, (203, 251)).astype(np.uint32)
    path = write_ome_zarr(tmp_path / "cells.ome.zarr", labels, labels=True, chunk=64, scale=(0.5, 0.25), min_size=40)
    levels = open_pyramid(path)
    assert [a.shape for a in levels] == [(203, 251), (102, 126), (51, 63), (26, 32)]
    assert np.array_equal(levels[1][:], labels[::2, ::2])  # ids are picked, never averaged
    assert np.array_equal(levels[3][:], labels[::8, ::8])
    assert all(a.dtype == np.uint32 for a in levels)
    datasets = _datasets(path)
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
    assert [d["coordinateTransformations"] for d in datasets] == [
        [{"type": "scale", "scale": [0.5 * 2**i, 0.25 * 2**i]}] for i in range(4)]
    attrs = zarr.open_group(str(path), mode="r").attrs
    assert attrs["multiscales"][0]["version"] == "0.4" and "image-label" in attrs
    assert np.array_equal(open_ome_zarr(path)[:], labels)  # readers of level 0 are unaffected


def test_image_pyramid_averages_2x2_cells_and_keeps_channels(tmp_path):
    probs = np.random.default_rng(1).random((3, 101, 130)).astype(np.float32)
    path = write_ome_zarr(tmp_path / "p.ome.zarr", probs, ["c", "y", "x"], chunk=32, min_size=50)
    first = open_pyramid(path)[1][:]
    assert first.shape == (3, 51, 65)
    expected = probs[:, :100, :130].reshape(3, 50, 2, 65, 2).mean(axis=(2, 4))
    assert np.allclose(first[:, :50], expected, atol=1e-6)
    assert np.allclose(first[:, 50], probs[:, 100].reshape(3, 65, 2).mean(-1), atol=1e-6)  # odd edge: its 2 pixels
    second = _datasets(path)[1]["coordinateTransformations"]
    assert second == [{"type": "scale", "scale": [1.0, 2.0, 2.0]},
                      {"type": "translation", "translation": [0.0, 0.5, 0.5]}]  # pixel centres of the means


def test_pyramid_reads_the_level_above_in_bounded_blocks(tmp_path, monkeypatch):
    seen = []
    halve = omezarr.halve
    monkeypatch.setattr(omezarr, "halve", lambda block, how: seen.append(block.shape) or halve(block, how))
    write_ome_zarr(tmp_path / "l.ome.zarr", np.ones((300, 520), np.uint16), labels=True, chunk=64, min_size=32)
    assert len(seen) > 10 and max(h * w for h, w in seen) <= 128 * 128  # never a whole level in memory
