"""Object size: the size a model learned, the size of the objects in front of it, and the rescaling
that brings the second to the first (what Cellpose's ``diameter`` does).

The size statistic is measured on a *foreground* (a boolean mask: the annotated objects of the
training masks, or the union of a prediction's labels), never on instances: a model shown objects
twice the size it learned shatters them into pieces of about its own size, but the pieces still
cover the objects, so their union keeps the true size. Per connected part of the foreground the
widest inscribed disc (the maximum of the Euclidean distance transform) is taken; the diameter is
twice the area-weighted median of these radii over the parts (a speck
of noise weighs its few pixels, a nucleus its area). Touching objects merge into one part whose widest
disc is that of its largest object, in the training masks as in a prediction.

``Sizing`` is what a prediction used: the learned and seen diameters and the factor the image was
scaled by (1: predicted as it is). ``rescale_image`` and ``restore`` move an image to the learned
size and a prediction back to the image's grid (maps linearly, labels nearest, ids kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_unet.errors import UserError

AUTO, OFF = "auto", "off"
DIAMETER_CHOICES = (AUTO, OFF)  # or a number: the objects' diameter in pixels
MAX_FACTOR = 4.0  # the factor is clamped to [1/MAX_FACTOR, MAX_FACTOR]
# no rescale when the seen size is within this factor of the learned one: the zoom augmentation
# (log-uniform over [1/2, 2]) covers it (docs/benchmarks.md, "Object size at prediction")
DEAD_ZONE = 1.3
MIN_PARTS = 3  # fewer foreground parts than this: too few objects to measure; predict as it is
KEY = "object_size"  # the model.json ``meta`` entry of the learned size
LENGTH_KEYS = ("split_height",)  # post-processing settings measured in pixels: they follow the object size


@dataclass(frozen=True)
class Sizing:
    """How a prediction treated object size. ``factor``: the image was scaled by it before the
    network (1: not scaled); ``how``: "off", "given", "auto", or why auto left it at 1."""

    how: str
    factor: float = 1.0
    learned: float | None = None  # diameter (px) the model learned
    seen: float | None = None  # diameter (px) of the objects in the image: estimated (auto) or given
    range: tuple[float, float] | None = None  # the learned diameters' 10th-90th percentiles (auto)

    @property
    def text(self) -> str:
        """One line for a status bar or a terminal."""
        if self.how == OFF or self.learned is None:
            return f"object size: {self.how}"
        seen = f"{self.seen:.1f} px" if self.seen is not None else "not measured"
        what = "given" if self.how == "given" else "estimated"
        scaled = f"image scaled x{self.factor:.2f}" if self.factor != 1 else "image not scaled"
        why = f" ({self.how})" if self.how not in ("given", AUTO) else ""
        return f"object size: {what} {seen}, learned {self.learned:.1f} px; {scaled}{why}"


def parse_diameter(value: Any) -> str | float:
    """"auto", "off" or a positive diameter in pixels; ``UserError`` otherwise."""
    if isinstance(value, str) and value.strip().lower() in DIAMETER_CHOICES:
        return value.strip().lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"diameter must be auto, off or a number of pixels, not {value!r}") from None
    if not np.isfinite(number) or number <= 0:
        raise UserError(f"diameter must be a positive number of pixels (or auto / off), not {value!r}")
    return number


def part_radii(foreground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(radius of the widest inscribed disc, area) of each connected part of a 2D foreground, or of
    each plane's parts for a (Z, H, W) stack; the image border counts as background."""
    fg = np.asarray(foreground, bool)
    planes = fg[None] if fg.ndim == 2 else fg.reshape(-1, *fg.shape[-2:])
    radii, areas = [np.zeros(0)], [np.zeros(0)]
    for plane in planes:
        if not plane.any():
            continue
        edt = ndi.distance_transform_edt(np.pad(plane, 1))[1:-1, 1:-1]
        parts, n = ndi.label(plane)
        radii.append(np.asarray(ndi.maximum(edt, parts, np.arange(1, n + 1)), float))
        areas.append(np.bincount(parts.ravel(), minlength=n + 1)[1:].astype(float))
    return np.concatenate(radii), np.concatenate(areas)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The value below which the share ``q`` of the total weight lies."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][min(np.searchsorted(cum, cum[-1] * q), len(cum) - 1)])


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half the total weight lies."""
    return weighted_quantile(values, weights, 0.5)


def diameter_of(foreground: np.ndarray) -> tuple[float | None, int]:
    """(twice the part radius at the area-weighted median, parts) of a foreground: a speck of noise
    weighs its few pixels; None when it has under ``MIN_PARTS`` parts."""
    radii, areas = part_radii(foreground)
    if radii.size < MIN_PARTS:
        return None, int(radii.size)
    return 2.0 * weighted_median(radii, areas), int(radii.size)


def learned_size(instance_masks: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """The ``meta[KEY]`` of a model trained on these instance masks (> 0: an annotated object; only
    the painted objects of partial masks): the median over the masks of each one's diameter as
    ``diameter_of`` measures it (a training set of many kinds of images has one typical size, not
    the size of its largest objects), the range it learned, and the parts measured.

    The range spans the 10th to 90th percentile of the masks' diameters and of the single objects'
    diameters, whichever is wider: a model trained on one image learned the sizes of its objects,
    not one size. (With the masks' percentiles alone, one image gave a range of one value and
    ``auto`` shrank images of the very magnification it was trained at: stained K=20 0.489 against
    0.540, docs/benchmarks.md, "Object size at prediction".)"""
    diameters, objects, weights = [], [np.zeros(0)], [np.zeros(0)]
    for mask in instance_masks:
        radii, areas = part_radii(np.asarray(mask) > 0)
        if radii.size:
            diameters.append(2.0 * weighted_median(radii, areas))
            objects.append(2.0 * radii)
            weights.append(areas)
    if not diameters:
        return None
    low, mid, high = np.percentile(diameters, [10, 50, 90])
    single, area = np.concatenate(objects), np.concatenate(weights)
    low = min(low, float(np.percentile(single, 10)))
    high = max(high, float(np.percentile(single, 90)), weighted_quantile(single, area, 0.9))
    return {"diameter": round(float(mid), 2), "range": [round(float(low), 2), round(float(high), 2)],
            "images": len(diameters), "parts": int(single.size)}


def learned_diameter(meta: dict) -> float | None:
    """The diameter a model folder's ``meta`` records, None when it records none."""
    entry = meta.get(KEY) or {}
    value = entry.get("diameter") if isinstance(entry, dict) else None
    return float(value) if value else None


def learned_range(meta: dict) -> tuple[float, float] | None:
    """The (low, high) diameters a model learned (``learned_size``'s range, widened to hold its
    diameter); None when ``meta`` records no size."""
    learned = learned_diameter(meta)
    if learned is None:
        return None
    low, high = (meta[KEY].get("range") or (learned, learned))
    return float(min(low, learned)), float(max(high, learned))


def factor_for(learned: float | tuple[float, float], seen: float, dead_zone: float = DEAD_ZONE) -> float:
    """The factor that brings objects of diameter ``seen`` into the ``learned`` diameter or range
    (low, high): 1 within the range widened by ``dead_zone``, else to its nearer end, clamped to
    [1/MAX_FACTOR, MAX_FACTOR]. A model trained on images of many sizes keeps all of them."""
    low, high = (learned, learned) if np.isscalar(learned) else learned
    if low / dead_zone < seen < high * dead_zone:
        return 1.0
    factor = (low if seen <= low / dead_zone else high) / seen
    return float(np.clip(factor, 1 / MAX_FACTOR, MAX_FACTOR))


def scaled_shape(shape: Sequence[int], factor: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * factor))) for n in shape)


def rescale_image(image: np.ndarray, factor: float | Sequence[float], axes: Sequence[int]) -> np.ndarray:
    """``image`` resized by ``factor`` (one for every axis, or one per axis of ``axes``) along its
    spatial ``axes`` (linear; a Gaussian low-pass first along the axes it shrinks), in float32."""
    image = np.asarray(image, np.float32)
    factors = dict(zip(axes, [float(factor)] * len(axes) if np.isscalar(factor) else [float(f) for f in factor]))
    sigma = [(1 / factors[a] - 1) / 2 if factors.get(a, 1.0) < 1 else 0.0 for a in range(image.ndim)]
    if any(sigma):
        image = ndi.gaussian_filter(image, sigma, mode="nearest")
    zoom = [scaled_shape([n], factors[a])[0] / n if a in factors else 1.0 for a, n in enumerate(image.shape)]
    return ndi.zoom(image, zoom, order=1, mode="nearest", grid_mode=True)


def resize_maps(maps: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Maps (..., *spatial) resized linearly to (..., *shape): the last ``len(shape)`` axes."""
    spatial = maps.shape[maps.ndim - len(shape):]
    zoom = [1.0] * (maps.ndim - len(shape)) + [t / s for t, s in zip(shape, spatial)]
    return ndi.zoom(np.asarray(maps, np.float32), zoom, order=1, mode="nearest", grid_mode=True)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Labels (..., *spatial) resized to (..., *shape) by nearest neighbour (ids kept): the last
    ``len(shape)`` axes, each output voxel taking the label under its centre."""
    spatial = labels.shape[labels.ndim - len(shape):]
    return labels[(Ellipsis, *np.ix_(*[nearest_index(0, t, s, t) for t, s in zip(shape, spatial)]))]


def nearest_index(start: int, stop: int, n_in: int, n_out: int) -> np.ndarray:
    """The input voxel under the centre of output voxels ``start..stop-1`` of an axis resized from
    ``n_in`` to ``n_out`` voxels."""
    return np.minimum(((np.arange(start, stop) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)


def rule_for_size(rule: dict[str, Any], learned: float | None, start: float | None,
                  dead_zone: float = DEAD_ZONE) -> tuple[dict[str, Any], float]:
    """(a starting model's post-processing ``rule`` for a model fine-tuned on objects of diameter
    ``learned``, the factor its lengths were scaled by). The rule's lengths (``LENGTH_KEYS``: the
    3-class head's split height, in pixels) were chosen for objects of diameter ``start``; they
    are scaled by ``learned / start`` (clamped to [1/MAX_FACTOR, MAX_FACTOR]) when that ratio is
    outside [1/dead_zone, dead_zone], else kept. A split height of 1 px that separates touching
    nuclei of 16 px shatters cells of 50 px at every bay of their outline (isbi2012 EM;
    docs/benchmarks.md, "Post-processing at the objects' size")."""
    if not learned or not start or not any(rule.get(k) for k in LENGTH_KEYS):
        return rule, 1.0
    ratio = learned / start
    if 1 / dead_zone <= ratio <= dead_zone:
        return rule, 1.0
    ratio = float(np.clip(ratio, 1 / MAX_FACTOR, MAX_FACTOR))
    return {k: round(v * ratio, 2) if k in LENGTH_KEYS and v else v for k, v in rule.items()}, ratio
