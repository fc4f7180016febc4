"""Instances from the star-convex head: polygon non-maximum suppression (Schmidt et al. 2018).

Candidates are the ``GRID``-subsampled pixels whose object probability exceeds
``prob_threshold``; each proposes the star-convex polygon of its predicted rays. Greedy NMS
(most probable first) drops every candidate overlapping a kept polygon by more than
``nms_threshold`` (IoU), and the kept polygons are painted into a label image, the most
probable on top. Both steps are stardist's compiled code (``stardist.nms``,
``stardist.geometry``), which imports without TensorFlow.
"""

from __future__ import annotations

import warnings

import numpy as np

from napari_unet.data.star_targets import GRID
from napari_unet.data.targets import relabel_sequential

DEFAULT_RULE: dict[str, float] = {"prob_threshold": 0.5, "nms_threshold": 0.4}
MIN_CANDIDATES, MAX_CANDIDATE_SHARE = 2000, 8  # at most max(2000, 1/8 of the grid) candidates enter the NMS


def star_candidates(maps: np.ndarray, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The grid's object probability (h, w) and rays (h, w, R) from maps (K + 1 + R, H, W)."""
    prob = np.ascontiguousarray(maps[n_classes, ::GRID, ::GRID], dtype=np.float32)
    dist = np.ascontiguousarray(np.moveaxis(maps[n_classes + 1:, ::GRID, ::GRID], 0, -1), dtype=np.float32)
    return prob, dist


def ray_directions(n_rays: int) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of the ray angles 2 pi k / n, in stardist's order (``star_dist`` targets)."""
    phis = 2 * np.pi * np.arange(n_rays) / n_rays
    return np.sin(phis), np.cos(phis)


def greedy_polygon_nms(prob: np.ndarray, dist: np.ndarray, shape: tuple[int, int], prob_threshold: float,
                       nms_threshold: float) -> np.ndarray:
    """Greedy NMS of the grid's star polygons, painted straight into a label image.

    Candidates are visited most probable first. One whose own pixel already lies inside a kept
    polygon is suppressed at once (this is what makes the NMS fast: almost every candidate of
    an object sits inside that object's best polygon); any other is rasterised and suppressed
    when its overlap with one kept polygon exceeds ``nms_threshold`` times the smaller of the
    two areas, else kept and painted where the image is still free.
    """
    from skimage.draw import polygon

    sin, cos = ray_directions(dist.shape[-1])
    ys, xs = np.nonzero(prob > prob_threshold)
    order = np.argsort(-prob[ys, xs], kind="stable")
    labels = np.zeros(shape, np.int32)
    areas = [0]
    for i in order:
        y, x = int(ys[i]) * GRID, int(xs[i]) * GRID
        if labels[y, x]:
            continue
        rays = dist[ys[i], xs[i]]
        rr, cc = polygon(y + rays * sin, x + rays * cos, shape)
        if rr.size == 0:
            continue
        hit = labels[rr, cc]
        taken = hit > 0
        if taken.any():
            overlaps = np.bincount(hit[taken])
            j = int(overlaps.argmax())
            if overlaps[j] > nms_threshold * min(rr.size, areas[j]):
                continue
        areas.append(rr.size)
        labels[rr[~taken], cc[~taken]] = len(areas) - 1
    return labels


def instances_from_star(maps: np.ndarray, min_size: int = 10, prob_threshold: float = 0.5,
                        nms_threshold: float = 0.4, n_classes: int = 3) -> np.ndarray:
    """(K + 1 + R, H, W) star maps -> (H, W) instance labels (consecutive ids)."""
    shape = maps.shape[1:]
    prob, dist = star_candidates(maps, n_classes)
    n_candidates = int((prob > prob_threshold).sum())
    if n_candidates == 0:
        return np.zeros(shape, np.uint16)
    cap = max(MIN_CANDIDATES, prob.size // MAX_CANDIDATE_SHARE)
    if n_candidates > cap:  # an unsure (half-trained) model: keep the likeliest candidates only
        prob_threshold = max(prob_threshold, float(np.partition(prob.ravel(), -cap)[-cap]))
    labels = greedy_polygon_nms(prob, dist, shape, prob_threshold, nms_threshold)
    if min_size > 1 and labels.any():
        sizes = np.bincount(labels.ravel())
        labels[sizes[labels] < min_size] = 0
    return relabel_sequential(labels)
