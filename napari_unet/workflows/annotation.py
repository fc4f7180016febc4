"""Annotation helpers behind the Annotate widget (pure numpy: no Qt, no napari, no torch).

Three label conventions, matching the three annotation modes:

* ``instances``: 0 = background, 1..N = one id per object (every pixel is annotated).
* ``sparse``: 0 = not annotated (ignored in training), 1 = background, 2.. = classes.
* ``partial``: 0 = not annotated (ignored in training), 1 = background, 2.. = one id per object,
  so a user can paint a few objects and some background and leave the rest to the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_unet.config import MIN_SIZE, USER_TASKS
from napari_unet.data.targets import PAINTED_BACKGROUND, relabel_sequential
from napari_unet.errors import UserError

Mode = str  # a user task (``config.USER_TASKS``) but "classes": "instances" | "sparse" | "partial"
MODES: tuple[str, ...] = tuple(task for task in USER_TASKS if task != "classes")  # dense classes are not painted here
BACKGROUND = PAINTED_BACKGROUND  # the background label of the sparse and partial modes (0 = not annotated there)


@dataclass(frozen=True)
class AnnotationStats:
    """What has been painted so far in one label image."""

    annotated_pixels: int
    total_pixels: int
    objects: int  # instance ids (instances, partial: ids >= 2) or class-2+ connected regions (sparse)
    classes: dict[int, int]  # label value -> pixel count (values > 0)
    background_pixels: int = 0  # pixels painted as background (label 1; sparse and partial only)

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
    elif mode == "partial":
        objects = sum(1 for v in classes if v >= 2)
    else:
        objects = int(ndi.label(labels >= 2)[1])
    background = 0 if mode == "instances" else classes.get(BACKGROUND, 0)
    return AnnotationStats(int(counts.sum()) if counts.size else 0, int(labels.size), objects, classes, background)


def first_object_id(mode: Mode) -> int:
    """The smallest object (or class) label of a mode: 1 for instances, 2 where 1 is background."""
    return 1 if mode == "instances" else 2


def holds_object(labels: np.ndarray, mode: Mode) -> np.ndarray:
    """Where ``labels`` holds an object (not background, not unannotated) in ``mode``."""
    return np.asarray(labels) >= first_object_id(mode)


def next_free_id(labels: np.ndarray, mode: Mode) -> int:
    """The label to paint the next object with: one above the largest used (at least 1, or 2
    where 1 means background)."""
    top = int(np.max(labels)) if np.size(labels) else 0
    return max(top + 1, first_object_id(mode))


def threshold_start(image: np.ndarray, mode: Mode, min_size: int = MIN_SIZE) -> np.ndarray:
    """A rough first annotation from an Otsu threshold of a 2D image (channels averaged).

    ``instances``: connected components of the bright part. ``sparse``: 2 (object) on the bright
    part, 1 (background) on the dark part, with a 2-pixel unannotated gap between them, so the
    uncertain rims are left for the network to decide. ``partial``: the instances' components as
    ids 2.., background 1 on the dark part, the same gap left unannotated.
    """
    from skimage.filters import threshold_otsu

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1 if image.shape[-1] <= 4 else 0)
    finite = np.isfinite(image)
    if not finite.any() or np.ptp(image[finite]) == 0:
        return np.zeros(image.shape, dtype=np.uint8 if mode == "sparse" else np.uint32)
    image = np.where(finite, image, np.median(image[finite]))
    foreground = image > threshold_otsu(image)
    foreground = ndi.binary_opening(foreground, iterations=1)
    if mode in ("instances", "partial"):
        labels = remove_small(ndi.label(foreground)[0].astype(np.uint32), min_size)
        if mode == "instances":
            return labels
        background = ~ndi.binary_dilation(foreground, iterations=2)
        return np.where(labels > 0, labels + 1, np.where(background, BACKGROUND, 0)).astype(np.uint32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[ndi.binary_erosion(foreground, iterations=2)] = 2
    labels[~ndi.binary_dilation(foreground, iterations=2)] = 1
    return labels


def fill_holes(labels: np.ndarray, min_value: int = 1) -> np.ndarray:
    """Fill holes inside every labelled region (each value filled separately); values below
    ``min_value`` are left alone (partial mode passes 2: a ring of background strokes does not
    make its inside background)."""
    out = np.array(labels, copy=True)
    for value, box in enumerate(ndi.find_objects(out.astype(np.int64, copy=False)), start=1):
        if box is None or value < min_value:
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
    In partial mode every pixel becomes annotated too: objects 2.., background 1 (a class
    prediction's objects are its connected foreground regions).
    """
    prediction = np.asarray(prediction)
    if mode in ("instances", "partial"):
        if task == "instances":
            labels = relabel_sequential(prediction).astype(np.uint32)
        else:
            labels = ndi.label(prediction > 0)[0].astype(np.uint32)
        return labels if mode == "instances" else np.where(labels > 0, labels + 1, BACKGROUND).astype(np.uint32)
    if task == "instances":
        return np.where(prediction > 0, 2, 1).astype(np.uint8)
    return (prediction.astype(np.int64) + 1).astype(np.uint8)


def mark_fully_annotated(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Declare ``region`` (boolean, the labels' shape) fully annotated: its unpainted pixels (0)
    become background (1), so every object in it must already be painted; painted pixels stay."""
    labels = np.asarray(labels)
    region = np.asarray(region, dtype=bool)
    if region.shape != labels.shape:
        raise UserError(f"region shape {region.shape} does not match the annotation's {labels.shape}")
    return np.where(region & (labels == 0), BACKGROUND, labels).astype(labels.dtype, copy=False)


def _check_object_mode(mode: Mode) -> None:
    if mode not in ("instances", "partial"):
        raise UserError(f"object corrections need the instances or partial mode, not {mode!r}")


def _inside(shape: tuple[int, ...], y: int, x: int) -> bool:
    return 0 <= y < shape[0] and 0 <= x < shape[1]


def accept_object(labels: np.ndarray, prediction: np.ndarray, y: int, x: int, mode: Mode) -> np.ndarray:
    """Copy the predicted object under (y, x) into ``labels`` with a new free id.

    The object is the connected region of the clicked prediction value (one instance, or one
    blob of a class prediction). It only lands on pixels that hold no annotated object yet, so
    painted objects are never overwritten; in partial mode background (1) under it becomes
    object and its surroundings stay as they are (unannotated pixels stay unannotated).
    Raises ``UserError`` for a click on predicted background or on an object already annotated.
    """
    _check_object_mode(mode)
    labels, prediction = np.asarray(labels), np.asarray(prediction)
    if prediction.shape != labels.shape:
        raise UserError(f"prediction shape {prediction.shape} does not match the annotation's {labels.shape}")
    if not _inside(labels.shape, y, x) or prediction[y, x] == 0:
        raise UserError("click on an object of the prediction to accept it")
    components, _ = ndi.label(prediction == prediction[y, x])
    target = (components == components[y, x]) & ~holds_object(labels, mode)
    if not target.any():
        raise UserError("this object is already annotated")
    out = np.array(labels, copy=True)
    out[target] = next_free_id(labels, mode)
    return out


def remove_object(labels: np.ndarray, y: int, x: int, mode: Mode) -> np.ndarray:
    """Erase the annotated object under (y, x) (every pixel of its id): to 0, which means
    background in instances mode and not annotated in partial mode. Raises ``UserError`` when
    no object is there (background 1 and unannotated pixels are not objects)."""
    _check_object_mode(mode)
    labels = np.asarray(labels)
    if not _inside(labels.shape, y, x) or not holds_object(labels[y, x], mode):
        raise UserError("click on an annotated object to remove it")
    return np.where(labels == labels[y, x], 0, labels).astype(labels.dtype, copy=False)
