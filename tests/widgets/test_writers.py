"""Label-layer writers (npe2 contribution) and OME-Zarr round trips, without napari."""

from pathlib import Path

import numpy as np

from napari_unet.files.io import read_mask
from napari_unet.files.omezarr import open_ome_zarr
from napari_unet.widgets.writers import write_labels_ome_zarr, write_labels_tif


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
    assert commands["napari-unet.write_labels_tif"] == "napari_unet.widgets.writers:write_labels_tif"


def _no_space(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    import pytest

    from napari_unet.errors import OutputError

    old = _labels()
    write_labels_tif(str(tmp_path / "cells.tif"), old, {})
    write_labels_ome_zarr(str(tmp_path / "cells.ome.zarr"), old, {})
    new = old + 1
    monkeypatch.setattr("napari_unet.files.io.os.fsync", _no_space)  # the disk fills while the TIFF is flushed
    with pytest.raises(OutputError, match="disk is full"):
        write_labels_tif(str(tmp_path / "cells.tif"), new, {})
    monkeypatch.setattr("napari_unet.files.omezarr.build_pyramid", _no_space)  # ... or while the store is built
    with pytest.raises(OutputError, match="No space left"):
        write_labels_ome_zarr(str(tmp_path / "cells.ome.zarr"), new, {})
    assert np.array_equal(read_mask(tmp_path / "cells.tif"), old)
    assert np.array_equal(np.asarray(open_ome_zarr(tmp_path / "cells.ome.zarr")), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.ome.zarr", "cells.tif"]  # no temporaries


def test_rewriting_a_store_replaces_it_whole(tmp_path):
    """No level of the old pyramid survives next to the new one (the store is swapped, not merged)."""
    import zarr

    write_labels_ome_zarr(str(tmp_path / "cells.ome.zarr"), np.ones((1100, 1100), np.uint16), {})  # 2 levels
    assert len(zarr.open_group(str(tmp_path / "cells.ome.zarr"), mode="r").attrs["multiscales"][0]["datasets"]) == 2
    write_labels_ome_zarr(str(tmp_path / "cells.ome.zarr"), _labels(), {})
    assert np.array_equal(np.asarray(open_ome_zarr(tmp_path / "cells.ome.zarr")), _labels())
    assert sorted(p.name for p in (tmp_path / "cells.ome.zarr").iterdir() if not p.name.startswith(".")) == ["0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.ome.zarr"]
