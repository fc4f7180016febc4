"""Annotate-next suggestions: the most uncertain windows, not overlapping, best first."""

from __future__ import annotations

import numpy as np

from napari_unet.inference.suggest import rank_regions, rank_regions_across


def test_finds_the_uncertain_spots_in_order():
    u = np.zeros((200, 300), np.float32)
    u[20:50, 30:60] = 1.0  # strongest
    u[140:170, 200:230] = 0.5
    u[100:110, 10:20] = 0.2
    regions = rank_regions(u, size=32, k=3)
    assert len(regions) == 3
    first, second, third = regions
    assert 20 <= first.centre[0] <= 50 and 30 <= first.centre[1] <= 60
    assert 140 <= second.centre[0] <= 170 and 200 <= second.centre[1] <= 230
    assert first.score > second.score > third.score
    for r in regions:
        assert 0 <= r.y0 < r.y1 <= 200 and 0 <= r.x0 < r.x1 <= 300 and r.y1 - r.y0 == 32
    assert regions[0].corners().shape == (4, 2)


def test_regions_never_overlap_and_small_images_work():
    u = np.random.default_rng(0).random((100, 100))
    regions = rank_regions(u, size=40, k=10)
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            assert a.y1 <= b.y0 or b.y1 <= a.y0 or a.x1 <= b.x0 or b.x1 <= a.x0
    tiny = rank_regions(np.ones((10, 12)), size=64, k=3)
    assert len(tiny) == 1 and (tiny[0].y1 - tiny[0].y0) == 10


def test_ranking_across_images_merges_by_score_and_tags_each_region():
    a, b, c = np.zeros((120, 120)), np.zeros((80, 200)), np.full((64, 64), 0.2)
    a[10:40, 10:40] = 0.6
    b[20:50, 100:130] = 1.0
    b[40:70, 10:40] = 0.3
    regions = rank_regions_across([a, b, c], size=32, k=4, names=["a", "b", "c"])
    assert [(r.image, r.name) for r in regions] == [(1, "b"), (0, "a"), (1, "b"), (2, "c")]
    assert 100 <= regions[0].centre[1] <= 130 and 10 <= regions[2].centre[1] <= 40
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    single = rank_regions(b, size=32, k=2)
    assert [(r.y0, r.x0) for r in regions if r.name == "b"] == [(r.y0, r.x0) for r in single]
    assert rank_regions_across([a, b], size=32, k=1)[0].name == "1"  # default names: the index


def test_one_long_structure_gets_one_region_and_the_rest_spread_out():
    """A bright streak (a smear, a cell outline) and a few dimmer blobs: the streak gets one box,
    the blobs the others; no two boxes touch."""
    u = np.full((400, 600), 1e-6)
    u[20:380, 560:575] = 3e-5  # long vertical streak at the right edge
    blobs = [(60, 100), (200, 300), (320, 150), (100, 420)]
    for y, x in blobs:
        u[y:y + 20, x:x + 20] = 1e-5
    regions = rank_regions(u, size=64, k=5)
    on_streak = [r for r in regions if r.x1 > 560]
    assert len(on_streak) == 1 and regions[0] is on_streak[0]
    found = {b for b in blobs for r in regions[1:] if r.y0 <= b[0] + 10 <= r.y1 and r.x0 <= b[1] + 10 <= r.x1}
    assert found == set(blobs)
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            assert a.y1 + 32 <= b.y0 or b.y1 + 32 <= a.y0 or a.x1 + 32 <= b.x0 or b.x1 + 32 <= a.x0


def test_regions_report_a_figure_that_reads_at_small_uncertainties():
    """MC-dropout epistemic maps of a good model are ~1e-5 nats: ``relative`` (window mean over the
    map's mean) says how much more uncertain a region is, whatever the scale."""
    u = np.full((128, 128), 1e-6)
    u[10:30, 10:30] = 4e-5
    first = rank_regions(u, size=32, k=1)[0]
    assert first.mean == first.score and first.relative > 5
    assert abs(first.relative - first.mean / u.mean()) < 1e-9
