"""From per-pixel class probabilities to label images: the 3-class head's seeded watershed
(``heads.three_class``) and the argmax of a semantic model (``inference.labels``: any model's labels)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from napari_unet.config import MIN_SIZE
from napari_unet.data.targets import relabel_sequential
from napari_unet.heads.maxima import h_maxima

SPLIT_SMOOTHING = 1.0  # Gaussian sigma (pixels) on the interior distance map before its maxima are taken


Spacing = Sequence[float] | None  # pixel size per axis in pixel widths (``volumes.voxel_spacing``); None: all 1


def interior_distance(interior: np.ndarray, spacing: Spacing = None) -> np.ndarray:
    """Smoothed distance of each interior pixel to the nearest non-interior pixel, in pixel widths:
    with ``spacing`` (an anisotropic volume's (z_scale, 1, 1)) a plane step counts z_scale widths,
    and the smoothing is ``SPLIT_SMOOTHING`` widths along every axis."""
    if spacing is None or all(float(s) == 1.0 for s in spacing):
        return ndi.gaussian_filter(ndi.distance_transform_edt(interior), SPLIT_SMOOTHING)
    sigma = [SPLIT_SMOOTHING / float(s) for s in spacing]
    return ndi.gaussian_filter(ndi.distance_transform_edt(interior, sampling=spacing), sigma)


def split_markers(interior: np.ndarray, height: float, spacing: Spacing = None) -> tuple[np.ndarray, np.ndarray]:
    """(markers, distance): one marker per local maximum of the interior distance map that
    stands at least ``height`` pixel widths above the saddle to its neighbours (h-maxima)."""
    distance = interior_distance(interior, spacing)
    return h_maxima(distance, height) & interior, distance


def interior_mask(probs: np.ndarray, seed_threshold: float | None = None) -> np.ndarray:
    """Seed pixels: interior probability above ``seed_threshold`` (None: interior is the likeliest class)."""
    return probs.argmax(axis=0) == 1 if seed_threshold is None else probs[1] > seed_threshold


def instance_seeds(probs: np.ndarray, seed_threshold: float | None = None, split_height: float | None = None,
                   min_size: int = MIN_SIZE, spacing: Spacing = None) -> np.ndarray:
    """The seed labels of ``instances_from_probabilities`` (one region per object to grow)."""
    interior = interior_mask(probs, seed_threshold)
    with warnings.catch_warnings():  # skimage warns when an image holds a single object
        warnings.simplefilter("ignore", UserWarning)
        if split_height:
            markers, distance = split_markers(interior, split_height, spacing)
            seeds = watershed(-distance, ndi.label(markers)[0], mask=interior)
        else:
            seeds = ndi.label(interior)[0]
        seed_min = 1 if split_height else max(min_size // 4, 1)  # tiny interior specks are noise, not objects
        if seed_min > 1 and seeds.any():
            seeds = remove_small_objects(seeds, max_size=seed_min - 1)
    return seeds


def grow_seeds(probs: np.ndarray, seeds: np.ndarray, fg_threshold: float = 0.5, min_size: int = MIN_SIZE) -> np.ndarray:
    """Instance labels: ``seeds`` grown over the foreground by a watershed on the boundary probability."""
    if not seeds.any():
        return np.zeros(probs.shape[1:], dtype=np.uint16)
    foreground = (probs[1] + probs[2]) > fg_threshold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        labels = watershed(probs[2], markers=seeds, mask=foreground | (seeds > 0))
        if min_size > 1:
            labels = remove_small_objects(labels, max_size=min_size - 1)
    return relabel_sequential(labels)


def instances_from_probabilities(probs: np.ndarray, min_size: int = MIN_SIZE, fg_threshold: float = 0.5,
                                 seed_threshold: float | None = None, split_height: float | None = None,
                                 spacing: Spacing = None) -> np.ndarray:
    """(3, H, W) background/interior/boundary probabilities -> (H, W) instance labels.

    Seeds are connected components of confident *interior* pixels (probability above
    ``seed_threshold``; None: where interior is the most likely class). With ``split_height``,
    an interior region that still joins several objects (a thin neck where the boundary class
    was not predicted) is split at the saddles of its distance map: one seed per h-maximum of
    the smoothed distance to the region's edge. Each seed then grows over the predicted
    foreground (interior + boundary above ``fg_threshold``) by a watershed on the boundary
    probability, so touching objects stay apart along their shared rim. A model folder carries
    the thresholds chosen for it on held-out images (``ModelBundle.postprocess``). ``spacing``:
    the voxel size per axis of an anisotropic volume (``volumes.voxel_spacing``), so the distance
    map and ``split_height`` are physical (in pixel widths) along every axis.
    """
    seeds = instance_seeds(probs, seed_threshold, split_height, min_size, spacing)
    return grow_seeds(probs, seeds, fg_threshold, min_size)


def classes_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """(K, H, W) probabilities -> (H, W) uint8 class indices."""
    return probs.argmax(axis=0).astype(np.uint8)
