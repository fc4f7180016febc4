"""Synthetic pairs in a project folder: saved apart from the real samples, restored with their origin."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet.errors import UserError
from napari_unet.files.project import Project


def _project() -> Project:
    rng = np.random.default_rng(0)
    project = Project()
    project.add("real", rng.integers(0, 255, (40, 50), dtype=np.uint8), np.eye(40, 50, dtype=np.uint16))
    return project


def test_synthetic_pairs_roundtrip_with_origin(tmp_path):
    project = _project()
    image = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    mask = np.zeros((64, 64), np.uint16)
    mask[10:20, 10:20] = 1
    origin = {"prompt": "auto masks", "tags": ["dense"], "seed": 7, "guidance": 2.0, "steps": 50}
    first = project.add_synthetic(image, mask, origin)
    second = project.add_synthetic(image[::-1], mask[::-1], {"seed": 8})
    assert (first, second) == ("synthetic_0000", "synthetic_0001")
    project.save(tmp_path)

    assert (tmp_path / "synthetic" / "images" / "synthetic_0000.tif").is_file()
    assert (tmp_path / "synthetic" / "masks" / "synthetic_0001.tif").is_file()
    meta = json.loads((tmp_path / "project.json").read_text())
    assert [e["name"] for e in meta["samples"]] == ["real"]  # synthetic pairs are no samples
    assert meta["synthetic"][0]["origin"] == origin

    loaded = Project.load(tmp_path)
    assert loaded.names() == ["real"] and len(loaded.pairs()) == 1  # what validation may draw from
    assert list(loaded.synthetic) == [first, second]
    assert loaded.synthetic[first].origin == origin
    (im0, m0), (im1, m1) = loaded.synthetic_pairs()
    assert np.array_equal(im0, image) and np.array_equal(m0, mask)
    assert np.array_equal(im1, image[::-1]) and np.array_equal(m1, mask[::-1])


def test_older_project_without_synthetic_loads(tmp_path):
    project = _project()
    project.save(tmp_path)
    meta = json.loads((tmp_path / "project.json").read_text())
    del meta["synthetic"]
    (tmp_path / "project.json").write_text(json.dumps(meta))
    assert Project.load(tmp_path).synthetic == {}


def test_missing_synthetic_file_and_bad_shape_are_user_errors(tmp_path):
    project = _project()
    with pytest.raises(UserError, match="does not match"):
        project.add_synthetic(np.zeros((32, 32), np.uint8), np.zeros((16, 16), np.uint16))
    name = project.add_synthetic(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint16))
    project.save(tmp_path)
    assert project.missing_files(tmp_path) == ([], [])
    (tmp_path / "synthetic" / "masks" / f"{name}.tif").unlink()
    assert project.missing_files(tmp_path) == ([], [name])
    with pytest.raises(UserError, match="synthetic pair"):
        Project.load(tmp_path)
