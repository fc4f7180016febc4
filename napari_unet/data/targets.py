"""Turning user masks into per-pixel training targets.

Instance task: three classes, 0 = background, 1 = object interior, 2 = object boundary
(the inner one-pixel rim of every object). A thin boundary class is what separates touching
nuclei: the interiors of two touching objects are never connected, so connected components
of the predicted interior give one seed per object.

Partial instance annotations (``sparse`` instances): 0 = not annotated (ignored), 1 =
background, 2.. = objects. Each painted object keeps its own rim as boundary (its painted mask
says where it ends). Unannotated pixels carry no class; their weight is the small pull towards
background of ``LossConfig.unannotated_background`` (``unannotated_prior``; the loss reads a
positive weight on an ``IGNORE`` pixel as that pull, ``heads.losses``).

Semantic task: class indices; ``{0, 255}`` masks read as 0/1. In sparse mode (scribbles) the
napari convention holds: 0 = unannotated (ignored), 1 = background, 2.. = classes.

A head that learns from the instance ids (``heads.Head.needs_ids``) makes its targets after
augmentation, from the warped ids: the class targets and the ids travel through the one
nearest-neighbour warp together, packed into one integer per pixel (``pack``/``unpack``), so
both are copies of the same source pixel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from napari_unet.config import LossConfig
from napari_unet.data.weights import border_weight_map
from napari_unet.errors import UserError
from napari_unet.files.io import labels_dtype

if TYPE_CHECKING:
    import torch

IGNORE = -1
PAINTED_BACKGROUND = 1  # partial and sparse masks: 0 not annotated, 1 background, 2.. objects or classes
INSTANCE_CLASSES = ("background", "interior", "boundary")
_CLASS_CODES = 4  # class target + 1 in 0..3 (0 = IGNORE)


def instance_classes(instances: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) or (D, H, W) instance ids -> int64 classes: 0 background, 1 interior, 2 boundary.

    The boundary is the rim of each object up to ``width`` pixels in (``width`` 1: the inner
    one-pixel rim). Objects too small to keep an interior at that width fall back to the
    one-pixel rim, so every object still has a seed.
    """
    instances = np.asarray(instances)
    classes = (instances > 0).astype(np.int64)
    thin = find_boundaries(instances, mode="inner") & (instances > 0)
    classes[thin] = 2
    if width <= 1 or not instances.any():
        return classes
    size = 2 * width + 1
    same = (ndi.grey_erosion(instances, size=size) == instances) & (ndi.grey_dilation(instances, size=size) == instances)
    wide = (instances > 0) & ~same
    ids = np.unique(instances[instances > 0])
    kept = ndi.maximum(same & (instances > 0), labels=instances, index=ids) > 0  # objects with an interior left
    lost = ids[~np.asarray(kept, dtype=bool)]
    if lost.size:
        wide &= ~np.isin(instances, lost)  # those keep the thin rim only
    classes[wide] = 2
    return classes


def partial_instances(mask: np.ndarray) -> np.ndarray:
    """Partial annotation (0 unannotated, 1 background, 2.. objects) -> instance ids (0 = not an object)."""
    mask = np.asarray(mask).astype(np.int64)
    return np.where(mask >= 2, mask - 1, 0)


def partial_instance_classes(mask: np.ndarray, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Partial annotation -> (classes with ``IGNORE`` where unannotated, instance ids).

    The classes are ``instance_classes`` of the painted objects: an object's rim is found from
    its own painted mask, whether its neighbour is background, another object or unannotated.
    A (Z, Y, X) volume is annotated plane by plane, so there that holds within each plane; across
    planes a rim needs an annotated neighbour (background or another object): a nucleus painted
    in a few planes goes on into the unpainted ones, its face there is not its end
    (``volume_partial_rims``).
    """
    mask = np.asarray(mask)
    ids = partial_instances(mask)
    if mask.ndim == 3 and (mask == 0).any():
        classes = volume_partial_rims(ids, mask > 0, width)
    else:
        classes = instance_classes(ids, width)
    classes[mask == 0] = IGNORE
    return classes, ids


def volume_partial_rims(ids: np.ndarray, annotated: np.ndarray, width: int = 1) -> np.ndarray:
    """Classes (0 background, 1 interior, 2 boundary) of partially annotated (Z, Y, X) instance ``ids``.

    The rim of ``width`` pixels is found in each plane from the painted mask (``instance_classes``
    of the plane); a voxel is also rim where its neighbour in the plane above or below is
    ``annotated`` and holds another id (one voxel deep). With every voxel annotated this is the
    3D inner rim of ``instance_classes`` at ``width`` 1.
    """
    classes = np.stack([instance_classes(plane, width) for plane in ids])  # (Z, Y, X) in-plane rims
    across = np.zeros(ids.shape, bool)
    differs = (ids[1:] != ids[:-1]) & annotated[1:] & annotated[:-1]  # (Z-1, Y, X) faces between planes
    across[:-1] |= differs
    across[1:] |= differs
    classes[across & (ids > 0)] = 2
    return classes


def semantic_classes(mask: np.ndarray, n_classes: int, sparse: bool) -> np.ndarray:
    """User mask -> class indices with ``IGNORE`` for unannotated pixels (sparse mode)."""
    mask = np.asarray(mask).astype(np.int64)
    if sparse:
        target = mask - 1  # 0 (unannotated) -> -1
        if (target >= n_classes).any():
            raise UserError(f"labels go up to {mask.max()}, but sparse mode with {n_classes} classes allows 1..{n_classes}")
        return target
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.int64)
    if values.min() < 0 or values.max() >= n_classes:
        raise UserError(f"mask values {values.min()}..{values.max()} do not fit {n_classes} classes")
    return mask


def class_balance_weights(target: np.ndarray, n_classes: int, power: float = 1.0) -> np.ndarray:
    """w_c: per-class weights (most frequent / frequency) ** ``power``, the most frequent = 1.

    ``power`` 1 balances the classes fully, 0.5 half-way (square root), 0 not at all.
    """
    counts = np.bincount(target[target >= 0].ravel(), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_classes)
    if present.any():
        weights[present] = (counts[present].max() / counts[present]) ** power
    return np.minimum(weights, 10.0)  # cap, so a few stray pixels cannot dominate


def pixel_weights(target: np.ndarray, instances: np.ndarray | None, n_classes: int, cfg: LossConfig,
                  class_weights: np.ndarray | None = None, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """The U-Net weight map w = w_c + w0 exp(-(d1 + d2)^2 / 2 sigma^2) as float32 (H, W).

    ``class_weights`` overrides the per-image w_c (the engine passes dataset-wide ones).
    For instances the distances are measured to the object *interiors*, so the boundary
    pixels where two nuclei touch get the high weight, not only the gaps between them.
    ``spacing`` (pixel size per axis) makes those distances physical for anisotropic volumes.
    """
    if class_weights is None:
        class_weights = class_balance_weights(target, n_classes, cfg.balance_power) if cfg.balance_classes else np.ones(n_classes)
    w = np.where(target >= 0, class_weights[np.clip(target, 0, None)], 0.0).astype(np.float32)
    if instances is not None and cfg.border_w0 > 0:

        interiors = np.where(target == 1, instances, 0)
        border = border_weight_map(interiors, w0=cfg.border_w0, sigma=cfg.border_sigma, balance=False,
                                   spacing=spacing) - 1.0
        w += np.where(target >= 0, border, 0).astype(np.float32)
    return w


def unannotated_pull(cfg) -> float:
    """The weight of an unannotated pixel's pull towards background: ``LossConfig.unannotated_background``
    for partial instance annotations, 0 otherwise (scribbles and fully annotated images: none).

    A positive-unlabelled prior: the pixels nobody painted are mostly background in most images, so
    each pulls towards it a little. Painted objects (weights ~1-10 each) outvote the unpainted ones
    that look like them; background that no stroke reached is still learned (docs/benchmarks.md,
    "Unannotated pixels pull towards background": brightfield K=10 0.223 -> 0.507 at 0.01 with
    stained unchanged; 0.02 gained more on brightfield but lost 0.27 on one stained seed, 0.1
    collapsed stained to 0.081).
    """
    return float(cfg.loss.unannotated_background) if cfg.task == "instances" and cfg.sparse else 0.0


PULL_OBJECTS = 10  # painted objects the pull's weight was chosen for; fewer painted objects pull less


def pull_for_painted(pull: float, painted: int) -> float:
    """The pull for a run with ``painted`` painted objects: ``pull`` (``unannotated_pull``) from
    ``PULL_OBJECTS`` painted objects on, proportionally less below. The same pull per pixel weighs
    twice as much against five painted nuclei as against ten: five stained nuclei collapsed to 0.126
    (0.485 without the pull), and half the pull gave 0.383, brightfield 0.453 against 0.493
    (docs/benchmarks.md, "Every painted count on stained images")."""
    return pull * min(1.0, painted / PULL_OBJECTS)


def unannotated_prior(weights: np.ndarray, target: np.ndarray, pull: float,
                      spared: np.ndarray | None = None) -> np.ndarray:
    """``weights`` with ``pull`` on the unannotated (``IGNORE``) pixels: the pixels the loss pulls
    towards background (``heads.losses``). Held-out validation zones and patch padding keep
    weight 0 and stay out of every loss term. ``spared`` (bool, like ``target``): unannotated pixels
    that are not pulled, because the starting model of a fine-tune sees an object there
    (``training.engine``): an unpainted object the start knows is not taught as background."""
    if pull <= 0:
        return weights
    pulled = target == IGNORE
    if spared is not None:
        pulled &= ~spared
    return np.where(pulled, np.float32(pull), np.where(target == IGNORE, np.float32(0), weights)).astype(np.float32)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N keeping 0 as background (uint16/uint32)."""
    from skimage.segmentation import relabel_sequential as _rs


    out = _rs(labels)[0]
    return out.astype(labels_dtype(int(out.max()) if out.size else 0))


def has_touching_objects(instances: np.ndarray) -> bool:
    """True if two different instances share an edge (a cheap data sanity check)."""
    grown = ndi.grey_dilation(instances, size=3)
    return bool(((grown != instances) & (instances > 0)).any())


def pack(targets: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    """Class targets (B, *S) in -1..2 and instance ids (B, *S) -> one int64 code per pixel."""
    return instances.long() * _CLASS_CODES + (targets.long() + 1)


def unpack(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``pack``: (class targets, instance ids)."""
    return codes % _CLASS_CODES - 1, codes // _CLASS_CODES
