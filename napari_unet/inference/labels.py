"""Labels from a model's output maps: an instance model's through its head (``heads``), a semantic
model's as class indices."""

from __future__ import annotations

import numpy as np

from napari_unet import heads
from napari_unet.arrays.volumes import anisotropic_spacing
from napari_unet.config import MIN_SIZE, TrainConfig
from napari_unet.heads.watershed import Spacing, classes_from_probabilities
from napari_unet.inference.volume_scale import min_object_size


def labels_from_probabilities(probs: np.ndarray, task: str, min_size: int = MIN_SIZE,
                              head: str = TrainConfig.instance_head, spacing: Spacing = None,
                              **thresholds: float | None) -> np.ndarray:
    """Instance labels from the maps of the instance ``head`` (a name in ``heads``; ``thresholds``:
    its ``rule_keys``, e.g. ``instances_from_probabilities``'s for the default head; ``spacing``: an
    anisotropic volume's voxel size) or class indices."""
    if task == "instances":
        told = {} if spacing is None else {"spacing": spacing}  # (heads that run in 3D take it)
        return heads.get(head).instances(probs, min_size, **told, **thresholds)
    return classes_from_probabilities(probs)


def labels_for(bundle, maps: np.ndarray, min_size: int = MIN_SIZE) -> np.ndarray:
    """Labels of a model's output maps with the post-processing stored for it (``ModelBundle``), in
    the physical units of its voxels (``TrainConfig.z_scale``) for a 3D model, whose smallest object
    kept follows the objects it learned (``volume_scale.min_object_size``)."""
    return labels_from_probabilities(maps, bundle.task, min_object_size(bundle, min_size), bundle.config.instance_head,
                                     anisotropic_spacing(bundle.config), **bundle.postprocess)
