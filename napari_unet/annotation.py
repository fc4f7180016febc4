"""Annotation helpers behind the Annotate widget (pure numpy: no Qt, no napari, no torch).

Two label conventions, matching the two annotation modes:

* ``instances``: 0 = background, 1..N = one id per object.
* ``sparse``: 0 = not annotated (ignored in training), 1 = background, 2.. = classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_unet.data.targets import relabel_sequential

Mode = str  # "instances" | "sparse"


@dataclass(frozen=True)
class AnnotationStats:
    """What has been painted so far in one label image."""

    annotated_pixels: int
    total_pixels: int
    objects: int  # instance ids (instances) or class-2+ connected regions (sparse)
    classes: dict[int, int]  # label value -> pixel count (values > 0)

    @property
    def fraction(self) -> float:
        return self.annotated_pixels / max(self.total_pixels, 1)


def annotation_stats(labels: np.ndarray, mode: Mode) -> AnnotationStats:
    """Count annotated pixels and objects of a label image."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    classes = {int(v): int(c) for v, c in zip(values, counts)}
    if mode == "instances":
        objects = len(classes)
    else:
        objects = int(ndi.label(labels >= 2)[1])
    return AnnotationStats(int(counts.sum()) if counts.size else 0, int(labels.size), objects, classes)


def next_free_id(labels: np.ndarray, mode: Mode) -> int:
    """The label to paint the next object with: one above the largest used (at least 1, or 2 in sparse mode)."""
    top = int(np.max(labels)) if np.size(labels) else 0
    return max(top + 1, 2 if mode == "sparse" else 1)


def threshold_start(image: np.ndarray, mode: Mode, min_size: int = 10) -> np.ndarray:
    """A rough first annotation from an Otsu threshold of a 2D image (channels averaged).

    ``instances``: connected components of the bright part. ``sparse``: 2 (object) on the bright
    part, 1 (background) on the dark part, with a 2-pixel unannotated gap between them, so the
    uncertain rims are left for the network to decide.
    """
    from skimage.filters import threshold_otsu

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1 if image.shape[-1] <= 4 else 0)
    finite = np.isfinite(image)
    if not finite.any() or np.ptp(image[finite]) == 0:
        return np.zeros(image.shape, dtype=np.uint32 if mode == "instances" else np.uint8)
    image = np.where(finite, image, np.median(image[finite]))
    foreground = image > threshold_otsu(image)
    foreground = ndi.binary_opening(foreground, iterations=1)
    if mode == "instances":
        labels, _ = ndi.label(foreground)
        return remove_small(labels.astype(np.uint32), min_size)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[ndi.binary_erosion(foreground, iterations=2)] = 2
    labels[~ndi.binary_dilation(foreground, iterations=2)] = 1
    return labels


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill holes inside every labelled region (each value filled separately)."""
    out = np.array(labels, copy=True)
    for value, box in enumerate(ndi.find_objects(out.astype(np.int64, copy=False)), start=1):
        if box is None:
            continue
        region = out[box] == value
        filled = ndi.binary_fill_holes(region)
        holes = filled & ~region & (out[box] == 0)
        out[box][holes] = value
    return out


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Erase labelled regions (per value) smaller than ``min_size`` pixels."""
    out = np.array(labels, copy=True)
    values, counts = np.unique(out, return_counts=True)
    small = values[(values > 0) & (counts < min_size)]
    if small.size:
        out[np.isin(out, small)] = 0
    return out


def prediction_to_annotation(prediction: np.ndarray, mode: Mode, task: str) -> np.ndarray:
    """Turn a model's prediction into an editable annotation in the given mode.

    Instance predictions are copied (relabelled 1..N); class predictions (0 = background,
    1.. = classes) become sparse labels (1 = background, 2.. = classes) with every pixel
    annotated. An instance prediction shown in sparse mode becomes background 1 / object 2.
    """
    prediction = np.asarray(prediction)
    if mode == "instances":
        if task == "instances":
            return relabel_sequential(prediction).astype(np.uint32)
        labels, _ = ndi.label(prediction > 0)
        return labels.astype(np.uint32)
    if task == "instances":
        return np.where(prediction > 0, 2, 1).astype(np.uint8)
    return (prediction.astype(np.int64) + 1).astype(np.uint8)
