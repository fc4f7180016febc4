"""Instance labels of images too large for memory, computed block by block without seams.

The in-memory recipe (``postprocess.instances_from_probabilities``) is: seeds = connected
components of *interior*; drop small seeds; grow seeds by watershed over the foreground; drop
small objects; number objects 1..N. Block-wise, each step keeps its global meaning:

1. **Seeds** are labelled per block with provisional ids; components that touch across a block
   seam are merged with a union-find (connected components of the graph of ids adjacent across
   seams), and sizes are summed over blocks before small seeds are dropped. Seeds of one nucleus
   therefore get one id however many blocks it spans.
2. **Watershed** runs on each block plus a halo (``halo`` pixels of probabilities and global seed
   ids from the neighbours) and keeps the block's core, so objects near a seam grow as they would
   on the whole image (exact while an object's flooding stays within the halo).
3. **Small objects** are dropped and ids made consecutive from sizes summed over blocks.

With ``split_height`` the seeds of step 1 are the split markers (h-maxima of the interior
distance map, computed on each block plus the halo), and step 2 first floods each marker's
interior region down the distance map, then the foreground as above.

Arrays are anything with numpy slicing (zarr arrays on disk); memory holds a few blocks.
"""

from __future__ import annotations

import time
from typing import Any, Generator, Iterator

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import watershed

from napari_unet.events import Progress
from napari_unet.heads.watershed import interior_distance, interior_mask, split_markers

Box = tuple[slice, slice]


def blocks(shape: tuple[int, int], block: int) -> Iterator[tuple[int, int, Box]]:
    """(row, col, (ys, xs)) of the blocks tiling ``shape`` in raster order."""
    for r, y in enumerate(range(0, shape[0], block)):
        for c, x in enumerate(range(0, shape[1], block)):
            yield r, c, (slice(y, min(y + block, shape[0])), slice(x, min(x + block, shape[1])))


def _grow(counts: np.ndarray, n: int) -> np.ndarray:
    return counts if len(counts) >= n else np.concatenate([counts, np.zeros(max(n, 2 * len(counts)) - len(counts), counts.dtype)])


def _seed_pixels(probs: Any, ys: slice, xs: slice, seed_threshold: float | None, split_height: float | None,
                 halo: int) -> np.ndarray:
    """Seed pixels of one block: confident interior, or with ``split_height`` the split markers
    (computed on the block plus ``halo`` so that they agree with the whole-image ones)."""
    if not split_height:
        return interior_mask(np.asarray(probs[:, ys, xs]), seed_threshold)

    shape = probs.shape[1:]
    y0, x0 = max(ys.start - halo, 0), max(xs.start - halo, 0)
    y1, x1 = min(ys.stop + halo, shape[0]), min(xs.stop + halo, shape[1])
    markers, _ = split_markers(interior_mask(np.asarray(probs[:, y0:y1, x0:x1]), seed_threshold), split_height)
    return markers[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]


def label_seeds(probs: Any, seeds: Any, block: int, seed_min: int = 1, seed_threshold: float | None = None,
                split_height: float | None = None, halo: int = 64) -> Generator[Progress, None, np.ndarray]:
    """Pass 1: provisional seed ids into ``seeds`` (H, W); returns the provisional -> final seed
    id map (seeds merged across seams, those under ``seed_min`` pixels dropped). With
    ``split_height`` the seeds are the split markers, grown through the interior in pass 2."""
    shape = probs.shape[1:]
    n_blocks = -(-shape[0] // block) * -(-shape[1] // block)
    next_id, counts = 1, np.zeros(1 << 16, np.int64)
    pairs: list[np.ndarray] = []
    above: np.ndarray | None = None  # last row of the previous band of blocks
    band_last = np.zeros(shape[1], np.int64)
    start = time.perf_counter()
    for i, (r, c, (ys, xs)) in enumerate(blocks(shape, block)):
        if c == 0 and r > 0:
            above, band_last = band_last, np.zeros(shape[1], np.int64)
        local, n = ndi.label(_seed_pixels(probs, ys, xs, seed_threshold, split_height, halo))
        ids = np.where(local > 0, local + next_id - 1, 0).astype(np.int64)  # (h, w)
        counts = _grow(counts, next_id + n)
        counts[next_id: next_id + n] = np.bincount(local.ravel(), minlength=n + 1)[1:]
        next_id += n
        if c > 0:  # seam with the block on the left
            left = np.asarray(seeds[ys, xs.start - 1]).astype(np.int64)
            pairs.append(np.stack([left, ids[:, 0]], 1))
        if above is not None:  # seam with the block above
            pairs.append(np.stack([above[xs], ids[0]], 1))
        band_last[xs] = ids[-1]
        seeds[ys, xs] = ids.astype(np.uint32)
        yield Progress(i + 1, n_blocks, time.perf_counter() - start, "seeds")
    counts[0] = 0
    return merge_seeds(pairs, counts[:next_id], seed_min)


def merge_seeds(pairs: list[np.ndarray], counts: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Provisional id -> final seed id (0 = dropped): union over seam ``pairs`` (N, 2), components
    smaller than ``min_size`` pixels dropped, the rest numbered 1..M in order of first id."""
    n = len(counts)
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    edges = edges[(edges[:, 0] > 0) & (edges[:, 1] > 0)]
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)  # (n,)
    size = np.bincount(component, weights=counts, minlength=component.max() + 1)
    keep = size >= min_size
    keep[component[0]] = False  # the background id 0
    order = np.full(len(size), -1, np.int64)
    first = np.sort(np.unique(component[1:], return_index=True)[1] + 1) if n > 1 else np.zeros(0, np.int64)
    kept = component[first]
    kept = kept[keep[kept]]
    order[kept] = np.arange(1, len(kept) + 1)
    final = np.where(order[component] > 0, order[component], 0)
    final[0] = 0
    return final.astype(np.int64)


def grow_instances(probs: Any, seeds: Any, seed_map: np.ndarray, labels: Any, block: int, halo: int,
                   fg_threshold: float = 0.5, seed_threshold: float | None = None,
                   split_height: float | None = None) -> Generator[Progress, None, np.ndarray]:
    """Pass 2: watershed per block with a halo into ``labels``; returns object sizes by id.

    Split markers first flood their interior region down its distance map, as in memory."""
    shape = probs.shape[1:]
    n_blocks = -(-shape[0] // block) * -(-shape[1] // block)
    sizes = np.zeros(int(seed_map.max()) + 1, np.int64)
    start = time.perf_counter()
    for i, (_, _, (ys, xs)) in enumerate(blocks(shape, block)):
        y0, x0 = max(ys.start - halo, 0), max(xs.start - halo, 0)
        y1, x1 = min(ys.stop + halo, shape[0]), min(xs.stop + halo, shape[1])
        p = np.asarray(probs[:, y0:y1, x0:x1], dtype=np.float32)  # (K, h + halos, w + halos)
        markers = seed_map[np.asarray(seeds[y0:y1, x0:x1]).astype(np.int64)]  # global seed ids
        foreground = (p[1] + p[2]) > fg_threshold
        if split_height:

            interior = interior_mask(p, seed_threshold)
            markers = watershed(-interior_distance(interior), markers=markers, mask=interior)
        grown = watershed(p[2], markers=markers, mask=foreground | (markers > 0))
        core = grown[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
        sizes += np.bincount(core.ravel(), minlength=len(sizes))[: len(sizes)]
        labels[ys, xs] = core.astype(labels.dtype)
        yield Progress(i + 1, n_blocks, time.perf_counter() - start, "instances")
    return sizes


def instances_blockwise(probs: Any, labels: Any, scratch: Any, block: int = 1024, halo: int = 64,
                        min_size: int = 10, fg_threshold: float = 0.5, seed_threshold: float | None = None,
                        split_height: float | None = None) -> Generator[Progress, None, int]:
    """Instance labels (H, W) into ``labels`` from probabilities (3, H, W); ``scratch`` is a
    uint32 (H, W) array for provisional seeds. Returns the number of objects."""
    seed_min = 1 if split_height else max(min_size // 4, 1)  # split markers are small by nature
    seed_map = yield from label_seeds(probs, scratch, block, seed_min, seed_threshold, split_height, halo)
    sizes = yield from grow_instances(probs, scratch, seed_map, labels, block, halo, fg_threshold,
                                      seed_threshold, split_height)
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    final = np.zeros(len(sizes), np.int64)
    final[keep] = np.arange(1, int(keep.sum()) + 1)
    if not np.array_equal(final, np.arange(len(sizes))):
        start = time.perf_counter()
        shape = labels.shape
        n_blocks = -(-shape[0] // block) * -(-shape[1] // block)
        for i, (_, _, box) in enumerate(blocks(shape, block)):
            labels[box] = final[np.asarray(labels[box]).astype(np.int64)].astype(labels.dtype)
            yield Progress(i + 1, n_blocks, time.perf_counter() - start, "relabel")
    return int(keep.sum())

