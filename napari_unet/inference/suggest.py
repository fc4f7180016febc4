"""Where to annotate next: the image regions the model is least sure about.

Regions are square windows scored by their mean epistemic uncertainty (MC-dropout mutual
information: what more annotation can teach the model, unlike aleatoric noise). The top ``k``
windows are returned, best first: on one image (``rank_regions``) or over several, e.g. a whole
training set (``rank_regions_across``: regions tagged with their image).

Suggestions are spread out: windows keep a gap of half a window between them, and once a window
is chosen, the uncertain structures it covers (connected hot spots of the smoothed map) no
longer count for the others. Without that, one long bright structure (a cell outline, a smear)
takes every suggestion, side by side along its length.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Region:
    """A square window (pixel bounds, end exclusive). ``score`` ranks it: its mean uncertainty,
    not counting structures a better region already covers (the plain mean for the first);
    ``mean`` is its plain mean uncertainty and ``relative`` that mean over the whole map's mean
    (3.0 = three times as uncertain as the image on average). ``image`` and ``name`` say which image it lies in when several were
    ranked together."""

    y0: int
    x0: int
    y1: int
    x1: int
    score: float
    image: int = 0
    name: str = ""
    mean: float = 0.0
    relative: float = 1.0

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.y0 + self.y1) / 2, (self.x0 + self.x1) / 2)

    def corners(self) -> np.ndarray:
        """(4, 2) rectangle corners in (y, x), as napari Shapes expects."""
        return np.array([[self.y0, self.x0], [self.y0, self.x1], [self.y1, self.x1], [self.y1, self.x0]], float)


def hot_structures(u: np.ndarray, size: int) -> np.ndarray:
    """Integer labels (H, W) of connected uncertain structures: the top 10 % of the map smoothed at
    ``size``/16 px, joined across gaps of ``size``/8 px; 0 = not part of one."""
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(u, max(1.0, size / 16))
    hot = smooth > np.percentile(smooth, 90)
    if not hot.any():  # a flat map has no structure
        return np.zeros(u.shape, np.int32)
    hot = ndi.binary_dilation(hot, iterations=max(1, size // 8))
    return ndi.label(hot)[0]


def _window_means(u: np.ndarray, size: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(len(ys), len(xs)) mean of ``u`` over the ``size`` window centred on each grid point."""
    from scipy.ndimage import uniform_filter

    return uniform_filter(u, size=size, mode="constant")[np.ix_(ys, xs)]


def rank_regions(uncertainty: np.ndarray, size: int = 64, k: int = 5, stride: int | None = None,
                 gap: int | None = None) -> list[Region]:
    """Up to ``k`` spread-out ``size``×``size`` windows of a (H, W) map, most uncertain first.

    Windows keep ``gap`` px between them (default half a window), and a structure counted for one
    chosen window (one holding at least 20 % of that window's uncertainty) counts for no later one.
    """
    u = np.nan_to_num(np.asarray(uncertainty, dtype=np.float64))
    if u.ndim != 2:
        raise ValueError(f"expected a 2D uncertainty map, got shape {u.shape}")
    h, w = u.shape
    size = max(1, min(size, h, w))
    stride = stride or max(1, size // 4)
    gap = size // 2 if gap is None else gap
    half = size // 2
    ys = np.arange(half, h - (size - half) + 1, stride) if h > size else np.array([h // 2])
    xs = np.arange(half, w - (size - half) + 1, stride) if w > size else np.array([w // 2])
    plain = _window_means(u, size, ys, xs)
    overall = float(u.mean())
    labels = hot_structures(u, size)
    left = u.copy()  # the uncertainty not yet covered by a chosen region
    chosen: list[Region] = []
    while len(chosen) < k:
        grid = _window_means(left, size, ys, xs)
        for flat in np.argsort(grid, axis=None, kind="stable")[::-1]:
            y0, x0 = int(ys[flat // len(xs)] - half), int(xs[flat % len(xs)] - half)
            if all(y0 + size + gap <= c.y0 or c.y1 + gap <= y0 or x0 + size + gap <= c.x0 or c.x1 + gap <= x0
                   for c in chosen):
                break
        else:
            break  # no room left for another window
        score, mean = float(grid.flat[flat]), float(plain.flat[flat])
        if chosen and score <= 0:
            break  # nothing uncertain left outside the chosen regions
        chosen.append(Region(y0, x0, y0 + size, x0 + size, score, mean=mean,
                             relative=mean / overall if overall > 0 else 1.0))
        window = (slice(y0, y0 + size), slice(x0, x0 + size))
        mass = np.bincount(labels[window].ravel(), weights=left[window].ravel(), minlength=int(labels.max()) + 1)
        covered = np.nonzero(mass[1:] >= 0.2 * left[window].sum())[0] + 1
        if covered.size:
            left[np.isin(labels, covered)] = 0.0
        left[window] = 0.0
    return chosen


def rank_regions_across(maps: Sequence[np.ndarray], size: int = 64, k: int = 5,
                        names: Sequence[str] | None = None, stride: int | None = None) -> list[Region]:
    """Top ``k`` windows over several (H_i, W_i) maps (one per image), best first; within an image
    they are spread out as ``rank_regions`` spreads them. Each region carries its image's index
    and name (``names``, default the index). The maps must share a scale (the same model and uncertainty kind)."""
    names = [str(i) for i in range(len(maps))] if names is None else list(names)
    if len(names) != len(maps):
        raise ValueError(f"{len(names)} names for {len(maps)} maps")
    found = [replace(r, image=i, name=names[i]) for i, u in enumerate(maps) for r in rank_regions(u, size, k, stride)]
    return sorted(found, key=lambda r: -r.score)[:k]  # per-image greedy lists merge into the global greedy list
