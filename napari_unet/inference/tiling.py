"""Overlap-tile prediction of images of any size (the U-Net paper's tiling strategy).

The image is mirrored at its borders, cut into overlapping tiles, and the tile outputs are
blended with a smooth window so tile seams leave no trace. ``margin`` is the context a
``valid``-padding network consumes per side (0 for ``same`` networks).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterator

import numpy as np

TileFn = Callable[[np.ndarray], np.ndarray]  # (B, C, h + 2m, w + 2m) -> (B, K, h, w)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap``."""
    if size <= tile:
        return [0]
    step = max(tile - overlap, 1)
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


@lru_cache(maxsize=16)
def blend_window(h: int, w: int, overlap: int) -> np.ndarray:
    """(h, w) weights: 1 in the middle, a raised-cosine ramp over ``overlap`` pixels at the edges."""

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, dtype=np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k, dtype=np.float32) + 0.5) / k)
            r[:k], r[n - k:] = edge, edge[::-1]
        return r

    return np.outer(ramp(h), ramp(w))


def iter_tiles(shape: tuple[int, int], tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(y0, x0, h, w) of each output tile."""
    h, w = shape
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            yield y, x, min(tile, h), min(tile, w)


def predict_tiled(fn: TileFn, image: np.ndarray, n_out: int, tile: int, overlap: int, margin: int = 0,
                  batch_size: int = 1, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Blend ``fn`` over tiles of ``image`` (C, H, W) -> (K, H, W) float32."""
    c, h, w = image.shape
    padded = np.pad(image, ((0, 0), (margin, margin), (margin, margin)), mode="reflect" if min(h, w) > margin else "symmetric") if margin else image
    out = np.zeros((n_out, h, w), dtype=np.float32)
    norm = np.zeros((h, w), dtype=np.float32)
    tiles = list(iter_tiles((h, w), tile, overlap))
    for i in range(0, len(tiles), batch_size):
        group = tiles[i:i + batch_size]
        batch = np.stack([padded[:, y:y + th + 2 * margin, x:x + tw + 2 * margin] for y, x, th, tw in group])
        result = fn(batch)  # (B, K, th, tw)
        for (y, x, th, tw), res in zip(group, result):
            win = blend_window(th, tw, overlap) if len(tiles) > 1 else np.ones((th, tw), np.float32)
            out[:, y:y + th, x:x + tw] += res * win
            norm[y:y + th, x:x + tw] += win
        if on_tile is not None:
            on_tile(min(i + batch_size, len(tiles)), len(tiles))
    return out / np.maximum(norm, 1e-8)
