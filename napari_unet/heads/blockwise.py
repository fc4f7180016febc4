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

The same steps run on (Z, Y, X) volumes: blocks and halos are boxes along every axis, seeds are
merged across the seams of all three axes, and ``spacing`` (an anisotropic volume's voxel size,
``arrays.volumes.voxel_spacing``) makes the split markers' distances physical as in memory.

Arrays are anything with numpy slicing (zarr arrays on disk); memory holds a few blocks.
"""

from __future__ import annotations

import time
from typing import Any, Generator, Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import watershed

from napari_unet.config import MIN_SIZE
from napari_unet.events import Progress
from napari_unet.heads.watershed import interior_distance, interior_mask, split_markers

Box = tuple[slice, ...]
Size = int | Sequence[int]  # one extent for every axis, or one per axis


def per_axis(value: Size, ndim: int) -> tuple[int, ...]:
    """``value`` as one int per axis (a scalar repeated)."""
    if np.isscalar(value):
        return (int(value),) * ndim
    value = tuple(int(v) for v in value)
    if len(value) != ndim:
        raise ValueError(f"expected {ndim} extents, got {value}")
    return value


def block_grid(shape: Sequence[int], block: Size) -> Iterator[tuple[tuple[int, ...], Box]]:
    """(grid index, box) of the blocks tiling ``shape`` (any number of axes) in raster order."""
    size = per_axis(block, len(shape))
    counts = [-(-n // b) for n, b in zip(shape, size)]
    for index in np.ndindex(*counts):
        yield index, tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, size, shape))


def n_blocks(shape: Sequence[int], block: Size) -> int:
    return int(np.prod([-(-n // b) for n, b in zip(shape, per_axis(block, len(shape)))]))


def blocks(shape: tuple[int, int], block: int) -> Iterator[tuple[int, int, Box]]:
    """(row, col, (ys, xs)) of the blocks tiling a 2D ``shape`` in raster order."""
    for (r, c), box in block_grid(shape, block):
        yield r, c, box


def with_halo(box: Box, shape: Sequence[int], halo: Size) -> tuple[Box, Box]:
    """(``box`` grown by ``halo`` per axis and clipped to ``shape``, the box inside that one)."""
    h = per_axis(halo, len(shape))
    outer = tuple(slice(max(b.start - e, 0), min(b.stop + e, n)) for b, e, n in zip(box, h, shape))
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
    return outer, inner


def _grow(counts: np.ndarray, n: int) -> np.ndarray:
    return counts if len(counts) >= n else np.concatenate([counts, np.zeros(max(n, 2 * len(counts)) - len(counts), counts.dtype)])


def _seed_pixels(probs: Any, box: Box, seed_threshold: float | None, split_height: float | None,
                 halo: Size, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Seed pixels of one block: confident interior, or with ``split_height`` the split markers
    (computed on the block plus ``halo`` so that they agree with the whole-image ones; ``spacing``:
    an anisotropic volume's voxel size, so distances are physical as in memory)."""
    if not split_height:
        return interior_mask(np.asarray(probs[(slice(None), *box)]), seed_threshold)
    outer, inner = with_halo(box, probs.shape[1:], halo)
    markers, _ = split_markers(interior_mask(np.asarray(probs[(slice(None), *outer)]), seed_threshold),
                               split_height, spacing)
    return markers[inner]


def label_seeds(probs: Any, seeds: Any, block: Size, seed_min: int = 1, seed_threshold: float | None = None,
                split_height: float | None = None, halo: Size = 64,
                spacing: Sequence[float] | None = None) -> Generator[Progress, None, np.ndarray]:
    """Pass 1: provisional seed ids into ``seeds`` (*S: (H, W) or (Z, Y, X)); returns the provisional
    -> final seed id map (seeds merged across the seams of every axis, those under ``seed_min``
    pixels dropped). With ``split_height`` the seeds are the split markers, grown through the
    interior in pass 2."""
    shape = probs.shape[1:]
    total = n_blocks(shape, block)
    next_id, counts = 1, np.zeros(1 << 16, np.int64)
    pairs: list[np.ndarray] = []
    start = time.perf_counter()
    for i, (_, box) in enumerate(block_grid(shape, block)):
        local, n = ndi.label(_seed_pixels(probs, box, seed_threshold, split_height, halo, spacing))
        ids = np.where(local > 0, local + next_id - 1, 0).astype(np.int64)  # (*block)
        counts = _grow(counts, next_id + n)
        counts[next_id: next_id + n] = np.bincount(local.ravel(), minlength=n + 1)[1:]
        next_id += n
        for axis, b in enumerate(box):
            if b.start == 0:
                continue
            face = list(box)  # the last plane of the block before this one along ``axis`` (already written)
            face[axis] = slice(b.start - 1, b.start)
            before = np.asarray(seeds[tuple(face)]).astype(np.int64).ravel()
            pair = np.stack([before, np.take(ids, [0], axis=axis).ravel()], 1)
            pair = pair[(pair[:, 0] > 0) & (pair[:, 1] > 0)]
            if len(pair):
                pairs.append(np.unique(pair, axis=0))
        seeds[box] = ids.astype(np.uint32)
        yield Progress(i + 1, total, time.perf_counter() - start, "seeds")
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


def grow_instances(probs: Any, seeds: Any, seed_map: np.ndarray, labels: Any, block: Size, halo: Size,
                   fg_threshold: float = 0.5, seed_threshold: float | None = None,
                   split_height: float | None = None,
                   spacing: Sequence[float] | None = None) -> Generator[Progress, None, np.ndarray]:
    """Pass 2: watershed per block with a halo into ``labels``; returns object sizes by id.

    Split markers first flood their interior region down its distance map, as in memory."""
    shape = probs.shape[1:]
    total = n_blocks(shape, block)
    sizes = np.zeros(int(seed_map.max()) + 1, np.int64)
    start = time.perf_counter()
    for i, (_, box) in enumerate(block_grid(shape, block)):
        outer, inner = with_halo(box, shape, halo)
        p = np.asarray(probs[(slice(None), *outer)], dtype=np.float32)  # (K, *block + halos)
        markers = seed_map[np.asarray(seeds[outer]).astype(np.int64)]  # global seed ids
        foreground = (p[1] + p[2]) > fg_threshold
        if split_height:
            interior = interior_mask(p, seed_threshold)
            markers = watershed(-interior_distance(interior, spacing), markers=markers, mask=interior)
        grown = watershed(p[2], markers=markers, mask=foreground | (markers > 0))
        core = grown[inner]
        sizes += np.bincount(core.ravel(), minlength=len(sizes))[: len(sizes)]
        labels[box] = core.astype(labels.dtype)
        yield Progress(i + 1, total, time.perf_counter() - start, "instances")
    return sizes


def instances_blockwise(probs: Any, labels: Any, scratch: Any, block: Size = 1024, halo: Size = 64,
                        min_size: int = MIN_SIZE, fg_threshold: float = 0.5, seed_threshold: float | None = None,
                        split_height: float | None = None,
                        spacing: Sequence[float] | None = None) -> Generator[Progress, None, int]:
    """Instance labels (*S: (H, W) or (Z, Y, X)) into ``labels`` from probabilities (3, *S);
    ``scratch`` is a uint32 (*S) array for provisional seeds; ``block`` and ``halo`` are one extent
    or one per axis; ``spacing``: an anisotropic volume's voxel size (the split at saddles measures
    physical distances, as ``instances_from_probabilities`` does). Returns the number of objects."""
    seed_min = 1 if split_height else max(min_size // 4, 1)  # split markers are small by nature
    seed_map = yield from label_seeds(probs, scratch, block, seed_min, seed_threshold, split_height, halo, spacing)
    sizes = yield from grow_instances(probs, scratch, seed_map, labels, block, halo, fg_threshold,
                                      seed_threshold, split_height, spacing)
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    final = np.zeros(len(sizes), np.int64)
    final[keep] = np.arange(1, int(keep.sum()) + 1)
    if not np.array_equal(final, np.arange(len(sizes))):
        start = time.perf_counter()
        total = n_blocks(labels.shape, block)
        for i, (_, box) in enumerate(block_grid(labels.shape, block)):
            labels[box] = final[np.asarray(labels[box]).astype(np.int64)].astype(labels.dtype)
            yield Progress(i + 1, total, time.perf_counter() - start, "relabel")
    return int(keep.sum())
