"""Label-layer writers (npe2 contribution) and OME-Zarr round trips, without napari."""

from pathlib import Path

import numpy as np

from napari_unet.io import read_mask
from napari_unet.omezarr import open_ome_zarr
from napari_unet.writers import write_labels_ome_zarr, write_labels_tif


def _labels() -> np.ndarray:
    labels = np.zeros((40, 50), np.int64)
    labels[5:15, 5:20], labels[20:30, 10:40] = 1, 300
    return labels


def test_write_labels_tif_round_trip(tmp_path):
    written = write_labels_tif(str(tmp_path / "cells"), _labels(), {})
    assert written == [str(tmp_path / "cells.tif")]
    back = read_mask(written[0])
    assert back.dtype == np.uint16 and np.array_equal(back, _labels())


def test_write_labels_ome_zarr_round_trip_with_scale(tmp_path):
    import zarr

    written = write_labels_ome_zarr(str(tmp_path / "cells.ome.zarr"), [_labels(), _labels()[::2, ::2]],
                                    {"scale": (0.5, 0.25)})
    path = Path(written[0])
    assert np.array_equal(np.asarray(open_ome_zarr(path)), _labels())
    attrs = zarr.open_group(str(path), mode="r").attrs
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.25]
    assert "image-label" in attrs and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_manifest_declares_label_writers():
    from npe2 import PluginManifest

    import napari_unet

    manifest = PluginManifest.from_file(Path(napari_unet.__file__).with_name("napari.yaml"))
    writers = {w.command: w for w in manifest.contributions.writers}
    assert set(writers) == {"napari-unet.write_labels_tif", "napari-unet.write_labels_ome_zarr"}
    assert all([str(t) for t in w.layer_types] == ["labels"] for w in writers.values())
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    assert commands["napari-unet.write_labels_tif"] == "napari_unet.writers:write_labels_tif"
