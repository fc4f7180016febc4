"""Predicting in-memory arrays as napari holds them: 2D, colour/multichannel, or stacks.

``predict_array`` is a generator (``Progress`` per slice and MC-dropout pass) that returns a
``Prediction`` whose arrays have the image's spatial shape; stacks (Z, H, W) are predicted
slice by slice by a 2D model and get (Z, H, W) labels and (K, Z, H, W) probabilities; a 3D
model predicts a (Z, H, W) volume in one go (3D tiles).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Generator

import numpy as np

from napari_unet.config import PredictConfig
from napari_unet.errors import UserError
from napari_unet.events import Progress
from napari_unet.data.dataset import n_output_classes
from napari_unet.inference.postprocess import labels_for
from napari_unet.inference.uncertainty import mc_uncertainty

if TYPE_CHECKING:
    from napari_unet.inference.predict import Prediction


def is_stack(image: np.ndarray, in_channels: int, rgb: bool = False) -> bool:
    """Whether a 3D array is a stack of 2D images (rather than one image with channels)."""
    if rgb or image.ndim == 2:
        return False
    if image.ndim == 4:
        return True
    return not (image.shape[0] == in_channels and in_channels > 1) and not (image.shape[-1] == in_channels > 1)


def predict_array(bundle, image: np.ndarray, cfg: PredictConfig = PredictConfig(), *, rgb: bool = False,
                  uncertainty: str = "epistemic") -> Generator[object, None, "Prediction"]:
    """Predict ``image``; with ``cfg.mc_samples`` > 0 also return the chosen uncertainty map."""
    from napari_unet.inference.predict import Prediction, predict_probabilities

    image = np.asarray(image)
    if image.ndim not in (2, 3, 4):
        raise UserError(f"cannot predict an array of shape {image.shape}: expected 2D, 2D + channels or a stack")
    volume_model = bundle.config.model.dims == 3  # a 3D model predicts the whole volume at once
    slices = list(image) if not volume_model and is_stack(image, bundle.config.model.in_channels, rgb) else [image]
    passes = max(cfg.mc_samples, 1)
    total, done, start = len(slices) * passes, 0, time.perf_counter()
    probs_out, labels_out, maps_out = [], [], []
    for index, plane in enumerate(slices):
        samples = []
        for t in range(passes):
            samples.append(predict_probabilities(bundle, plane, cfg, mc_dropout=cfg.mc_samples > 0, seed=t))
            done += 1
            yield Progress(done, total, time.perf_counter() - start, f"slice {index + 1}/{len(slices)}")
        if cfg.mc_samples > 0:
            maps = mc_uncertainty(np.stack(samples), n_output_classes(bundle.config))
            probs = maps["probabilities"]
            maps_out.append(maps[uncertainty])
        else:
            probs = samples[0]
        probs_out.append(probs)
        labels_out.append(labels_for(bundle, probs, cfg.min_size))
    if len(slices) == 1:
        maps = {uncertainty: maps_out[0]} if maps_out else {}
        return Prediction(probs_out[0], labels_out[0], maps)
    labels = np.stack(labels_out)
    if bundle.task == "instances":  # keep ids unique across slices
        offsets = np.cumsum([0] + [int(lab.max()) for lab in labels_out[:-1]])
        labels = np.where(labels > 0, labels.astype(np.int64) + offsets[:, None, None], 0).astype(np.uint32)
    maps = {uncertainty: np.stack(maps_out)} if maps_out else {}
    return Prediction(np.stack(probs_out, axis=1), labels, maps)
