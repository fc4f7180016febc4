"""bench/bench_3d.py's helpers: stitching 2D labels into 3D objects, the error breakdown, a real volume's halves (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import bench_module


@pytest.fixture(scope="module")
def b3():
    yield from bench_module("bench_3d")


def test_consecutive_keeps_objects(b3):
    labels = np.array([[0, 7, 7], [3, 0, 12]])
    assert b3.consecutive(labels).tolist() == [[0, 2, 2], [1, 0, 3]]
    assert b3.consecutive(np.array([[5, 5]])).tolist() == [[1, 1]]


def test_stitch_links_overlapping_objects_and_splits_the_rest(b3):
    planes = np.zeros((3, 10, 10), np.uint16)
    planes[0, 1:5, 1:5] = 4          # object A
    planes[1, 1:5, 1:6] = 1          # A again (IoU 16/20)
    planes[1, 6:9, 6:9] = 2          # new object B
    planes[2, 1:3, 1:3] = 9          # touches A with IoU 4/20: a new object at 0.5, A at 0.1
    planes[2, 6:9, 6:9] = 3          # B again
    at_half = b3.stitch_planes(planes, 0.5)
    assert at_half[0, 2, 2] == at_half[1, 2, 2] != at_half[2, 2, 2]
    assert at_half[1, 7, 7] == at_half[2, 7, 7] != at_half[1, 2, 2]
    assert len(np.unique(at_half[at_half > 0])) == 3 and at_half.max() == 3
    low = b3.stitch_planes(planes, 0.1)
    assert low[0, 2, 2] == low[1, 2, 2] == low[2, 2, 2]
    assert low.max() == 2


def test_stitch_skips_empty_planes_as_a_break(b3):
    planes = np.zeros((3, 4, 4), np.uint16)
    planes[0, :2, :2] = 1
    planes[2, :2, :2] = 1
    out = b3.stitch_planes(planes)
    assert out[0, 0, 0] == 1 and out[2, 0, 0] == 2


def test_stitch_over_the_smaller_area_joins_a_cap(b3):
    planes = np.zeros((2, 12, 12), np.uint16)
    planes[0, 2:10, 2:10] = 1        # a wide section
    planes[1, 5:7, 5:7] = 1          # the cap: IoU 4/64, all of it inside the section
    assert b3.stitch_planes(planes, 0.5).max() == 2
    assert b3.stitch_planes(planes, 0.7, "smaller").max() == 1


def test_error_breakdown_names_each_kind_of_error(b3):
    truth = np.zeros((4, 20, 40), np.uint16)
    truth[:, 2:8, 2:8] = 1  # matched
    truth[:, 2:8, 10:16], truth[:, 2:8, 16:22] = 2, 3  # merged into one predicted object
    truth[:, 10:18, 2:18] = 4  # split in two
    truth[:, 12:16, 30:34] = 5  # missed
    pred = np.zeros_like(truth)
    pred[:, 2:8, 2:8] = 1
    pred[:, 2:8, 10:22] = 2
    pred[:, 10:18, 2:10], pred[:, 10:18, 10:18] = 3, 4
    pred[:, 0:2, 36:40] = 5  # matches nothing
    assert b3.error_breakdown([(pred, truth)]) == {"matched": 1, "merged": 2, "split": 1, "missed": 1, "false": 4}


def test_volume_halves_train_on_top_and_score_on_bottom(b3, tmp_path):
    from napari_unet.files.io import read_mask, write_image

    labels = np.zeros((6, 40, 30), np.uint16)
    labels[:, 5:12, 5:12], labels[:, 25:35, 10:20] = 1, 2
    write_image(tmp_path / "img.tif", (labels * 100).astype(np.uint16))
    write_image(tmp_path / "lab.tif", labels)
    b3.write_halves(tmp_path / "out", tmp_path / "img.tif", tmp_path / "lab.tif")
    top, bottom = read_mask(tmp_path / "out/train/masks/v0.tif"), read_mask(tmp_path / "out/test/masks/v0.tif")
    assert top.shape == bottom.shape == (6, 20, 30)
    assert np.unique(top).tolist() == [0, 1] and np.unique(bottom).tolist() == [0, 1]
