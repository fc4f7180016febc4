"""The star-convex head (StarDist; Schmidt et al. 2018): the 3 classes, an object probability and rays.

Maps: ``[0:3]`` class softmax, ``[3]`` object probability (the normalised distance of a pixel
to its object's edge), ``[4:4 + n_rays]`` the distance from the pixel to its object's edge along
``n_rays`` equally spaced rays, in pixels (predicted in units of ``DIST_SCALE`` pixels by the
half-resolution side branch). Loss: the classes' and probability's terms (``ObjectMapHead``)
plus the probability-weighted L1 of the ray lengths on the ``GRID`` (StarDist's loss). 2D only.

Targets are made after augmentation, from the warped instance ids (``data.targets.pack``), so
flips, rotations and the elastic deformation all change the rays consistently with the image (no
ray permutation bookkeeping). Ray lengths come from stardist's compiled ``star_dist`` on the
``GRID``-subsampled pixel grid (the rays of every second pixel per axis, as StarDist's default
grid (2, 2)): 11 ms for a batch of eight 128² patches here against 46 ms at every pixel. The
object probability is stardist's ``edt_prob`` (distance to the object's edge, normalised per
object) at every pixel.

Instances: greedy polygon non-maximum suppression. Candidates are the ``GRID``-subsampled pixels
whose object probability exceeds ``prob_threshold``; each proposes the star-convex polygon of its
predicted rays. Greedy NMS (most probable first) drops every candidate overlapping a kept polygon
by more than ``nms_threshold`` and paints the kept ones into a label image. The NMS is our own
rather than stardist's ``non_maximum_suppression`` + ``polygons_to_label``: it paints as it goes,
so a candidate inside a kept polygon costs one lookup (a half-trained model with every pixel a
candidate stays fast, where stardist's pairwise polygon overlaps took minutes per image), and it
can start from polygons already painted by a neighbouring block (seam-free streaming,
``star_blockwise``). On whole images with ideal maps the two give the same AP@0.5
(docs/benchmarks.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np
import torch

from napari_unet.config import MIN_SIZE
from napari_unet.errors import UserError
from napari_unet.events import Progress
from napari_unet.heads.base import ObjectMapHead

GRID = 2  # rays are trained and predicted on every GRID-th pixel per axis
DIST_SCALE = 10.0  # ray lengths are predicted in units of 10 px, so a unit-sized output is a typical nucleus radius
DEFAULT_RULE: dict[str, float] = {"prob_threshold": 0.5, "nms_threshold": 0.4}


class StarHead(ObjectMapHead):
    """Object probability + star-convex rays, polygon NMS (see the module docstring)."""

    name = "star"
    description = "StarDist rays + polygon NMS, beside the 3 classes"
    rule_keys = ("prob_threshold", "nms_threshold")
    default_rule = DEFAULT_RULE
    # searched as StarDist's ``optimize_thresholds`` does: the probability over a grid, then refined
    # next to the best, for each NMS overlap
    threshold_grid = (("prob_threshold", (0.3, 0.4, 0.5, 0.6, 0.7)), ("nms_threshold", (0.3, 0.4, 0.5)))
    output_range = (0.0, None)  # ray lengths are pixels, not probabilities
    maps_description = "the star-convex ray lengths in pixels"

    def side_names(self, cfg: Any) -> list[str]:
        return [f"ray {i}" for i in range(cfg.n_rays)]

    def side_maps(self, side: torch.Tensor) -> torch.Tensor:
        return torch.relu(side) * DIST_SCALE  # (B, R, *S) pixels

    def targets(self, ids: np.ndarray, cfg: Any) -> tuple[np.ndarray, ...]:
        return star_targets(ids, cfg.n_rays)

    def side_loss(self, logits: torch.Tensor, prob: torch.Tensor, valid: torch.Tensor,
                  targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """The probability-weighted L1 of the ray lengths (in ``DIST_SCALE`` units) on the grid:
        rays (B, R, h, w) of the logits against ``targets[1]`` (B, R, H/GRID, W/GRID) pixels."""
        dist = targets[1]
        rays = logits[:, self.n_classes + 1:, ::GRID, ::GRID]  # (B, R, h, w) in DIST_SCALE units
        mask = (prob * valid)[:, None, ::GRID, ::GRID]  # (B, 1, h, w): StarDist weights rays by the probability
        l1 = (rays - dist / DIST_SCALE).abs().mean(dim=1, keepdim=True)  # (B, 1, h, w)
        return (l1 * mask).sum() / mask.sum().clamp(min=1e-6)

    def instances(self, maps: np.ndarray, min_size: int = MIN_SIZE, **rule: Any) -> np.ndarray:
        return instances_from_star(maps, min_size, **rule)

    def instances_blockwise(self, maps: Any, labels: Any, block: int = 1024, halo: int = 64, min_size: int = MIN_SIZE,
                            scratch: Path | None = None, **rule: Any) -> Generator[Progress, None, int]:
        return (yield from star_blockwise(maps, labels, block, halo, min_size, **rule))

    def rule_text(self, tuned: dict) -> str:
        return f"NMS overlap {tuned['nms_threshold']}"


def _import_stardist():
    """stardist's compiled geometry (no TensorFlow needed); a clear error when it is missing."""
    try:
        from stardist import edt_prob
        from stardist.geometry import star_dist
    except ImportError as exc:  # pragma: no cover - stardist is a declared dependency

        raise UserError(f"the star-convex head needs the 'stardist' package ({exc})") from None
    return star_dist, edt_prob


def star_targets(instances: np.ndarray, n_rays: int) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids (B, H, W) -> object probability (B, H, W) and ray lengths
    (B, n_rays, H/GRID, W/GRID) in pixels, float32."""
    star_dist, edt_prob = _import_stardist()
    prob, dist = [], []
    for ids in instances:
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        prob.append(edt_prob(ids).astype(np.float32) if ids.any() else np.zeros(ids.shape, np.float32))
        dist.append(np.moveaxis(star_dist(ids, n_rays, grid=(GRID, GRID)), -1, 0))  # (R, H/g, W/g)
    return np.stack(prob), np.stack(dist).astype(np.float32)


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


def greedy_polygon_nms(prob: np.ndarray, dist: np.ndarray, labels: np.ndarray, prob_threshold: float,
                       nms_threshold: float, min_size: int = 1, next_id: int = 1,
                       areas: dict[int, int] | None = None, owned: tuple[slice, slice] | None = None) -> int:
    """Greedy NMS of the grid's star polygons, painted straight into ``labels`` (H, W), in place.

    Candidates are visited most probable first. One whose own pixel already lies inside a kept
    polygon is suppressed at once (this is what makes the NMS fast: almost every candidate of
    an object sits inside that object's best polygon); any other is rasterised and suppressed
    when its overlap with one kept polygon exceeds ``nms_threshold`` times the smaller of the
    two areas, or when it covers fewer than ``min_size`` pixels; else it is kept and painted
    where ``labels`` is still free. ``labels`` may already hold polygons (a neighbouring block,
    with their ``areas``); ``owned`` limits the candidates to a grid window (a block's core).
    Returns the next free id.
    """
    from skimage.draw import polygon

    areas = {} if areas is None else areas
    shape = labels.shape
    sin, cos = ray_directions(dist.shape[-1])
    above = prob > prob_threshold
    if owned is not None:
        window = np.zeros_like(above)
        window[owned] = True
        above &= window
    ys, xs = np.nonzero(above)
    order = np.argsort(-prob[ys, xs], kind="stable")
    for i in order:
        y, x = int(ys[i]) * GRID, int(xs[i]) * GRID
        if y >= shape[0] or x >= shape[1] or labels[y, x]:
            continue
        rays = dist[ys[i], xs[i]]
        rr, cc = polygon(y + rays * sin, x + rays * cos, shape)
        if rr.size < max(min_size, 1):
            continue
        hit = labels[rr, cc]
        taken = hit > 0
        if taken.any():
            ids, overlaps = np.unique(hit[taken], return_counts=True)
            j = int(overlaps.argmax())
            if overlaps[j] > nms_threshold * min(rr.size, areas.get(int(ids[j]), rr.size)):
                continue
        areas[next_id] = rr.size
        labels[rr[~taken], cc[~taken]] = next_id
        next_id += 1
    return next_id


def instances_from_star(maps: np.ndarray, min_size: int = MIN_SIZE, prob_threshold: float = 0.5,
                        nms_threshold: float = 0.4, n_classes: int = 3) -> np.ndarray:
    """(K + 1 + R, H, W) star maps -> (H, W) instance labels (consecutive ids)."""
    # deferred: scikit-image loads at first use
    from napari_unet.data.targets import relabel_sequential

    shape = maps.shape[1:]
    prob, dist = star_candidates(maps, n_classes)
    n_candidates = int((prob > prob_threshold).sum())
    if n_candidates == 0:
        return np.zeros(shape, np.uint16)
    cap = max(MIN_CANDIDATES, prob.size // MAX_CANDIDATE_SHARE)
    if n_candidates > cap:  # an unsure (half-trained) model: keep the likeliest candidates only
        prob_threshold = max(prob_threshold, float(np.partition(prob.ravel(), -cap)[-cap]))
    labels = np.zeros(shape, np.int32)
    greedy_polygon_nms(prob, dist, labels, prob_threshold, nms_threshold, min_size)
    return relabel_sequential(labels)


def star_blockwise(maps: Any, labels: Any, block: int = 1024, halo: int = 64, min_size: int = MIN_SIZE,
                   prob_threshold: float = 0.5, nms_threshold: float = 0.4,
                   n_classes: int = 3) -> Generator[Progress, None, int]:
    """Star instances of maps (K + 1 + R, H, W) too large for memory into ``labels`` (H, W).

    Blocks are visited in raster order. Each block's candidates go through the same greedy NMS
    as the whole image, on the block plus ``halo`` pixels, with the polygons that earlier
    blocks kept already painted there: a polygon crossing a seam is kept by one block only and
    keeps one id, and a neighbour's candidates for the same object fall inside it and are
    suppressed. Only the order differs from the whole image (most probable first within a
    block, blocks in raster order). ``halo`` must exceed the longest ray. Returns the number of
    objects."""
    # deferred: scikit-image loads at first use
    from napari_unet.heads.blockwise import blocks

    shape = labels.shape
    n_blocks = -(-shape[0] // block) * -(-shape[1] // block)
    next_id, areas, start = 1, {}, time.perf_counter()
    for i, (_, _, (ys, xs)) in enumerate(blocks(shape, block)):
        y0, x0 = max(ys.start - halo, 0) // GRID * GRID, max(xs.start - halo, 0) // GRID * GRID  # on the grid
        y1, x1 = min(ys.stop + halo, shape[0]), min(xs.stop + halo, shape[1])
        window = np.asarray(labels[y0:y1, x0:x1]).astype(np.int32)
        prob, dist = star_candidates(np.asarray(maps[:, y0:y1, x0:x1], dtype=np.float32), n_classes)
        core = (slice((ys.start - y0 + GRID - 1) // GRID, (ys.stop - y0 + GRID - 1) // GRID),
                slice((xs.start - x0 + GRID - 1) // GRID, (xs.stop - x0 + GRID - 1) // GRID))
        next_id = greedy_polygon_nms(prob, dist, window, prob_threshold, nms_threshold, min_size, next_id,
                                     areas, core)
        labels[y0:y1, x0:x1] = window.astype(labels.dtype)
        yield Progress(i + 1, n_blocks, time.perf_counter() - start, "objects")
    return next_id - 1
