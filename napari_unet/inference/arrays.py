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

from napari_unet import heads
from napari_unet.arrays.layout import array_layout
from napari_unet.config import PredictConfig
from napari_unet.errors import UserError
from napari_unet.events import Progress, relay
from napari_unet.inference.labels import labels_for
from napari_unet.inference.predict import Prediction, predict_probabilities, sized
from napari_unet.inference.uncertainty import check_uncertainty_kind, mc_uncertainty

if TYPE_CHECKING:
    from napari_unet.inference.predict import Prediction


def predict_array(bundle, image: np.ndarray, cfg: PredictConfig = PredictConfig(), *, rgb: bool = False,
                  uncertainty: str = "epistemic") -> Generator[object, None, "Prediction"]:
    """Predict ``image``; with ``cfg.mc_samples`` > 0 also return the chosen uncertainty map. The
    image is scaled so its objects come to the size the model learned (``cfg.diameter``, as
    ``predict.predict_image`` does); ``Prediction.sizing`` says how."""
    image = np.asarray(image)
    if cfg.mc_samples > 0:
        check_uncertainty_kind(uncertainty, bundle.config)
    if image.ndim not in (2, 3, 4):
        raise UserError(f"cannot predict an array of shape {image.shape}: expected 2D, 2D + channels or a stack")
    return (yield from sized(bundle, image, cfg, rgb,
                             lambda img, c: _predict_unscaled(bundle, img, c, rgb, uncertainty)))


def _predict_unscaled(bundle, image: np.ndarray, cfg: PredictConfig, rgb: bool,
                      uncertainty: str) -> Generator[object, None, "Prediction"]:
    """``predict_array`` on the image as it is."""
    mcfg = bundle.config.model
    slices = list(image) if array_layout(image.shape, rgb, mcfg.in_channels, mcfg.dims).is_stack else [image]
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
            maps = mc_uncertainty(np.stack(samples), heads.of(bundle.config))
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


def predict_many(bundle, items: list[tuple[str, np.ndarray, bool]], cfg: PredictConfig = PredictConfig(), *,
                 uncertainty: str = "epistemic") -> Generator[object, None, dict[str, "Prediction"]]:
    """``predict_array`` over (name, array, rgb) items with one ``Progress`` stream for them all;
    returns {name: Prediction}."""
    results, start = {}, time.perf_counter()
    for i, (name, data, rgb) in enumerate(items):
        def overall(event: object, i: int = i, name: str = name) -> Progress | None:
            if not (isinstance(event, Progress) and event.total):
                return None
            return Progress(i * event.total + event.done, len(items) * event.total, time.perf_counter() - start, name)

        results[name] = yield from relay(predict_array(bundle, data, cfg, rgb=rgb, uncertainty=uncertainty), overall)
    return results
