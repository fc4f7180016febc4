"""The U-Net loss-weight map (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))

``d1`` / ``d2`` are the Euclidean distances from pixel ``x`` to the nearest and the
second-nearest object (distinct instance ids > 0). ``w_c`` balances the class frequencies.

Choices (documented here, relied on by the loss):

* The border term is added on background pixels only (``instances == 0``, and ignore
  pixels ``< 0``), as in the paper's figure and common practice: it is meant to force the
  thin background gaps between touching cells to be learned. Object pixels get ``w_c``.
* ``w_c`` is per image: each class weighs ``f_max / f_class`` where ``f`` is its pixel
  frequency, so the more frequent class gets 1. Pixels ``< 0`` ("ignore") are not counted.
* Images with fewer than two objects have no border term.

The fast version never computes one full-image distance transform per object. The border
term is below ``tol`` once ``d1 + d2 > R`` with ``R = sigma * sqrt(2 ln(w0 / tol))``; since
``d1 <= d2``, only pixels within distance ``R`` of an object can be its nearest or
second-nearest *and* matter. So each object gets an exact EDT inside its bounding box grown
by ``R`` (all of the object is in that window, so distances there are exact), and two
running minimum maps keep the smallest two distances. Pixels whose true term is >= ``tol``
are therefore exact, the others are off by less than ``tol`` (absolute).
Works for 2D and 3D (optionally anisotropic ``spacing``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["border_weight_map", "border_weight_map_bruteforce", "class_weight_map", "cutoff_radius"]


def cutoff_radius(w0: float, sigma: float, tol: float) -> float:
    """Distance sum R beyond which ``w0 * exp(-R**2 / (2 sigma**2)) < tol``."""
    if w0 <= tol or sigma <= 0:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def class_weight_map(
    instances: np.ndarray, class_weights: tuple[float, float] | None = None, balance: bool = True
) -> np.ndarray:
    """w_c as float32 (*S): ``class_weights = (background, foreground)`` or frequency balance."""
    fg = instances > 0
    if class_weights is not None:
        w_bg, w_fg = (float(v) for v in class_weights)
    elif balance:
        n_fg = int(np.count_nonzero(fg))
        n_bg = int(np.count_nonzero(instances == 0))
        n_max = max(n_fg, n_bg)
        w_fg = n_max / n_fg if n_fg else 1.0
        w_bg = n_max / n_bg if n_bg else 1.0
    else:
        w_bg = w_fg = 1.0
    return np.where(fg, np.float32(w_fg), np.float32(w_bg)).astype(np.float32)


def _sequential(instances: np.ndarray) -> np.ndarray:
    """Instances as intp with ids <= 0 set to 0, relabelled 1..n if ids are very sparse."""
    inst = np.where(instances > 0, instances, 0)
    top = int(inst.max()) if inst.size else 0
    if top > max(65536, inst.size):  # find_objects would allocate one entry per id
        ids, inv = np.unique(inst, return_inverse=True)
        inst = inv.reshape(inst.shape) if ids[0] == 0 else inv.reshape(inst.shape) + 1
    return inst.astype(np.intp, copy=False)


def _finish(
    instances: np.ndarray, d1: np.ndarray | None, d2: np.ndarray | None, w0: float, sigma: float,
    class_weights: tuple[float, float] | None, balance: bool,
) -> np.ndarray:
    """w_c plus the border term from the two smallest distances, on background pixels."""
    w = class_weight_map(instances, class_weights, balance)  # (*S)
    if d1 is None or d2 is None or w0 == 0 or sigma <= 0:
        return w
    bg = instances <= 0
    s = d1[bg] + d2[bg]  # (n_bg,)
    w[bg] += (w0 * np.exp(-(s * s) / (2.0 * sigma * sigma))).astype(np.float32)
    return w


def border_weight_map(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: tuple[float, float] | None = None,
    balance: bool = True,
    tol: float = 1e-3,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """U-Net weight map (*S) float32 for an instance image (*S) int, 0 = background.

    ``tol`` bounds the absolute error of the border term due to the windowing (see module
    docstring); ``spacing`` gives the pixel size per axis for anisotropic data.
    """
    instances = np.asarray(instances)
    if not np.issubdtype(instances.dtype, np.integer):
        raise TypeError(f"instances must be integers, got {instances.dtype}")
    inst = _sequential(instances)
    nd = inst.ndim
    spc = np.ones(nd) if spacing is None else np.asarray(spacing, dtype=float)
    slices = ndi.find_objects(inst)
    present = [(i + 1, sl) for i, sl in enumerate(slices) if sl is not None]
    if len(present) < 2 or w0 == 0 or sigma <= 0:
        return _finish(instances, None, None, w0, sigma, class_weights, balance)

    radius = cutoff_radius(w0, sigma, tol)
    pad = [int(math.ceil(radius / s)) for s in spc]  # window margin per axis, pixels
    d1 = np.full(inst.shape, np.inf)  # (*S) nearest-object distance
    d2 = np.full(inst.shape, np.inf)  # (*S) second-nearest-object distance
    for lab, sl in present:
        win = tuple(
            slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(sl, pad, inst.shape)
        )
        dist = ndi.distance_transform_edt(inst[win] != lab, sampling=spc)  # (*window)
        a, b = d1[win], d2[win]  # views
        np.minimum(b, np.maximum(a, dist), out=b)
        np.minimum(a, dist, out=a)
    return _finish(instances, d1, d2, w0, sigma, class_weights, balance)


def border_weight_map_bruteforce(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: tuple[float, float] | None = None,
    balance: bool = True,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Reference: one full-image EDT per object, then the two smallest distances per pixel."""
    instances = np.asarray(instances)
    ids = [int(i) for i in np.unique(instances) if i > 0]
    if len(ids) < 2:
        return _finish(instances, None, None, w0, sigma, class_weights, balance)
    dists = np.stack([ndi.distance_transform_edt(instances != i, sampling=spacing) for i in ids])
    two = np.sort(np.partition(dists, 1, axis=0)[:2], axis=0)  # (2, *S) two smallest, sorted
    return _finish(instances, two[0], two[1], w0, sigma, class_weights, balance)
