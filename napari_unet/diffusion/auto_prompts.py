"""Automatic mask prompts for the diffusion model: object shapes laid out on empty canvases.

The ``synth generate --count`` command and the Synthesize widget's "auto masks" both call
``auto_prompts``. Shapes come from masks given explicitly, else from those the diffusion model
stored when it was trained, else from ``fallback_masks`` (the widget's training set).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from napari_unet.errors import UserError

DEFAULT_DENSITY = 10.0  # objects per 10,000 px when the model records no training median
MIN_SIZE = 16  # smallest prompt side, pixels
PROMPT_SIZE = 128  # default prompt side, pixels


def auto_prompts(bundle: Any, count: int, size: int, seed: int = 0, *, source_masks: Sequence[np.ndarray] | None = None,
                 fallback_masks: Sequence[np.ndarray] | None = None, density: float | None = None,
                 objects: int | None = None, vary: bool = False) -> list[np.ndarray]:
    """``count`` instance masks (size x size) for a ``DiffusionBundle``; ``density``: objects per
    10,000 px (default: the model's training median); ``objects``: a fixed count per image;
    ``vary``: magnification, crowding and touching vary from image to image."""
    # deferred: imports torch
    from napari_unet.diffusion.prompts import object_shapes, prompt_layouts, unpack_shapes

    if count <= 0:
        raise UserError("the number of prompts must be positive")
    if size < MIN_SIZE:
        raise UserError(f"the prompt size must be at least {MIN_SIZE} px")
    if vary and objects is not None:
        raise UserError("varied layouts set each image's object count from the density; leave out the object count")
    stored = getattr(bundle, "shapes", None)
    if source_masks:
        shapes = object_shapes(list(source_masks))
    elif stored is not None:
        shapes = unpack_shapes(stored)
    elif fallback_masks:
        shapes = object_shapes(list(fallback_masks))
    else:
        raise UserError("automatic prompts need object shapes: this model stores none; give masks to take them from")
    if density is None:
        density = float(bundle.meta.get("density", DEFAULT_DENSITY)) if bundle is not None else DEFAULT_DENSITY
    return prompt_layouts(shapes, size, count, density, seed, objects, vary)
