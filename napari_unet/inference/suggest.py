"""Where to annotate next: the image regions the model is least sure about.

Regions are square windows scored by their mean epistemic uncertainty (MC-dropout mutual
information: what more annotation can teach the model, unlike aleatoric noise). The top ``k``
windows that do not overlap are returned, best first: on one image (``rank_regions``) or over
several, e.g. a whole training set (``rank_regions_across``: regions tagged with their image).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Region:
    """A square window (pixel bounds, end exclusive) and its mean uncertainty; ``image`` and
    ``name`` say which image it lies in when several were ranked together."""

    y0: int
    x0: int
    y1: int
    x1: int
    score: float
    image: int = 0
    name: str = ""

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.y0 + self.y1) / 2, (self.x0 + self.x1) / 2)

    def corners(self) -> np.ndarray:
        """(4, 2) rectangle corners in (y, x), as napari Shapes expects."""
        return np.array([[self.y0, self.x0], [self.y0, self.x1], [self.y1, self.x1], [self.y1, self.x0]], float)


def rank_regions(uncertainty: np.ndarray, size: int = 64, k: int = 5, stride: int | None = None) -> list[Region]:
    """Top ``k`` non-overlapping ``size``×``size`` windows of a (H, W) map by mean value."""
    from scipy.ndimage import uniform_filter

    u = np.nan_to_num(np.asarray(uncertainty, dtype=np.float64))
    if u.ndim != 2:
        raise ValueError(f"expected a 2D uncertainty map, got shape {u.shape}")
    h, w = u.shape
    size = max(1, min(size, h, w))
    stride = stride or max(1, size // 4)
    means = uniform_filter(u, size=size, mode="constant")  # mean of the window centred on each pixel
    half = size // 2
    ys = np.arange(half, h - (size - half) + 1, stride) if h > size else np.array([h // 2])
    xs = np.arange(half, w - (size - half) + 1, stride) if w > size else np.array([w // 2])
    grid = means[np.ix_(ys, xs)]
    order = np.argsort(grid, axis=None)[::-1]
    chosen: list[Region] = []
    for flat in order:
        cy, cx = ys[flat // len(xs)], xs[flat % len(xs)]
        y0, x0 = int(cy - half), int(cx - half)
        region = Region(y0, x0, y0 + size, x0 + size, float(grid.flat[flat]))
        if all(region.y1 <= c.y0 or c.y1 <= region.y0 or region.x1 <= c.x0 or c.x1 <= region.x0 for c in chosen):
            chosen.append(region)
            if len(chosen) == k:
                break
    return chosen


def rank_regions_across(maps: Sequence[np.ndarray], size: int = 64, k: int = 5,
                        names: Sequence[str] | None = None, stride: int | None = None) -> list[Region]:
    """Top ``k`` windows over several (H_i, W_i) maps (one per image), best first; windows never
    overlap within an image. Each region carries its image's index and name (``names``, default
    the index). The maps must share a scale (the same model and uncertainty kind)."""
    names = [str(i) for i in range(len(maps))] if names is None else list(names)
    if len(names) != len(maps):
        raise ValueError(f"{len(names)} names for {len(maps)} maps")
    found = [replace(r, image=i, name=names[i]) for i, u in enumerate(maps) for r in rank_regions(u, size, k, stride)]
    return sorted(found, key=lambda r: -r.score)[:k]  # per-image greedy lists merge into the global greedy list
