"""Prompts for the diffusion model: mask channels, automatic mask layouts and style tags.

A mask prompt is an instance mask (0 = background, 1..N = objects): drawn in a Labels
layer, taken from an annotation, or made by ``auto_masks`` from the annotated object shapes
(recombined, flipped/rotated, rescaled and elastically deformed, placed without overlap).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_unet.data.augment import elastic_deform
from napari_unet.data.targets import instance_classes
from napari_unet.errors import UserError

MASK_CHANNELS = 3  # foreground, boundary, "a prompt is present"


def mask_channels(mask: np.ndarray) -> np.ndarray:
    """(H, W) instance ids -> (3, H, W) float32: foreground, object boundary, ones."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise UserError(f"a mask prompt must be 2D, got shape {mask.shape}")
    classes = instance_classes(mask.astype(np.int64))
    return np.stack([classes > 0, classes == 2, np.ones_like(classes, bool)]).astype(np.float32)


def object_shapes(masks: Sequence[np.ndarray], min_size: int = 10, max_shapes: int | None = None) -> list[np.ndarray]:
    """Binary crops (h, w) of every annotated object, objects touching an image edge left out."""
    shapes: list[np.ndarray] = []
    for mask in masks:
        mask = np.asarray(mask)
        h, w = mask.shape
        for label, sl in enumerate(ndi.find_objects(mask.astype(np.int64)), start=1):
            if sl is None or sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w:
                continue
            crop = mask[sl] == label
            if crop.sum() >= min_size:
                shapes.append(crop)
            if max_shapes is not None and len(shapes) >= max_shapes:
                return shapes
    if not shapes:
        raise UserError("no object shapes to recombine: the masks hold no object away from the image edge")
    return shapes


def _deform(shape: np.ndarray, rng: np.random.Generator, scale: float, sigma: float) -> np.ndarray:
    """Flip/rotate, rescale and elastically deform one binary shape (h, w) -> (h', w')."""
    shape = np.rot90(shape, int(rng.integers(4)))
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    pad = int(np.ceil(sigma)) + 2
    grown = ndi.zoom(np.pad(shape.astype(np.float32), pad), scale, order=1)  # (h', w')
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    img = torch.from_numpy(np.ascontiguousarray(grown))[None, None]  # (1, 1, h', w')
    warped, _, _ = elastic_deform(img, grid=3, sigma=sigma * scale, generator=gen)
    out = warped[0, 0].numpy() > 0.5
    out = ndi.binary_fill_holes(out)
    lab, n = ndi.label(out)
    if n > 1:  # keep the largest piece
        out = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    return out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] if rows.size else shape


def auto_masks(source_masks: Sequence[np.ndarray], shape: tuple[int, int], count: int | None = None,
               density: float | None = None, seed: int = 0, **kwargs) -> np.ndarray:
    """A new (H, W) uint16 instance mask with ``count`` objects (ids 1..count, no overlap).

    Shapes come from ``source_masks`` (annotated instance masks); ``density`` (objects per
    10,000 px) sets the count when ``count`` is None. See ``layout_shapes`` for the options.
    """
    return layout_shapes(object_shapes(source_masks), shape, count, density, seed, **kwargs)


def layout_shapes(shapes: Sequence[np.ndarray], shape: tuple[int, int], count: int | None = None,
                  density: float | None = None, seed: int = 0, scale: tuple[float, float] = (0.8, 1.2),
                  sigma: float = 2.0, gap: int = 1, attempts: int = 100) -> np.ndarray:
    """Place ``count`` deformed copies of binary ``shapes`` in an (H, W) uint16 instance mask.

    Each copy is flipped/rotated, rescaled by U(``scale``), elastically deformed (control-point
    std ``sigma`` px) and put where it keeps ``gap`` pixels from the others.
    """
    if not len(shapes):
        raise UserError("no object shapes to lay out")
    h, w = (int(s) for s in shape)
    if h < 8 or w < 8:
        raise UserError(f"the prompt mask must be at least 8x8, got {h}x{w}")
    if count is None:
        if density is None:
            raise UserError("give a count or a density of objects")
        count = int(round(density * h * w / 1e4))
    if count < 0:
        raise UserError(f"the object count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w), np.uint16)
    blocked = np.zeros((h, w), bool)  # occupied pixels grown by the gap
    grow = np.ones((2 * gap + 1,) * 2, bool) if gap > 0 else None
    placed = 0
    for _ in range(count):
        for attempt in range(attempts):  # a fresh shape every 10 tries, a fresh position every try
            if attempt % 10 == 0:
                obj = _deform(shapes[int(rng.integers(len(shapes)))], rng, float(rng.uniform(*scale)), sigma)
                if obj.shape[0] >= h or obj.shape[1] >= w:
                    continue
            oh, ow = obj.shape
            if oh >= h or ow >= w:
                continue
            y, x = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
            if not (blocked[y:y + oh, x:x + ow] & obj).any():
                break
        else:
            break  # no room left for another object
        placed += 1
        out[y:y + oh, x:x + ow][obj] = placed
        # block the object grown by the gap (dilated in a window padded by the gap)
        y0, x0, y1, x1 = max(y - gap, 0), max(x - gap, 0), min(y + oh + gap, h), min(x + ow + gap, w)
        local = out[y0:y1, x0:x1] == placed
        blocked[y0:y1, x0:x1] |= ndi.binary_dilation(local, grow) if grow is not None else local
    if placed < count:
        raise UserError(f"could place only {placed} of {count} objects in {h}x{w}: ask for fewer")
    return out


def varied_layouts(shapes: Sequence[np.ndarray], shape: tuple[int, int], n: int, density: float, seed: int = 0,
                   zoom: tuple[float, float] = (0.6, 1.6), crowding: tuple[float, float] = (0.5, 2.0),
                   gaps: Sequence[int] = (0, 1, 2), sigma: float = 3.0, margin: int = 16) -> list[np.ndarray]:
    """``n`` (H, W) instance masks that vary like fields of view of other samples and microscopes.

    Per layout: a magnification drawn log-uniformly from ``zoom`` scales every object (each
    copy jittered by ±15 %) and divides the count by its square; a ``crowding`` factor
    (log-uniform) multiplies the ``density`` (objects per 10,000 px); the gap between objects is
    one of ``gaps`` (0 lets objects touch). Layouts are made ``margin`` px larger on each side
    and cropped, so objects are cut by the edges as in real crops. Where the objects do not
    fit, the count is lowered.
    """
    rng = np.random.default_rng(seed)
    h, w = (int(s) for s in shape)
    full = (h + 2 * margin, w + 2 * margin)
    out = []
    for _ in range(n):
        mag = float(np.exp(rng.uniform(*np.log(zoom))))
        count = int(round(density * float(np.exp(rng.uniform(*np.log(crowding)))) * full[0] * full[1] / 1e4 / mag**2))
        gap, layout_seed = int(rng.choice(list(gaps))), int(rng.integers(2**31))
        while True:
            try:
                layout = layout_shapes(shapes, full, max(count, 1), seed=layout_seed, scale=(0.85 * mag, 1.15 * mag),
                                       sigma=sigma, gap=gap)
                break
            except UserError:
                if count <= 1:
                    raise
                count = int(count * 0.8)
        crop = layout[margin:margin + h, margin:margin + w]
        ids = np.unique(crop[crop > 0])
        relabel = np.zeros(int(layout.max()) + 1, np.uint16)
        relabel[ids] = np.arange(1, ids.size + 1)
        out.append(relabel[crop])
    return out


def prompt_layouts(shapes: Sequence[np.ndarray], size: int, n: int, density: float, seed: int = 0,
                   objects: int | None = None, vary: bool = False) -> list[np.ndarray]:
    """``n`` automatic ``size``² mask prompts from ``shapes``, as the CLI and the Synthesize widget make them.

    ``vary``: ``varied_layouts`` (each image its own magnification, crowding and gaps; the count
    follows ``density``). Otherwise ``layout_shapes`` with ``objects`` objects per image (default:
    ``density`` objects per 10,000 px, at least 1), layout ``k`` seeded with ``seed + k``.
    """
    if vary:
        if objects is not None:
            raise UserError("varied layouts set each image's object count from the density; give no object count")
        return [np.asarray(m) for m in varied_layouts(shapes, (size, size), n, density, seed=seed)]
    count = objects if objects is not None else max(1, int(round(density * size**2 / 1e4)))
    return [np.asarray(layout_shapes(shapes, (size, size), count, seed=seed + k)) for k in range(n)]


def pack_shapes(shapes: Sequence[np.ndarray], size: int = 64, limit: int = 256, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` shapes that fit ``size``², drawn at random, as one (N, size, size) uint8 array."""
    fitting = [s for s in shapes if s.shape[0] <= size and s.shape[1] <= size]
    order = np.random.default_rng(seed).permutation(len(fitting))[:limit]
    out = np.zeros((len(order), size, size), np.uint8)
    for k, i in enumerate(order):
        out[k, : fitting[i].shape[0], : fitting[i].shape[1]] = fitting[i]
    return out


def unpack_shapes(packed: np.ndarray) -> list[np.ndarray]:
    """Inverse of ``pack_shapes``: binary crops to their bounding boxes."""
    out = []
    for s in np.asarray(packed) > 0:
        rows, cols = np.flatnonzero(s.any(1)), np.flatnonzero(s.any(0))
        if rows.size:
            out.append(s[: rows[-1] + 1, : cols[-1] + 1])
    return out


def median_density(masks: Sequence[np.ndarray]) -> float:
    """Median objects per 10,000 px over annotated masks."""
    return float(np.median([np.unique(m[m > 0]).size * 1e4 / m.size for m in masks]))


def auto_tags(mask: np.ndarray) -> list[str]:
    """Style tags read off an annotation: object density (dense/sparse) and size (small/large)."""
    mask = np.asarray(mask)
    ids = np.unique(mask[mask > 0])
    per_10k = ids.size * 1e4 / mask.size
    tags = ["dense" if per_10k >= 8 else "sparse" if per_10k < 2 else "medium"]
    if ids.size:
        mean_area = float((mask > 0).sum()) / ids.size
        tags.append("small" if mean_area < 150 else "large" if mean_area > 600 else "midsize")
    return tags
