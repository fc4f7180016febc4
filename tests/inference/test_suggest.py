"""Annotate-next suggestions: the most uncertain windows, not overlapping, best first."""

from __future__ import annotations

import numpy as np

from napari_unet.inference.suggest import rank_regions


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
