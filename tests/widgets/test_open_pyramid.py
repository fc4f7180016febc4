"""napari opens the plugin's OME-Zarr pyramids as multiscale layers."""

import numpy as np

from napari_unet.files.omezarr import write_ome_zarr


def test_napari_reads_a_label_pyramid_as_multiscale(make_napari_viewer, tmp_path):
    labels = np.random.default_rng(0).integers(0, 9, (300, 260)).astype(np.uint32)
    path = write_ome_zarr(tmp_path / "cells.ome.zarr", labels, labels=True, chunk=64, min_size=64)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari", layer_type="labels")
    assert layer.multiscale and [tuple(level.shape) for level in layer.data] == [(300, 260), (150, 130), (75, 65), (38, 33)]
    assert np.array_equal(np.asarray(layer.data[1]), labels[::2, ::2])
