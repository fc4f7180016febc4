"""Training targets of the flow head (Cellpose-style; Stringer et al. 2021), from instance ids.

Each object's flow is the normalised gradient of a heat distribution diffused inside it from
one source pixel: the object pixel nearest the object's median coordinates (the median of an
elongated or bent object can lie outside it; the nearest pixel that is inside cannot). The
heat spreads by repeated 3x3 averaging over the pixels of the same object only (an insulated
edge), so the gradient follows the object's shape around bends and points, from every pixel,
along a path inside the object towards its source.

Objects diffuse in their own bounding-box crops, batched by crop size: inside a crop that holds
one object, insulated averaging is one 3x3 box filter of the (zero outside) heat divided by the
box count of the object's pixels, so a batch of crops takes one pooling call per step.

Like the star head's targets these are computed after augmentation, from the warped ids
(``data.targets.pack``/``unpack``); the same function checks predicted masks against their
predicted flows at inference (``heads.flow``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

CROP_SIDES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # crop buckets; larger objects use their own side
ITERATIONS_PER_PIXEL = 2  # diffusion steps per pixel of the crop side (the heat front moves 1 px a step; bent objects are longer inside);
# a function of the bucket alone, so an object's flows do not depend on the other objects of its batch
MAX_ITERATIONS = 600  # diffusion steps at most


def object_centres(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per object of ``ids`` (..., H, W), ids unique over the whole array, in increasing id order:
    the flat index of its source pixel (the pixel inside it nearest its median coordinates) and its id."""
    flat = ids.ravel()
    inside = np.flatnonzero(flat)
    if inside.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, flat.dtype)
    coords = np.stack(np.unravel_index(inside, ids.shape)[-2:], axis=1).astype(np.float64)  # (N, 2) y, x
    labels = flat[inside]
    objects, which, counts = np.unique(labels, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    median = np.empty((objects.size, 2))
    for axis in range(2):  # per-object median: sort by (object, coordinate), read the middle of each run
        ranked = coords[np.lexsort((coords[:, axis], which)), axis]
        median[:, axis] = 0.5 * (ranked[starts + (counts - 1) // 2] + ranked[starts + counts // 2])
    dist2 = ((coords - median[which]) ** 2).sum(axis=1)
    best = np.asarray(ndi.minimum_position(dist2, which, np.arange(objects.size)), np.int64).reshape(-1)
    return inside[best], objects


def box_sum(x: torch.Tensor) -> torch.Tensor:
    """3x3 box sums (M, S, S) of ``x`` (M, S, S), zero outside: separable shifted adds (torch's
    avg_pool2d has no fast float64 path on the CPU: 100x slower here)."""
    p = F.pad(x, (1, 1, 1, 1))  # (M, S+2, S+2)
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]  # (M, S, S+2)
    return rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]


UNDERFLOW = 1e-30  # float32 heat in (0, this) inside an object: that crop is diffused again in float64
# (heat falls by at most about 9x per pixel, so an underflow front always leaves such pixels; pieces cut off
# from the source by a warp or a patch border stay exactly 0 in either precision and do not count)


def _diffuse_as(masks: torch.Tensor, sources: torch.Tensor, iterations: int, dtype: torch.dtype) -> torch.Tensor:
    """``diffuse`` in ``dtype``: the heat lives in a zero-bordered buffer (M, S+2, S+2) updated in
    place, so a step is five tensor operations and no allocation."""
    m, s, _ = masks.shape
    inside = masks.to(dtype)
    scale = inside / box_sum(inside).clamp(min=1.0)  # 1 / object pixels in each 3x3 box, 0 outside the object
    padded = torch.zeros(m, s + 2, s + 2, dtype=dtype)
    rows = torch.empty(m, s, s + 2, dtype=dtype)
    box = torch.empty(m, s, s, dtype=dtype)
    heat = padded[:, 1:-1, 1:-1]  # a view: writing it writes the buffer's interior
    source = torch.zeros(m * s * s, dtype=dtype)
    source[sources] = 1.0
    injected = box_sum(source.view(m, s, s)).mul_(scale)  # the unit injected at the source, averaged once:
    for _ in range(iterations):  # heat <- box(heat + source) * scale = box(heat) * scale + injected
        torch.add(padded[:, :-2], padded[:, 1:-1], out=rows).add_(padded[:, 2:])
        torch.add(rows[:, :, :-2], rows[:, :, 1:-1], out=box).add_(rows[:, :, 2:])
        torch.addcmul(injected, box, scale, out=heat)
    return heat.clone()


def diffuse(masks: torch.Tensor, sources: torch.Tensor, iterations: int) -> torch.Tensor:
    """Heat (M, S, S) after ``iterations`` steps of insulated 3x3 averaging inside the one-object
    crops ``masks`` (M, S, S) bool, one unit injected per step at the flat indices ``sources`` (M,).

    Float32, about twice as fast here as float64 on nuclei-sized crops; a crop whose heat
    underflows somewhere inside its object (far ends of long or bent objects: the heat falls off
    about exponentially with the path length) is diffused again in float64. The result is float64."""
    heat = _diffuse_as(masks, sources, iterations, torch.float32).double()
    low = ((heat > 0) & (heat < UNDERFLOW) & masks).flatten(1).any(dim=1)  # (M,)
    if low.any():
        idx = torch.nonzero(low).flatten()
        s = masks.shape[-1]
        heat[idx] = _diffuse_as(masks[idx], sources[idx] % (s * s) + torch.arange(idx.numel()) * s * s,
                                iterations, torch.float64)
    return heat


def _unit_gradient(heat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Unit vectors (M, 2, S, S) float32 (dy, dx) along the gradient of log-heat inside ``masks``:
    central differences, one-sided where a neighbour lies outside the object."""
    log = torch.where(masks, torch.log(heat.clamp(min=1e-300)), torch.zeros_like(heat))
    lp = F.pad(log, (1, 1, 1, 1))
    mp = F.pad(masks, (1, 1, 1, 1))
    s = masks.shape[-1]

    def nb(dy: int, dx: int) -> torch.Tensor:  # the neighbour's log-heat, own value outside the object
        sl = (slice(None), slice(1 + dy, 1 + dy + s), slice(1 + dx, 1 + dx + s))
        return torch.where(mp[sl], lp[sl], log)

    grad = torch.stack([nb(1, 0) - nb(-1, 0), nb(0, 1) - nb(0, -1)], dim=1)  # (M, 2, S, S)
    norm = (grad[:, :1] ** 2 + grad[:, 1:] ** 2).sqrt_()  # (M, 1, S, S); linalg's norm is 10x slower here
    # a gradient under 1e-5 (float32 rounding noise of the log-heat; the source pixel) is shrunk towards zero
    return (grad / norm.clamp(min=1e-5) * masks[:, None]).float()


def _coarse(mask: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) bool -> (ceil(h/f), ceil(w/f)): a coarse pixel is inside where any of its f x f pixels is."""
    if factor == 1:
        return mask
    h, w = mask.shape
    padded = np.zeros((-(-h // factor) * factor, -(-w // factor) * factor), bool)
    padded[:h, :w] = mask
    return padded.reshape(padded.shape[0] // factor, factor, -1, factor).any(axis=(1, 3))


def flow_field(ids: np.ndarray | torch.Tensor, max_side: int | None = None) -> torch.Tensor:
    """Unit flows (N, 2, H, W) float32 (dy, dx; 0 on background and at single-pixel objects) of
    the instance ids (N, H, W), or (2, H, W) of ids (H, W); ids may repeat across images.

    ``max_side``: objects longer than this diffuse on a grid coarsened by the smallest integer
    factor that brings them under it, and take the flow of their coarse pixel (approximate flows
    at a bounded cost, for the consistency check of large masks); None: exact everywhere."""
    ids = ids.cpu().numpy() if torch.is_tensor(ids) else np.asarray(ids)
    single = ids.ndim == 2
    ids = ids[None] if single else ids
    n, h, w = ids.shape
    unique = ids.astype(np.int64) + (np.arange(n).reshape(n, 1, 1) * (int(ids.max()) + 1)) * (ids > 0)
    out = np.zeros((n, 2, h, w), np.float32)
    sources, objects = object_centres(unique)
    boxes = ndi.find_objects(unique)
    buckets: dict[int, list[tuple[int, int]]] = {}  # crop side -> (object index, coarsening factor)
    for k, obj in enumerate(objects):
        box = boxes[obj - 1]
        side = max(box[1].stop - box[1].start, box[2].stop - box[2].start)
        factor = 1 if max_side is None else -(-side // max_side)
        side = -(-side // factor)
        buckets.setdefault(next((c for c in CROP_SIDES if c >= side), side), []).append((k, factor))
    for side, members in buckets.items():
        masks = np.zeros((len(members), side, side), bool)
        local = np.zeros(len(members), np.int64)
        for m, (k, f) in enumerate(members):
            images, ys, xs = boxes[objects[k] - 1]
            b = images.start  # the one image holding the object
            crop = _coarse(unique[b, ys, xs] == objects[k], f)
            masks[m, :crop.shape[0], :crop.shape[1]] = crop
            _, sy, sx = np.unravel_index(sources[k], unique.shape)
            local[m] = m * side * side + (sy - ys.start) // f * side + (sx - xs.start) // f
        masks_t = torch.from_numpy(masks)
        heat = diffuse(masks_t, torch.from_numpy(local), min(MAX_ITERATIONS, ITERATIONS_PER_PIXEL * side + 4))
        flows = _unit_gradient(heat, masks_t).numpy()  # (M, 2, side, side)
        for m, (k, f) in enumerate(members):
            images, ys, xs = boxes[objects[k] - 1]
            b = images.start  # the one image holding the object
            hh, ww = ys.stop - ys.start, xs.stop - xs.start
            fine = flows[m].repeat(f, axis=1).repeat(f, axis=2) if f > 1 else flows[m]
            out[b, :, ys, xs] += fine[:, :hh, :ww] * (unique[b, ys, xs] == objects[k])
    return torch.from_numpy(out[0] if single else out)


def flow_targets(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids (B, H, W) -> object probability target (B, H, W) (1 inside objects) and unit
    flows (B, 2, H, W), float32."""
    return (instances > 0).astype(np.float32), flow_field(instances).numpy()
