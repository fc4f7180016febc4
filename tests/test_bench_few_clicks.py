"""The simulated annotator of bench/bench_few_clicks.py: what it paints (no data, no training)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import bench_module


@pytest.fixture(scope="module")
def fc():
    yield from bench_module("bench_few_clicks")


def discs(shape=(64, 80), centres=((12, 12), (12, 40), (40, 20), (44, 60), (20, 66)), radius=5) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    gt = np.zeros(shape, np.uint16)
    for i, (y, x) in enumerate(centres, start=1):
        gt[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = 10 * i  # ids need not be 1..N
    return gt


def test_paint_objects_ids_ring_and_nothing_else(fc):
    gt = discs()
    order = fc.random_order(gt, seed=3)
    assert sorted(order) == [10, 20, 30, 40, 50]
    k = 3
    mask = fc.paint_objects(gt, order[:k])
    for new, obj in enumerate(order[:k], start=2):  # K objects get ids 2..K+1, whole
        assert np.array_equal(mask == new, gt == obj)
    assert set(np.unique(mask)) == {0, 1, *range(2, k + 2)}
    assert not np.any((mask == 1) & (gt > 0))  # the background stroke never covers an object
    assert not np.any(np.isin(gt, order[k:]) & (mask > 0))  # unpainted objects stay unannotated
    dist = np.min([fc.ndi.distance_transform_edt(gt != obj) for obj in order[:k]], axis=0)
    ring = (dist >= fc.RING[0]) & (dist <= fc.RING[1]) & (gt == 0)
    assert np.array_equal(mask == 1, ring)  # exactly the 2..5 px rings, nothing else is background


def test_ring_is_clipped_at_the_image_edge(fc):
    gt = discs(centres=((3, 3),), radius=2)
    mask = fc.paint_objects(gt, [10])
    assert mask[0, 8] == 1 and mask[0, 12] == 0


def test_naive_mask_is_a_plain_instance_mask(fc):
    gt = discs()
    mask = fc.paint_naive(gt, [30, 10])
    assert set(np.unique(mask)) == {0, 1, 2}
    assert np.array_equal(mask == 1, gt == 30) and np.array_equal(mask == 2, gt == 10)


def test_region_paints_every_object_touching_the_quarter(fc):
    gt = discs()
    box = fc.quarter(gt.shape)  # rows 0..31, cols 0..39: discs 10 (inside) and 20 (crossing the edge)
    mask = fc.paint_region(gt, box)
    assert np.array_equal(mask >= 2, np.isin(gt, [10, 20]))  # painted whole, also beyond the box
    assert len(np.unique(mask[mask >= 2])) == 2
    inside = np.zeros(gt.shape, bool)
    inside[box] = True
    assert np.array_equal(mask == 1, inside & (gt == 0))
    assert not np.any(mask[~inside & ~np.isin(gt, [10, 20])])


def test_uncertainty_order_and_conditions(fc):
    gt = discs()
    score = np.zeros(gt.shape, np.float32)
    score[gt == 40] = 0.9
    score[gt == 20] = 0.5
    assert fc.ranked_order(gt, score)[:2] == [40, 20]
    order = fc.random_order(gt, seed=0)
    assert fc.mask_for("K=2", gt, order)[1] == "partial"
    assert fc.mask_for("naive-10", gt, order)[1] == "instances"
    full, task = fc.mask_for("full", gt, order)
    assert task == "instances" and np.array_equal(full, gt)
    mask, _ = fc.mask_for("K=50", gt, order)  # more asked than there are: all painted
    assert fc.painted(mask, "partial")[0] == 5


def test_magnified_doubles_and_crops(fc):
    image = np.arange(300 * 400, dtype=np.uint32).reshape(300, 400) % 256
    gt = np.zeros((300, 400), np.uint16)
    gt[150:160, 200:210] = 7
    big, big_gt = fc.magnified(image.astype(np.uint8), gt)
    assert big.shape == big_gt.shape == fc.MAX_2X and big.dtype == np.uint8
    assert (big_gt == 7).sum() == 400  # nearest: a 10x10 object becomes 20x20
