"""The 3D rules in one place: voxel spacing, 3D patches and previews (what counts as a volume is
``layout.is_volume``).

A 3D model (``UNetConfig.dims == 3``) trains on (Z, Y, X) volumes, optionally with channels
((C, Z, Y, X), (Z, C, Y, X) or (Z, Y, X, C)). Voxels may be anisotropic: ``TrainConfig.z_scale``
is the voxel depth in units of the pixel width (``napari`` layer scale z / y). The core uses it
where a z-step is not an x/y-step:

* patches hold ``side / z_scale`` planes, so a patch covers about a cube of tissue (the default sizes,
  ``runtime.sizes``, also keep it inside the volumes);
* elastic displacements are drawn in physical units (z displacements shrink by ``z_scale``);
  90-degree rotations only turn the (Y, X) plane; flips are exact on every axis anyway;
* the border weights of the U-Net loss measure physical distances (``distance_transform_edt``
  with ``sampling``), so ``border_sigma`` means the same tissue distance along every axis.

The network keeps isotropic 3x3x3 convolutions and 2x2x2 pooling (as the 3D U-Net of Çiçek
et al. 2016, trained on anisotropic stacks): for the moderate anisotropy of most confocal
nuclei stacks (z_scale up to ~3) the thinner patches already balance the field of view, and
one tiling/alignment rule stays valid for every axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_unet.errors import UserError

MIN_PATCH_PLANES = 4  # a 3D patch holds at least this many z-planes
PREVIEW_HALF_PLANES = 8  # the cheap live preview of one plane predicts this many planes each side


def voxel_spacing(cfg) -> tuple[float, ...]:
    """Pixel size per spatial axis in units of the pixel width: (z_scale, 1, 1) or (1, 1)."""
    return (float(cfg.z_scale), 1.0, 1.0) if cfg.model.dims == 3 else (1.0, 1.0)


def anisotropic_spacing(cfg) -> tuple[float, ...] | None:
    """``voxel_spacing`` of a 3D model whose voxels are not cubes (``z_scale != 1``), else None: what
    a 3D-capable instance head is told (``spacing=``) so its post-processing measures physical distances."""
    return voxel_spacing(cfg) if cfg.model.dims == 3 and float(cfg.z_scale) != 1.0 else None


def patch_shape(cfg) -> tuple[int, ...]:
    """Training patch size per spatial axis: (P, P), or (P / z_scale, P, P) for a 3D model told one
    side P; a (z, y, x) ``patch_size`` (the 3D default, ``runtime.sizes``) as it is."""
    size = cfg.patch_size
    if not np.isscalar(size):
        shape = tuple(int(s) for s in size)
        if len(shape) != cfg.model.dims or min(shape) < 1:
            raise UserError(f"a {cfg.model.dims}D model needs {cfg.model.dims} patch extents, got {size}")
        return shape
    p = int(size)
    if cfg.model.dims != 3:
        return (p, p)
    return (planes_for(p, cfg.z_scale), p, p)


def planes_for(side: int, z_scale: float) -> int:
    """The z-planes of a patch ``side`` pixel widths wide that covers about a cube of tissue."""
    return max(MIN_PATCH_PLANES, int(round(side / float(z_scale))))


def check_volume_config(cfg) -> None:
    """Raise ``UserError`` for a z-scale a 3D model cannot use (``cfg``: a ``TrainConfig``; whether its
    instance head runs in 3D is ``heads.check_head_dims``)."""
    if not (cfg.z_scale > 0 and math.isfinite(cfg.z_scale)):
        raise UserError(f"the z-scale must be a positive number, got {cfg.z_scale}")


def z_scale_of(scale: Sequence[float]) -> float:
    """Voxel depth over pixel width from a napari layer's ``scale`` (1 for 2D layers)."""
    if len(scale) < 3:
        return 1.0
    width = float(np.mean([abs(float(s)) for s in scale[-2:]]))
    return abs(float(scale[-3])) / width if width > 0 else 1.0


def annotated_z_range(labels: np.ndarray) -> slice:
    """The z-range from the first to the last plane of a (Z, Y, X) annotation holding a label.

    A 3D model trains on this slab only when 0 means background (annotate every plane of the
    range): planes outside it were never annotated. With partial annotations or scribbles 0 is
    "not annotated" anyway and the whole volume trains (``layout.annotated_planes``).
    """
    planes = np.flatnonzero(np.asarray(labels).reshape(labels.shape[0], -1).any(axis=1))
    if planes.size == 0:
        raise UserError("the annotations are empty: nothing is annotated")
    return slice(int(planes[0]), int(planes[-1]) + 1)


def preview_slab(volume: np.ndarray, z: int, half: int = PREVIEW_HALF_PLANES) -> tuple[np.ndarray, int]:
    """Planes ``z - half .. z + half`` of ``volume`` (Z, ...) (clipped) and the index of ``z`` in
    them: a 3D model sees enough depth to preview one plane cheaply."""
    z = int(np.clip(z, 0, volume.shape[0] - 1))
    lo, hi = max(z - half, 0), min(z + half + 1, volume.shape[0])
    return np.asarray(volume[lo:hi]), z - lo
