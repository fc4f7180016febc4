"""Tests for napari_unet.metrics: hand-made cases with known answers plus property tests."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.metrics import (
    DEFAULT_THRESHOLDS,
    ap50,
    contingency,
    evaluate_instances,
    evaluate_semantic,
    instance_scores,
    match_instances,
    rand_error,
    write_per_image_csv,
)


def _square(shape: tuple[int, int], y: int, x: int, s: int, label: int = 1,
            out: np.ndarray | None = None) -> np.ndarray:
    """Draw an ``s``x``s`` square of ``label`` at (y, x)."""
    img = np.zeros(shape, np.uint16) if out is None else out
    img[y:y + s, x:x + s] = label
    return img


def test_metrics_does_not_import_torch() -> None:
    code = "import sys, napari_unet.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_identical_labels_ap_one() -> None:
    gt = np.zeros((32, 32), np.uint16)
    _square(gt.shape, 2, 2, 5, 1, gt)
    _square(gt.shape, 10, 10, 8, 2, gt)
    _square(gt.shape, 20, 3, 4, 3, gt)
    s = instance_scores(gt, gt)
    assert np.all(s["ap"] == 1.0) and np.all(s["tp"] == 3)
    assert s["dice"] == 1.0 and s["pixel_error"] == 0.0
    assert ap50(gt, gt) == 1.0


def test_shifted_object_exact_iou() -> None:
    gt = _square((20, 20), 0, 0, 10)
    pred = _square((20, 20), 0, 2, 10)          # overlap 10x8 = 80, union 120
    iou = match_instances(pred, gt)
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(80 / 120)
    s = instance_scores(pred, gt)
    # matched for t < 2/3: 0.50, 0.55, 0.60, 0.65; unmatched from 0.70 on
    assert list(s["tp"]) == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert list(s["fp"]) == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert list(s["fn"]) == list(s["fp"])
    assert s["ap"][4] == pytest.approx(0.0)
    assert s["dice"] == pytest.approx(160 / 200)
    assert s["pixel_error"] == pytest.approx(40 / 400)


def test_iou_exactly_half_is_not_a_match() -> None:
    gt = _square((10, 10), 0, 0, 4)
    pred = np.zeros((10, 10), np.uint16)
    pred[0:4, 0:2] = 1                           # IoU = 8 / 16 = 0.5
    assert match_instances(pred, gt)[0, 0] == pytest.approx(0.5)
    assert ap50(pred, gt) == 0.0


def test_split_and_merge() -> None:
    gt = _square((20, 20), 0, 0, 10)
    split = np.zeros((20, 20), np.uint16)
    split[0:10, 0:4] = 1                         # IoU 0.4
    split[0:10, 4:10] = 2                        # IoU 0.6
    s = instance_scores(split, gt, thresholds=(0.5,))
    assert (s["tp"][0], s["fp"][0], s["fn"][0]) == (1, 1, 0)
    assert s["ap"][0] == pytest.approx(0.5)
    # the reverse is a merge: one prediction over two true objects
    m = instance_scores(gt, split, thresholds=(0.5,))
    assert (m["tp"][0], m["fp"][0], m["fn"][0]) == (1, 0, 1)
    # below 0.5 both halves overlap the same object but it can only be matched once
    low = instance_scores(split, gt, thresholds=(0.3,))
    assert low["tp"][0] == 1


def test_low_threshold_uses_maximum_matching() -> None:
    # pred 2 overlaps gt a (IoU 0.2) and b (0.5), pred 1 only a (0.5): a matching uses both.
    gt = np.zeros((4, 12), np.uint16)
    gt[:, 0:6] = 5
    gt[:, 6:12] = 9
    pred = np.zeros_like(gt)
    pred[:, 0:3] = 1
    pred[:, 4:10] = 2
    iou = match_instances(pred, gt)
    assert iou[0, 0] == pytest.approx(0.5) and iou[0, 1] == 0
    assert iou[1, 0] == pytest.approx(8 / 40) and iou[1, 1] == pytest.approx(16 / 32)
    assert instance_scores(pred, gt, thresholds=(0.15,))["tp"][0] == 2
    assert instance_scores(pred, gt, thresholds=(0.5,))["tp"][0] == 0


def test_empty_cases() -> None:
    gt = _square((10, 10), 2, 2, 3)
    empty = np.zeros((10, 10), np.uint16)
    s = instance_scores(empty, gt)
    assert np.all(s["tp"] == 0) and np.all(s["fn"] == 1) and np.all(s["ap"] == 0)
    s = instance_scores(gt, empty)
    assert np.all(s["fp"] == 1) and np.all(s["ap"] == 0)
    both = instance_scores(empty, empty)
    assert np.all(both["ap"] == 1.0) and both["dice"] == 1.0 and both["pixel_error"] == 0
    assert match_instances(empty, empty).shape == (0, 0)
    assert match_instances(gt, empty).shape == (1, 0)


def test_non_consecutive_and_large_ids() -> None:
    gt = np.zeros((16, 16), np.uint32)
    _square(gt.shape, 0, 0, 4, 7, gt)
    _square(gt.shape, 8, 8, 4, 300, gt)
    pred = np.zeros((16, 16), np.int64)
    _square(pred.shape, 8, 8, 4, 10**9, pred)
    _square(pred.shape, 0, 0, 4, 3, pred)
    iou, pid, gid = match_instances(pred, gt, return_ids=True)
    assert list(pid) == [3, 10**9] and list(gid) == [7, 300]
    assert np.array_equal(iou, np.eye(2))
    assert ap50(pred, gt) == 1.0


def test_shape_mismatch_and_bad_dtype() -> None:
    with pytest.raises(ValueError):
        match_instances(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError):
        match_instances(np.full((3, 3), 0.5), np.zeros((3, 3), int))


def test_pooling() -> None:
    gt1 = np.zeros((20, 20), np.uint16)
    _square(gt1.shape, 0, 0, 5, 1, gt1)
    _square(gt1.shape, 10, 10, 5, 2, gt1)
    pred1 = gt1.copy()                           # 2 TP
    gt2 = _square((20, 20), 0, 0, 5)
    pred2 = _square((20, 20), 10, 10, 5)         # 1 FP, 1 FN
    res = evaluate_instances([(pred1, gt1), (pred2, gt2)], names=["a", "b"])
    assert res["ap50"] == pytest.approx(2 / 4)   # pooled, not the mean of 1.0 and 0.0 ...
    assert res["map"] == pytest.approx(0.5)
    assert (res["tp"], res["fp"], res["fn"]) == (2, 1, 1)
    assert res["n_images"] == 2 and res["n_gt"] == 3 and res["n_pred"] == 3
    assert res["dice"] == pytest.approx(2 * 50 / (75 + 75))
    assert res["pixel_error"] == pytest.approx(50 / 800)
    rows = res["per_image"]
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[0]["ap50"] == 1.0 and rows[1]["ap50"] == 0.0 and rows[1]["fp50"] == 1
    # ... and pooling differs from averaging when object counts differ
    res2 = evaluate_instances([(pred1, gt1), (np.zeros_like(gt2), gt2)])
    assert res2["ap50"] == pytest.approx(2 / 3)
    assert set(DEFAULT_THRESHOLDS) == {0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95}


def test_per_image_csv(tmp_path) -> None:
    gt = _square((8, 8), 0, 0, 3)
    res = evaluate_instances([(gt, gt)], names=["x"])
    path = tmp_path / "scores.csv"
    write_per_image_csv(res["per_image"], path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("name,") and lines[1].startswith("x,")


def test_contingency_counts() -> None:
    a = np.array([[0, 1], [1, 2]])
    b = np.array([[5, 5], [0, 0]])
    ids_a, ids_b, r, c, n = contingency(a, b)
    table = {(int(ids_a[i]), int(ids_b[j])): int(k) for i, j, k in zip(r, c, n)}
    assert table == {(0, 5): 1, (1, 5): 1, (1, 0): 1, (2, 0): 1}


def test_semantic_tiny_case() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0]])
    res = evaluate_semantic([(pred, gt)], rand=False)
    assert res["pixel_error"] == pytest.approx(2 / 8)
    # class 1: tp 3, fp 1, fn 1 -> dice 6/8, iou 3/5; class 0: tp 3, fp 1, fn 1
    assert res["dice_per_class"] == pytest.approx([0.75, 0.75])
    assert res["mean_dice"] == pytest.approx(0.75) and res["mean_iou"] == pytest.approx(0.6)
    assert res["confusion"].tolist() == [[3, 1], [1, 3]]
    multi = evaluate_semantic([(np.array([[0, 2]]), np.array([[0, 1]]))], n_classes=3)
    assert multi["pixel_error"] == 0.5 and multi["iou_per_class"][1] == 0.0
    assert multi["dice_per_class"][2] == 0.0


def test_semantic_255_masks_and_rand() -> None:
    gt = np.full((9, 9), 255, np.uint8)
    gt[4, :] = 0                                 # a membrane splitting two cells
    res = evaluate_semantic([(gt, gt)])
    assert res["pixel_error"] == 0.0 and res["rand_error"] == pytest.approx(0.0)
    merged = np.full((9, 9), 255, np.uint8)     # missed membrane: the two cells merge
    res = evaluate_semantic([(merged, gt)])
    assert res["pixel_error"] == pytest.approx(9 / 81)
    assert 0.0 < res["rand_error"] < 1.0


def test_rand_error_known_values() -> None:
    gt = np.array([[1, 1, 2, 2]])
    assert rand_error(gt, gt) == 0.0
    assert rand_error(gt * 3, gt) == 0.0                         # ids do not matter
    # merge: pred one segment; true pairs 2+2=4 (ordered), pred pairs 12, shared 4
    # precision 4/12, recall 1 -> F = 0.5
    assert rand_error(np.ones((1, 4), int), gt) == pytest.approx(0.5)
    # pred all boundary: nothing predicted joined, recall 0 -> error 1
    assert rand_error(np.zeros((1, 4), int), gt) == 1.0


def test_rand_error_matches_skimage_adapted_rand() -> None:
    from skimage.metrics import adapted_rand_error

    rng = np.random.default_rng(3)
    gt = _random_labels(rng, 8, (32, 32))
    pred = _random_labels(rng, 8, (32, 32))
    singles = pred.copy()                       # our boundary pixels are singleton segments
    zero = singles == 0
    singles[zero] = 10_000 + np.arange(int(zero.sum()))
    assert rand_error(pred, gt) == pytest.approx(adapted_rand_error(gt, singles)[0])


label_images = st.integers(0, 2**16 - 1).flatmap(
    lambda seed: st.tuples(st.just(seed), st.integers(0, 6), st.integers(0, 6))
)


def _random_labels(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Random rectangles with random (non-consecutive) ids, later ones on top."""
    img = np.zeros(shape, np.int32)
    for _ in range(n):
        y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        h, w = rng.integers(2, 10), rng.integers(2, 10)
        img[y:y + h, x:x + w] = rng.integers(1, 1000)
    return img


@settings(max_examples=60, deadline=None)
@given(label_images)
def test_properties(args: tuple[int, int, int]) -> None:
    seed, n_pred, n_gt = args
    rng = np.random.default_rng(seed)
    pred = _random_labels(rng, n_pred, (24, 24))
    gt = _random_labels(rng, n_gt, (24, 24))
    a, b = instance_scores(pred, gt), instance_scores(gt, pred)
    assert np.all((a["ap"] >= 0) & (a["ap"] <= 1))
    assert np.array_equal(a["tp"], b["tp"])
    assert np.array_equal(a["fp"], b["fn"])
    assert np.all(np.diff(a["tp"]) <= 0)                         # monotone in the threshold
    assert 0 <= a["dice"] <= 1 and 0 <= a["pixel_error"] <= 1
    # IoU matrix agrees with a brute-force per-object computation
    iou, pid, gid = match_instances(pred, gt, return_ids=True)
    for i, p in enumerate(pid):
        for j, g in enumerate(gid):
            inter = np.sum((pred == p) & (gt == g))
            union = np.sum((pred == p) | (gt == g))
            assert iou[i, j] == pytest.approx(inter / union)
    assert 0.0 <= rand_error(pred, gt) <= 1.0
    assert rand_error(gt, gt) == pytest.approx(0.0)


def test_majority_cover_reads_the_label_covering_most_of_each_object():
    from napari_unet.metrics import majority_cover

    reference = np.zeros((6, 8), int)
    reference[:3, :4] = 1  # 12 px: 8 on label 5, 4 on label 7
    reference[4:, 4:] = 3  # 8 px: 6 on background, 2 on label 9
    labels = np.zeros_like(reference)
    labels[:2, :4], labels[2, :4] = 5, 7
    labels[5, 6:] = 9
    cover = majority_cover(reference, labels)
    np.testing.assert_allclose(cover["iou"], [8 / 12, 0.0])
    np.testing.assert_array_equal(cover["second"], [4, 2])
    np.testing.assert_array_equal(cover["size"], [12, 8])
