"""The working scale of a 3D model, and the smallest object its labels keep.

**Working scale.** A volume whose objects are too large for a 3D patch can train and predict
scaled down, so that a patch holds a neighbourhood of whole objects; labels come back on the
volume's own grid (in memory and streamed). Decided once, at training, and recorded in the model
folder. ``TrainConfig.volume_scale``:

* ``"off"`` (default): full resolution;
* ``"auto"``: the objects' diameter in a plane (``plane_diameter``; the 2D widest inscribed disc,
  area-weighted median over every plane, as ``size.diameter_of``) is brought to
  ``WORKING_DIAMETER`` pixels when it is larger than that by ``size.DEAD_ZONE``;
* a number: that factor along y and x.

Off by default because it did not pay where it was measured: on the cells3d nuclei volume (nuclei
about 38 pixels across in a plane, 120 s, one thread, 3 seeds x 2 halves) auto trained at x0.51-0.58
made 1.5-2x the steps but merged more touching nuclei (3-4 of 10 against 1-2), AP@0.5 mean 0.606
against 0.707 on the top half (docs/benchmarks.md, "A real volume").

Along z the factor stops where a voxel becomes as deep as it is wide (``working_factors``):
anisotropic stacks lose planes last. ``auto`` scales fully annotated instance volumes only: with
partial annotations (``sparse``: a few annotated planes) a given factor keeps every plane, so no
annotated plane is merged away, but the voxels then become deeper than wide in the other
direction and the patches thicker; that case is not measured, so auto leaves it at full resolution.
The run replaces the setting by the (z, y, x) factors it used and ``z_scale`` by the scaled grid's,
so the model folder describes the grid its network works on (``input_z_scale`` gives back the
volume's own).

**Smallest object.** A 3D instance model records the median voxel count of the objects it was
trained on (``KEY``); its labels drop objects under ``MIN_OBJECT_SHARE`` of it
(``min_object_size``), the false fragments of a model trained briefly on few objects.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from napari_unet.arrays.layout import array_layout
from napari_unet.errors import UserError
from napari_unet.inference import size

AUTO, OFF = "auto", "off"
CHOICES = (AUTO, OFF)  # or a number: the factor along y/x
WORKING_DIAMETER = 20.0  # pixels: objects larger than this (by size.DEAD_ZONE) are scaled down to it
MIN_FACTOR = 1 / size.MAX_FACTOR
KEY = "object_volume"  # model.json ``meta``: voxels of the annotated objects (median) on the working grid
# predicted objects under this share of the learned median volume are dropped (``min_object_size``):
# on cells3d, 120 s models' false objects were fragments of 6-5,300 voxels in the background, the
# nuclei 14,000-60,000; dropping those under 0.05 / 0.1 / 0.25 of the training median took AP@0.5
# 0.333 -> 0.538 / 0.583 / 0.636 (docs/benchmarks.md, "A real volume")
MIN_OBJECT_SHARE = 0.25


def parse_volume_scale(value: Any) -> str | float | tuple[float, ...]:
    """"auto", "off", a positive factor, or the (z, y, x) factors a finished run stored."""
    if isinstance(value, (tuple, list)):
        factors = tuple(float(v) for v in value)
        if len(factors) == 3 and all(np.isfinite(f) and f > 0 for f in factors):
            return factors
    elif isinstance(value, str) and value.strip().lower() in CHOICES:
        return value.strip().lower()
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if np.isfinite(number) and MIN_FACTOR <= number <= size.MAX_FACTOR:
            return number
    raise UserError(f"volume scale must be auto, off or a factor between {MIN_FACTOR:g} and {size.MAX_FACTOR:g}, "
                    f"not {value!r}")


def plane_diameter(masks: Sequence[np.ndarray]) -> float | None:
    """Twice the area-weighted median radius of the widest disc inscribed in each object part of
    every plane of the (Z, Y, X) instance ``masks`` (objects: > 0); None for fewer than
    ``size.MIN_PARTS`` parts."""
    radii, areas = [np.zeros(0)], [np.zeros(0)]
    for mask in masks:
        mask = np.asarray(mask)
        r, a = size.part_radii(mask > 0)
        radii.append(r)
        areas.append(a)
    r, a = np.concatenate(radii), np.concatenate(areas)
    return None if r.size < size.MIN_PARTS else 2.0 * size.weighted_median(r, a)


def working_factors(xy: float, z_scale: float, keep_planes: bool = False) -> tuple[tuple[float, float, float], float]:
    """((z, y, x) factors, the scaled grid's z-scale) for a factor ``xy`` along y/x: a shrinking z
    factor stops where a voxel is as deep as it is wide (1 with ``keep_planes``)."""
    fz = 1.0 if keep_planes else (min(1.0, xy * z_scale) if xy < 1 else xy)
    return (fz, xy, xy), z_scale * xy / fz


def resolved(cfg: Any, masks: Sequence[np.ndarray]) -> tuple[Any, str | None]:
    """(``cfg`` with ``volume_scale`` as (z, y, x) factors and the scaled grid's ``z_scale``, a line
    saying what was decided or None). Unchanged for 2D models and runs that already decided (a
    resumed run); ``UserError`` for a setting ``parse_volume_scale`` refuses."""
    choice = parse_volume_scale(cfg.volume_scale)
    if cfg.model.dims != 3 or isinstance(choice, tuple):
        return cfg, None
    why, xy = "", 1.0
    if choice == AUTO:
        diameter = plane_diameter(masks) if cfg.task == "instances" and not cfg.sparse else None
        if diameter is None:
            why = ("auto scales fully annotated instance volumes only" if cfg.sparse or cfg.task != "instances"
                   else "too few objects to measure")
        elif diameter > WORKING_DIAMETER * size.DEAD_ZONE:
            xy = max(WORKING_DIAMETER / diameter, MIN_FACTOR)
            why = f"objects {diameter:.0f} pixels across"
        else:
            why = f"objects {diameter:.0f} pixels across fit a patch"
    elif choice != OFF:
        xy, why = float(choice), "as asked"
    factors, z_scale = working_factors(xy, float(cfg.z_scale), keep_planes=bool(cfg.sparse))
    cfg = replace(cfg, volume_scale=factors, z_scale=round(z_scale, 6))
    if factors == (1.0, 1.0, 1.0):
        return cfg, f"volumes trained at full resolution ({why or 'volume scale off'})"
    return cfg, (f"volumes trained scaled x{factors[1]:.2f} along y/x and x{factors[0]:.2f} along z ({why}); "
                 "predictions are made at this scale and restored to the volume's grid")


def factors_of(cfg: Any) -> tuple[float, float, float] | None:
    """The (z, y, x) factors a 3D model works at, None when it works at the volumes' own grid."""
    value = getattr(cfg, "volume_scale", None)
    if cfg.model.dims != 3 or not isinstance(value, (tuple, list)):
        return None
    factors = tuple(float(v) for v in value)
    return None if all(f == 1.0 for f in factors) else factors


def input_z_scale(cfg: Any) -> float:
    """The z-scale of the volumes a model is given (its own ``z_scale`` is that of the scaled grid)."""
    factors = factors_of(cfg)
    return float(cfg.z_scale) if factors is None else float(cfg.z_scale) * factors[0] / factors[1]


def volume_shape(image: np.ndarray, in_channels: int) -> tuple[int, ...]:
    """The (Z, Y, X) extents of a volume for a 3D model with ``in_channels`` inputs (``arrays.layout``)."""
    return tuple(array_layout(np.shape(image), False, in_channels, dims=3).spatial)


def working_pair(image: np.ndarray, mask: np.ndarray | None, factors: Sequence[float],
                 in_channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A volume and its mask at the working scale: the image linearly, the mask by nearest neighbour
    (ids, and the 0 = not annotated / 1 = background of partial masks, kept). A mask whose shape is
    not the volume's is left to ``data.dataset.prepare_pairs`` to refuse, both as they are."""
    layout = array_layout(np.shape(image), False, in_channels, dims=3)
    axes, shape = layout.spatial_axes, tuple(layout.spatial)
    if mask is not None and np.shape(mask) != shape:
        return image, mask
    small = size.rescale_image(image, factors, axes)
    if mask is None:
        return small, None
    return small, size.resize_labels(np.asarray(mask), tuple(small.shape[a] for a in axes))


def source_coordinates(start: int, stop: int, n_in: int, n_out: int) -> np.ndarray:
    """Where output voxels ``start..stop-1`` of an axis resized from ``n_in`` to ``n_out`` voxels
    sample the input: voxel centres matched (``scipy.ndimage.zoom`` with ``grid_mode=True``)."""
    return (np.arange(start, stop) + 0.5) * (n_in / n_out) - 0.5


class Resampled:
    """Lazy view of a (C, Z, Y, X) array-like resized to (C, *shape) along its last three axes: a box
    reads only the source box it needs. ``order`` 1: linear, after a Gaussian low-pass along every
    shrinking axis (box by box, equal to ``size.rescale_image`` of the whole: the source box carries
    the filter's reach); ``order`` 0: the voxel under each centre (``size.resize_labels``; labels)."""

    def __init__(self, source: Any, shape: Sequence[int], order: int = 1,
                 factors: Sequence[float] | None = None) -> None:
        """``factors``: the (z, y, x) factors ``shape`` was made with (``size.scaled_shape``), for the
        low-pass's width as ``size.rescale_image`` draws it; default the shapes' ratios."""
        self.source, self.order = source, order
        self.shape = (int(source.shape[0]), *(int(n) for n in shape))
        factors = factors or [m / n for n, m in zip(source.shape[1:], self.shape[1:])]
        self.sigma = [(1 / f - 1) / 2 if order and f < 1 else 0.0 for f in factors]

    def __getitem__(self, key: tuple) -> np.ndarray:
        from scipy import ndimage as ndi

        boxes = [k.indices(n)[:2] for k, n in zip(key, self.shape)]
        axes = list(zip(boxes[1:], self.source.shape[1:], self.shape[1:]))  # ((start, stop), n_in, n_out)
        if self.order == 0:
            index = [size.nearest_index(a, b, n_in, n_out) for (a, b), n_in, n_out in axes]
            lo = [int(i.min()) for i in index]
            box = tuple(slice(a, int(i.max()) + 1) for a, i in zip(lo, index))
            block = np.asarray(self.source[(slice(*boxes[0]), *box)])
            return block[(slice(None), *np.ix_(*[i - a for i, a in zip(index, lo)]))]
        coords = [source_coordinates(a, b, n_in, n_out) for (a, b), n_in, n_out in axes]
        reach = [int(4.0 * s + 0.5) + 1 for s in self.sigma]  # scipy's Gaussian truncates at 4 sigma
        lo = [max(int(np.floor(c.min())) - r, 0) for c, r in zip(coords, reach)]
        hi = [min(int(np.ceil(c.max())) + r + 1, n) for c, r, n in zip(coords, reach, self.source.shape[1:])]
        block = np.asarray(self.source[(slice(*boxes[0]), *(slice(a, b) for a, b in zip(lo, hi)))], np.float32)
        out = np.empty((block.shape[0], *(len(c) for c in coords)), np.float32)
        grid = np.meshgrid(*[np.clip(c, 0, n - 1) - a for c, a, n in zip(coords, lo, self.source.shape[1:])],
                           indexing="ij")
        for i, channel in enumerate(block):
            if any(self.sigma):  # at the source's own borders the edge voxel extends, as for the whole array
                channel = ndi.gaussian_filter(channel, self.sigma, mode="nearest")
            out[i] = ndi.map_coordinates(channel, grid, order=1, mode="nearest")
        return out


def scaled_min_size(min_size: int, factors: Sequence[float]) -> int:
    """The smallest object kept on the working grid, for ``min_size`` voxels on the volume's."""
    return max(1, int(round(min_size * float(np.prod(factors)))))


def learned_volume(cfg: Any, instance_masks: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """``meta[KEY]`` of a 3D instance model trained on fully annotated ``instance_masks`` (on its
    working grid): the median voxel count of their objects; None for other models."""
    if cfg.model.dims != 3 or cfg.task != "instances" or cfg.sparse:
        return None
    counts = [np.bincount(np.asarray(m).ravel().astype(np.intp))[1:] for m in instance_masks if m is not None]
    counts = np.concatenate(counts) if counts else np.zeros(0)
    counts = counts[counts > 0]
    return {"median": int(np.median(counts)), "objects": int(counts.size)} if counts.size else None


def floor_of(learned: dict[str, Any] | None, min_size: int) -> int:
    """``min_size`` voxels, or ``MIN_OBJECT_SHARE`` of the ``learned`` median object (``meta[KEY]``,
    ``learned_volume``) when that is larger: the one rule behind a 3D model's labels
    (``min_object_size``) and its scoring while it trains (validation, keep-best, the guard and
    the post-processing search), so the rule chosen there is the one its labels apply."""
    if not isinstance(learned, dict) or not learned.get("median"):
        return min_size
    return max(min_size, int(round(MIN_OBJECT_SHARE * float(learned["median"]))))


def min_object_size(bundle: Any, min_size: int) -> int:
    """The smallest object a 3D model's labels keep (``floor_of`` its learned volume; 2D models:
    ``min_size``). As any min size it also drops, under a rule without a split height, seeds under
    a quarter of it before they grow (``heads.watershed.instance_seeds``); the cells3d figures were
    measured so."""
    return floor_of(bundle.meta.get(KEY) if bundle.config.model.dims == 3 else None, min_size)
