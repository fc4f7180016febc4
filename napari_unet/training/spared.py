"""The unannotated pixels a fine-tune's pull towards background leaves alone: the objects its
starting model sees, where the start has shown it can be trusted.

Partial annotations pull every unannotated pixel weakly towards background (``targets.unannotated_prior``).
In the start's own domain that teaches the unpainted objects it already finds as background: ten
corrections of small faint nuclei took the shipped model from 0.781 to 0.419 on the other images of
their kind (docs/benchmarks.md, "Corrections by the object"). Sparing the start's objects fixed that
(0.752) but, on brightfield tissue where the start sees objects all over the textured background,
undid what the pull was for (0.507 -> 0.233). What tells the two apart before training is the
user's own background strokes: the shipped model sees objects on 0.1-3.9 % of the background
painted more than 2 px from the painted objects of fluorescence images, and on 14-95 % of that of
stained, brightfield and EM images
(docs/benchmarks.md, "Sparing the start's objects where it agrees with the painted background").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_unet.config import PredictConfig
from napari_unet.data.targets import PAINTED_BACKGROUND
from napari_unet.inference import predict

SPARED_MARGIN = 2  # pixels around the start's objects left alone as well (their rims)
START_AGREES = 0.1  # the start is trusted when it sees objects on at most this share of the painted background


def painted_background(mask: np.ndarray) -> np.ndarray | None:
    """The background a partial mask paints more than ``SPARED_MARGIN`` pixels from its painted
    objects (a stroke hugging an object meets the start's outline, not its judgement), where the
    mask leaves some pixels unannotated; else None."""
    mask = np.asarray(mask)
    if not (mask == 0).any():
        return None
    background = mask == PAINTED_BACKGROUND
    objects = mask > PAINTED_BACKGROUND
    if objects.any():
        background &= ~ndi.binary_dilation(objects, iterations=SPARED_MARGIN)
    return background if background.any() else None


def start_sees(start, image: np.ndarray) -> np.ndarray:
    """The pixels of ``image`` inside the objects the starting model predicts (as it is, unscaled)."""
    return predict.predict_image(start, image, PredictConfig(diameter="off")).labels > 0


def spared_pixels(seen: np.ndarray, background: np.ndarray) -> tuple[np.ndarray | None, float]:
    """(the unannotated pixels to spare, or None; the share of the ``painted_background`` inside
    the start's objects ``seen``)."""
    share = float(seen[background].mean())
    if share > START_AGREES:
        return None, share
    return (ndi.binary_dilation(seen, iterations=SPARED_MARGIN) if seen.any() else seen), share
