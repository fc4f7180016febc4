"""The flow head (Cellpose; Stringer et al. 2021): the 3 classes, an object probability and flows.

Maps: ``[0:3]`` class softmax, ``[3]`` object probability (inside an object or not), ``[4:6]``
the flows (dy, dx) in [-1, 1]: the unit vectors along which each pixel travels to its object's
centre (targets: ``heads.flow_targets``), predicted in units of ``1 / FLOW_SCALE`` by the
half-resolution side branch (as the star head's rays). Loss: the classes' and probability's
terms (``ObjectMapHead``) plus half the mean squared error of the flows in ``FLOW_SCALE`` units
(Cellpose's loss). 2D only.

Instances: pixels follow the predicted flow and gather at object centres.

1. Every pixel whose object probability exceeds ``prob_threshold`` starts at its own position and
   takes Euler steps of one pixel along the predicted flow, bilinearly interpolated at its
   current (sub-pixel) position (``torch.nn.functional.grid_sample``): enough steps to cross the
   largest foreground region 1.5 times (``steps_needed``), at most ``STEPS``.
2. The end points are counted per pixel; end-point pixels within ``MERGE_RADIUS`` of each other
   form one cluster (connected components of the dilated end-point map) and each cluster with
   enough members is one object: its pixels are those that ended in it.
3. Flow-consistency check: the flows of each predicted mask are recomputed with the training
   target function (``heads.flow_targets.flow_field``); a mask whose mean squared difference to
   the predicted flows exceeds ``flow_threshold`` is dropped (a fragment or a merge whose
   flows do not point to one centre). Masks under ``min_size`` pixels go too. Masks longer than
   ``CHECK_SIDE`` are recomputed on a grid coarsened to that side (the diffusion's cost grows with
   the cube of the side; an unsure model's large blobs took seconds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from napari_unet.config import MIN_SIZE
from napari_unet.events import Progress
from napari_unet.heads.base import ObjectMapHead
from napari_unet.heads.flow_targets import flow_field, flow_targets, object_centres

FLOW_SCALE = 5.0  # flows are trained as 5 x the unit vectors, as Cellpose does (larger targets for the MSE)

# Cellpose's flow threshold is 0.4; on our half-resolution flows after ~1150 steps it dropped real nuclei
# (four models, val AP@0.5 -0.04 to -0.05 against 0.6; docs/benchmarks.md, "The flow head")
DEFAULT_RULE: dict[str, float] = {"prob_threshold": 0.5, "flow_threshold": 0.6}
STEPS = 200  # Euler steps at most, of one pixel per unit of flow
PATH_FACTOR = 1.5  # steps per pixel of the largest foreground region's longest side
MAX_CANDIDATE_SHARE = 2  # at most half the pixels follow the flows (an untrained model's probability is ~0.5 everywhere)
CHECK_SIDE = 32  # the consistency check diffuses masks longer than this on a coarser grid (cost: side cubed)
MERGE_RADIUS = 2  # end-point pixels this close (Chebyshev, pixels) join one cluster


class FlowHead(ObjectMapHead):
    """Object probability + flows to the object centres, followed (see the module docstring)."""

    name = "flow"
    description = "Cellpose-style flows followed to object centres, beside the 3 classes"
    rule_keys = ("prob_threshold", "flow_threshold")
    default_rule = DEFAULT_RULE
    # the object probability over a grid, then refined next to the best, for each flow-consistency
    # error (0 = no check)
    threshold_grid = (("prob_threshold", (0.3, 0.5, 0.7)), ("flow_threshold", (0.4, 0.6, 0.8, 0.0)))
    output_range = (-1.0, 1.0)  # flows are unit-vector components
    maps_description = "the flows (dy, dx) towards each object's centre"

    def side_names(self, cfg: Any) -> list[str]:
        return ["flow y", "flow x"]

    def side_maps(self, side: torch.Tensor) -> torch.Tensor:
        return (side[:, :2] / FLOW_SCALE).clamp(-1.0, 1.0)  # (B, 2, *S) dy, dx

    def targets(self, ids: np.ndarray, cfg: Any) -> tuple[np.ndarray, ...]:
        return flow_targets(ids)

    def side_loss(self, logits: torch.Tensor, prob: torch.Tensor, valid: torch.Tensor,
                  targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Half the mean squared error of the flows (B, 2, H, W) in ``FLOW_SCALE`` units against the
        unit flows ``targets[1]`` (0 on background)."""
        flows, k = targets[1], self.n_classes
        sq = (logits[:, k + 1:k + 3] - FLOW_SCALE * flows) ** 2  # (B, 2, H, W)
        return 0.5 * (sq.mean(dim=1) * valid).sum() / valid.sum().clamp(min=1)

    def instances(self, maps: np.ndarray, min_size: int = MIN_SIZE, **rule: Any) -> np.ndarray:
        return instances_from_flows(maps, min_size, **rule)

    def instances_blockwise(self, maps: Any, labels: Any, block: int = 1024, halo: int = 64, min_size: int = MIN_SIZE,
                            scratch: Path | None = None, **rule: Any) -> Generator[Progress, None, int]:
        return (yield from flows_blockwise(maps, labels, block, halo, min_size, **rule))

    def rule_text(self, tuned: dict) -> str:
        return f"flow error < {tuned['flow_threshold']}"


def follow_flows(flows: np.ndarray, starts: np.ndarray, steps: int = STEPS) -> np.ndarray:
    """End positions (N, 2) float32 (y, x) of the points ``starts`` (N, 2) after ``steps`` Euler
    steps along ``flows`` (2, H, W) (dy, dx per step), bilinearly interpolated."""
    h, w = flows.shape[1:]
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])  # pixels -> grid_sample's [-1, 1]
    field = torch.from_numpy(np.ascontiguousarray(flows[::-1], dtype=np.float32))[None]  # (1, 2, H, W) as (dx, dy)
    field = field * scale.view(1, 2, 1, 1)  # steps in grid units
    pos = torch.from_numpy(starts[:, ::-1].astype(np.float32)) * scale - 1.0  # (N, 2) as (x, y) in [-1, 1]
    grid = pos.view(1, 1, -1, 2)  # (1, 1, N, 2)
    with torch.inference_mode():
        for _ in range(steps):
            step = F.grid_sample(field, grid, mode="bilinear", align_corners=True)  # (1, 2, 1, N)
            grid.add_(step.permute(0, 2, 3, 1)).clamp_(-1.0, 1.0)
    ends = (grid.view(-1, 2) + 1.0) / scale  # (N, 2) pixels (x, y)
    return ends.numpy()[:, ::-1].copy()


def steps_needed(foreground: np.ndarray) -> int:
    """Euler steps for a foreground mask (H, W): enough to cross its largest connected region
    ``PATH_FACTOR`` times its longest side (bent objects), at most ``STEPS``."""
    boxes = ndi.find_objects(ndi.label(foreground)[0])
    longest = max((max(s.stop - s.start for s in box) for box in boxes if box is not None), default=0)
    return int(min(STEPS, PATH_FACTOR * longest + 10))


def cluster_end_points(ends: np.ndarray, shape: tuple[int, int], min_count: int) -> np.ndarray:
    """Cluster id (N,) per end point (0: a cluster of fewer than ``min_count`` points)."""
    iy = np.clip(np.rint(ends[:, 0]).astype(np.int64), 0, shape[0] - 1)
    ix = np.clip(np.rint(ends[:, 1]).astype(np.int64), 0, shape[1] - 1)
    flat = iy * shape[1] + ix
    hits = np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape)
    size = 2 * MERGE_RADIUS + 1
    clusters, _ = ndi.label(ndi.maximum_filter(hits, size=size) > 0)
    members = np.bincount(clusters.ravel(), weights=hits.ravel())
    members[0] = 0
    keep = members >= min_count
    which = clusters.ravel()[flat]
    return np.where(keep[which], which, 0)


def flow_errors(labels: np.ndarray, flows: np.ndarray, max_side: int | None = CHECK_SIDE) -> np.ndarray:
    """Per label id 0..max: mean squared difference between ``flows`` (2, H, W) and the flows
    recomputed from ``labels`` (H, W) (masks longer than ``max_side`` on a coarser grid,
    ``flow_field``); index 0 is unused."""
    expected = flow_field(labels, max_side).numpy()  # (2, H, W)
    sq = ((np.asarray(flows, np.float32) - expected) ** 2).sum(axis=0)
    n = int(labels.max())
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    return np.bincount(labels.ravel(), weights=sq.ravel(), minlength=n + 1) / np.maximum(counts, 1)


def instances_from_flows(maps: np.ndarray, min_size: int = MIN_SIZE, prob_threshold: float = DEFAULT_RULE["prob_threshold"],
                         flow_threshold: float = DEFAULT_RULE["flow_threshold"], n_classes: int = 3) -> np.ndarray:
    """(K + 1 + 2, H, W) flow maps -> (H, W) instance labels (consecutive ids); see the module
    docstring. ``flow_threshold`` <= 0 skips the consistency check."""
    # deferred: scikit-image loads at first use
    from napari_unet.data.targets import relabel_sequential

    shape = maps.shape[1:]
    prob, flows = maps[n_classes], maps[n_classes + 1:n_classes + 3]
    cap = prob.size // MAX_CANDIDATE_SHARE
    if int((prob > prob_threshold).sum()) > cap:  # an unsure (half-trained) model: the likeliest pixels only
        prob_threshold = max(prob_threshold, float(np.partition(prob.ravel(), -cap)[-cap]))
    ys, xs = np.nonzero(prob > prob_threshold)
    if ys.size == 0:
        return np.zeros(shape, np.uint16)
    ends = follow_flows(flows, np.stack([ys, xs], axis=1), steps_needed(prob > prob_threshold))
    labels = np.zeros(shape, np.int32)
    labels[ys, xs] = cluster_end_points(ends, shape, max(min_size, 1))
    labels = relabel_sequential(labels).astype(np.int32)
    if flow_threshold > 0 and labels.any():
        bad = flow_errors(labels, flows) > flow_threshold
        bad[0] = False
        labels[bad[labels]] = 0
    if min_size > 1 and labels.any():
        sizes = np.bincount(labels.ravel())
        labels[sizes[labels] < min_size] = 0
    return relabel_sequential(labels)


def flows_blockwise(maps: Any, labels: Any, block: int = 1024, halo: int = 64, min_size: int = MIN_SIZE,
                    prob_threshold: float = DEFAULT_RULE["prob_threshold"],
                    flow_threshold: float = DEFAULT_RULE["flow_threshold"],
                    n_classes: int = 3) -> Generator[Progress, None, int]:
    """Flow instances of maps (K + 1 + 2, H, W) too large for memory into ``labels`` (H, W).

    Each block runs the whole-image dynamics on itself plus ``halo`` pixels and keeps the
    objects it owns: those whose centre (the object pixel nearest its median, as the flow
    targets' source) lies in the block's core. An object crossing a seam lies whole in the
    windows of the blocks on both sides, gets the same mask in each, and is written once, with
    one id. ``halo`` must exceed the largest object. Returns the number of objects."""
    # deferred: scikit-image loads at first use
    from napari_unet.heads.blockwise import blocks

    shape = labels.shape
    n_blocks = -(-shape[0] // block) * -(-shape[1] // block)
    next_id, start = 1, time.perf_counter()
    for i, (_, _, (ys, xs)) in enumerate(blocks(shape, block)):
        y0, x0 = max(ys.start - halo, 0), max(xs.start - halo, 0)
        y1, x1 = min(ys.stop + halo, shape[0]), min(xs.stop + halo, shape[1])
        window = instances_from_flows(np.asarray(maps[:, y0:y1, x0:x1], dtype=np.float32), min_size,
                                      prob_threshold, flow_threshold, n_classes).astype(np.int64)
        centres, ids = object_centres(window)
        cy, cx = np.unravel_index(centres, window.shape)
        owned = ids[(cy + y0 >= ys.start) & (cy + y0 < ys.stop) & (cx + x0 >= xs.start) & (cx + x0 < xs.stop)]
        if owned.size:
            new_ids = np.zeros(int(window.max()) + 1, np.int64)
            new_ids[owned] = np.arange(next_id, next_id + owned.size)
            out = np.asarray(labels[y0:y1, x0:x1])
            mine = new_ids[window] > 0
            out[mine] = new_ids[window][mine]
            labels[y0:y1, x0:x1] = out
            next_id += owned.size
        yield Progress(i + 1, n_blocks, time.perf_counter() - start, "objects")
    return next_id - 1
