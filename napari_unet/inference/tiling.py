"""Overlap-tile prediction of images of any size and dimension (the U-Net paper's strategy).

Output tiles overlap by ``overlap`` pixels and are blended with a raised-cosine window; every
tile's input carries enough surrounding pixels that the network output is the same as it would
be on the whole image:

- ``valid`` networks (``margin`` > 0): the image is mirrored at its borders and each tile reads
  ``margin`` extra pixels per side, which the network consumes (Ronneberger 2015, Fig. 2).
- ``same`` networks (``context`` > 0): each tile reads a halo of ``context`` pixels from its
  neighbours (clipped at the image border, where the network pads exactly as it would on the
  whole image); the halo is cropped from the output. With ``context`` at least the network's
  receptive radius, the tile's output equals the whole-image output. 3D networks read less
  (``PredictConfig.volume_context``, measured to keep the whole volume's instances), so that a
  tile's forward pass fits in memory.

Tile starts are multiples of ``align`` (the network's total down-sampling 2**depth), so max
pooling sees the same grid in every tile. The image is read lazily per tile: any array with
numpy slicing (numpy, zarr, dask) works, and ``iter_tiled`` hands back finished slabs along the
first spatial axis, so a caller can stream a huge image to disk with one band of tiles in memory;
``iter_tiled_blocks`` hands back finished boxes of a volume instead (rows of tiles along z, then y),
so memory does not grow with the (Y, X) plane either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Generator, Sequence

import numpy as np

from napari_unet.events import Progress

TileFn = Callable[[np.ndarray], np.ndarray]  # (B, C, *S_in) -> (B, K, *S_out)
AllowedFn = Callable[[int], int]  # smallest output tile size the network supports >= n


@dataclass(frozen=True)
class TileSpec:
    """Geometry of overlap-tile prediction (all sizes in pixels, per spatial axis)."""

    tile: int = 1024  # output tile size
    overlap: int = 64  # minimum overlap of neighbouring output tiles (blended)
    margin: int = 0  # valid networks: input = output + 2 * margin, image mirrored
    context: int = 0  # same networks: halo read from neighbouring pixels, cropped after
    align: int = 1  # tile starts (and same-network tile sizes) are multiples of this


@dataclass(frozen=True)
class Slab:
    """Finished output rows ``[start, stop)`` along the first spatial axis: (K, stop - start, *rest)."""

    start: int
    stop: int
    data: np.ndarray


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Starts (multiples of ``align``) of tiles of length ``tile`` covering ``size``, overlapping
    by at least ``overlap``; the last tile may reach past ``size`` (the image is mirrored there)."""
    if size <= tile:
        return [0]
    overlap = min(overlap, tile // 2)  # an overlap as large as the tile would never advance
    step = max((tile - overlap) // align * align, align)
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + step)
    return starts


def axis_plan(size: int, spec: TileSpec, allowed: AllowedFn) -> tuple[int, list[int]]:
    """(output tile length, tile starts) along one axis of length ``size``."""
    t = allowed(min(size, spec.tile))
    return t, tile_starts(size, t, spec.overlap, spec.align)


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map coordinates outside [0, size) into it by mirroring without repeating the edge pixel
    (numpy's ``reflect`` padding, for any distance)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def read_box(image: Any, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """(C, *box) pixels of ``image`` (C, *S) in the box [lo, hi), mirrored where it leaves the image."""
    slices, takes = [slice(None)], []
    for a, (l, h) in enumerate(zip(lo, hi)):
        idx = reflect_index(np.arange(l, h), image.shape[a + 1])
        first, last = int(idx.min()), int(idx.max()) + 1
        slices.append(slice(first, last))
        takes.append(idx - first)
    block = np.asarray(image[tuple(slices)], dtype=np.float32)  # (C, *bounding box)
    for a, idx in enumerate(takes):
        if len(idx) != block.shape[a + 1] or np.any(idx != np.arange(len(idx))):
            block = np.take(block, idx, axis=a + 1)
    return block


@lru_cache(maxsize=32)
def blend_window(shape: tuple[int, ...], overlap: int) -> np.ndarray:
    """Weights of ``shape``: 1 in the middle, a raised-cosine ramp over ``overlap`` pixels at the edges."""

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, dtype=np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k, dtype=np.float32) + 0.5) / k)
            r[:k], r[n - k:] = edge, edge[::-1]
        return r

    window = np.ones((), dtype=np.float32)
    for n in shape:
        window = np.multiply.outer(window, ramp(n))
    return window.astype(np.float32)


def _tile_boxes(starts: Sequence[int], tiles: Sequence[int], limit: Sequence[int],
                spec: TileSpec) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per axis: input box [lo, hi) in image coordinates, output crop offset and output length."""
    lo, hi, crop, length = [], [], [], []
    for s, t, c in zip(starts, tiles, limit):
        if spec.margin:  # valid network: mirrored context that the network consumes
            lo.append(s - spec.margin)
            hi.append(s + t + spec.margin)
            crop.append(0)
            length.append(t)
        else:  # same network: halo from the neighbours, clipped where the whole image would end
            n = min(t, c - s)
            a, b = max(s - spec.context, 0), min(s + n + spec.context, c)
            lo.append(a)
            hi.append(b)
            crop.append(s - a)
            length.append(n)
    return lo, hi, crop, length


def _plan(shape: tuple[int, ...], spec: TileSpec, allowed: AllowedFn | None) -> tuple[list, tuple, list, list, np.ndarray]:
    """(per-axis plans, tile size, canvas, read limit, blend window) of tiling an image of ``shape``."""
    allowed = allowed or (lambda n: round_up(n, spec.align))
    plans = [axis_plan(size, spec, allowed) for size in shape]
    tiles = tuple(t for t, _ in plans)
    canvas = [starts[-1] + t for t, starts in plans]
    # same networks see the image mirrored up to a multiple of ``align``, as a whole-image run would
    limit = canvas if spec.margin else [round_up(size, spec.align) for size in shape]
    single = all(len(starts) == 1 for _, starts in plans)
    return plans, tiles, canvas, limit, np.ones(tiles, np.float32) if single else blend_window(tiles, spec.overlap)


def _predict_group(fn: TileFn, image: Any, group: Sequence[tuple[Any, ...]],
                   window: np.ndarray) -> Generator[tuple[Any, list[int], np.ndarray, np.ndarray], None, None]:
    """One batch of tiles through ``fn``: per tile (starts, length, output (K, *length) times its
    blend window, the window)."""
    batch = np.stack([read_box(image, lo, hi) for _, lo, hi, _, _ in group])  # (B, C, *S_in)
    result = fn(batch)  # (B, K, *S_res)
    for (starts, _, _, crop, length), res in zip(group, result):
        res = res[(slice(None), *(slice(c, c + n) for c, n in zip(crop, length)))]  # (K, *length)
        win = window[tuple(slice(0, n) for n in length)]
        yield starts, length, res * win, win


def iter_tiled(fn: TileFn, image: Any, n_out: int, spec: TileSpec, allowed: AllowedFn | None = None,
               batch_size: int = 1) -> Generator[Progress | Slab, None, None]:
    """Predict ``image`` (C, *S) tile by tile; yields ``Progress`` per batch and ``Slab`` s of
    blended float32 output in order along the first spatial axis (together covering it once).
    Memory: one band of tile rows (``n_out + 1`` float32 values per pixel of a tile-deep band),
    allocated once, plus one slab."""
    shape = tuple(image.shape[1:])
    plans, tiles, canvas, limit, window = _plan(shape, spec, allowed)
    rest_starts = [starts for _, starts in plans[1:]]
    grid_rest = np.stack(np.meshgrid(*rest_starts, indexing="ij"), -1).reshape(-1, len(rest_starts)) \
        if rest_starts else np.zeros((1, 0), int)
    total = len(plans[0][1]) * len(grid_rest)
    done, begin = 0, time.perf_counter()
    band_lo = 0  # first row of the band buffer (image coordinates along axis 0)
    # every row of tiles starts where the previous one's finished rows end: one tile deep covers it
    band = np.zeros((n_out, tiles[0], *canvas[1:]), np.float32)
    norm = np.zeros((tiles[0], *canvas[1:]), np.float32)
    row_starts = plans[0][1]
    for r, y in enumerate(row_starts):
        boxes = [[y, *rest] for rest in grid_rest.tolist()]
        for group in _tile_groups(boxes, tiles, limit, spec, batch_size):
            for starts, length, res, win in _predict_group(fn, image, group, window):
                dst = (slice(starts[0] - band_lo, starts[0] - band_lo + length[0]),
                       *(slice(s, s + n) for s, n in zip(starts[1:], length[1:])))
                band[(slice(None), *dst)] += res
                norm[dst] += win
            done += len(group)
            yield Progress(done, total, time.perf_counter() - begin, "tiles")
        final = shape[0] if r + 1 == len(row_starts) else min(row_starts[r + 1], shape[0])
        if final > band_lo:
            n = final - band_lo
            rest = tuple(slice(0, s) for s in shape[1:])
            data = band[(slice(None), slice(0, n), *rest)] / np.maximum(norm[(slice(0, n), *rest)], 1e-8)
            yield Slab(band_lo, final, data.astype(np.float32, copy=False))
            band[:, :tiles[0] - n] = band[:, n:]  # keep the overlap with the next row of tiles
            band[:, tiles[0] - n:] = 0
            norm[:tiles[0] - n] = norm[n:]
            norm[tiles[0] - n:] = 0
            band_lo = final


def predict_tiled(fn: TileFn, image: Any, n_out: int, tile: int, overlap: int, margin: int = 0,
                  batch_size: int = 1, on_tile: Callable[[int, int], None] | None = None, *,
                  context: int = 0, align: int = 1, allowed: AllowedFn | None = None) -> np.ndarray:
    """Blend ``fn`` over tiles of ``image`` (C, *S) -> (K, *S) float32 in memory."""
    spec = TileSpec(tile, overlap, margin, context, align)
    out = np.empty((n_out, *image.shape[1:]), np.float32)
    for item in iter_tiled(fn, image, n_out, spec, allowed, batch_size):
        if isinstance(item, Slab):
            out[:, item.start:item.stop] = item.data
        elif on_tile is not None:
            on_tile(item.done, item.total or 0)
    return out


@dataclass(frozen=True)
class Block:
    """Finished output of the spatial box ``box`` (one slice per axis): (K, *extents of the box)."""

    box: tuple[slice, ...]
    data: np.ndarray


def _tile_groups(boxes: Sequence[Sequence[int]], tiles: Sequence[int], limit: Sequence[int], spec: TileSpec,
                 batch_size: int) -> list[list[tuple[Any, ...]]]:
    """Tiles (starts, lo, hi, crop, length) in batches of at most ``batch_size`` equal input shapes."""
    groups: list[list[tuple[Any, ...]]] = []
    for starts in boxes:
        lo, hi, crop, length = _tile_boxes(starts, tiles, limit, spec)
        entry = (starts, lo, hi, crop, length)
        shape_in = [h - l for l, h in zip(lo, hi)]
        prev = groups[-1][-1] if groups else None
        if prev and len(groups[-1]) < batch_size and [h - l for l, h in zip(prev[1], prev[2])] == shape_in:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups


def iter_tiled_blocks(fn: TileFn, image: Any, n_out: int, spec: TileSpec, allowed: AllowedFn | None = None,
                      batch_size: int = 1) -> Generator[Progress | Block, None, None]:
    """``iter_tiled`` for images of three or more spatial axes (volumes) whose band of tiles across
    all the other axes would not fit in memory: tiles run in rows along the first axis and, within
    a row, in rows along the second; each finished box (the first two axes one tile step each, the
    rest whole) is yielded as a ``Block`` (blended float32, together covering the image once), in
    order along the first axis, then the second; a block's data is a view into the buffer, valid until
    the generator resumes (copy or write it before). Memory: ``(n_out + 1)`` float32 values per voxel
    of one tile x tile x rest buffer, plus of the tiles' overlap along the first axis across the
    second and the rest (carried to the next row), whatever the image size."""
    shape = tuple(image.shape[1:])
    if len(shape) < 3:
        raise ValueError(f"iter_tiled_blocks needs three or more spatial axes, got {shape}")
    plans, tiles, canvas, limit, window = _plan(shape, spec, allowed)
    z_starts, y_starts = plans[0][1], plans[1][1]
    rest_starts = [starts for _, starts in plans[2:]]
    grid_rest = np.stack(np.meshgrid(*rest_starts, indexing="ij"), -1).reshape(-1, len(rest_starts)).tolist()
    total = len(z_starts) * len(y_starts) * len(grid_rest)
    rest = tuple(slice(0, s) for s in shape[2:])
    tz, ty = tiles[0], tiles[1]
    depth = tz - (z_starts[1] - z_starts[0]) if len(z_starts) > 1 else 0  # planes carried to the next row
    carry = np.zeros((n_out + 1, depth, canvas[1], *canvas[2:]), np.float32)  # the last channel: weights
    buf = np.zeros((n_out + 1, tz, ty, *canvas[2:]), np.float32)
    done, begin = 0, time.perf_counter()
    for r, z in enumerate(z_starts):
        z_final = shape[0] if r + 1 == len(z_starts) else min(z_starts[r + 1], shape[0])
        buf[:] = 0
        y_lo = 0
        for q, y in enumerate(y_starts):
            for group in _tile_groups([[z, y, *more] for more in grid_rest], tiles, limit, spec, batch_size):
                for starts, length, res, win in _predict_group(fn, image, group, window):
                    dst = (slice(starts[0] - z, starts[0] - z + length[0]),
                           slice(starts[1] - y_lo, starts[1] - y_lo + length[1]),
                           *(slice(s, s + n) for s, n in zip(starts[2:], length[2:])))
                    buf[(slice(0, n_out), *dst)] += res
                    buf[(n_out, *dst)] += win
                done += len(group)
                yield Progress(done, total, time.perf_counter() - begin, "tiles")
            y_final = shape[1] if q + 1 == len(y_starts) else min(y_starts[q + 1], shape[1])
            n = y_final - y_lo
            if n <= 0:
                continue
            if depth:  # what the previous row of tiles along the first axis added to these planes
                buf[:, :depth, :n] += carry[:, :, y_lo:y_final]
            nz = z_final - z
            if nz > 0:
                # normalised in place: the box is overwritten below anyway, and a copy of it (K x tile x
                # tile x X float32) would add to the peak beside the buffers
                acc = buf[(slice(None), slice(0, nz), slice(0, n), *rest)]
                np.maximum(acc[n_out], 1e-8, out=acc[n_out])
                np.divide(acc[:n_out], acc[n_out], out=acc[:n_out])
                yield Block((slice(z, z_final), slice(y_lo, y_final), *rest), acc[:n_out])
            if depth and r + 1 < len(z_starts):
                carry[:, :, y_lo:y_final] = buf[:, nz:nz + depth, :n]
            buf[:, :, :ty - n] = buf[:, :, n:]  # keep the overlap with the next row along the second axis
            buf[:, :, ty - n:] = 0
            y_lo = y_final
