"""Per-model post-processing thresholds: strict seeds split what the argmax rule merges."""

from __future__ import annotations

import numpy as np

from napari_unet.inference.labels import labels_from_probabilities


def two_touching_blobs() -> np.ndarray:
    """(3, H, W) probabilities: two round interiors joined by a bridge of weaker interior."""
    yy, xx = np.mgrid[:40, :60]
    interior = np.maximum(np.exp(-((yy - 20) ** 2 + (xx - 18) ** 2) / 60.0),
                          np.exp(-((yy - 20) ** 2 + (xx - 42) ** 2) / 60.0))
    interior = np.clip(interior * 1.4, 0, 0.97)
    interior[17:24, 18:43] = np.maximum(interior[17:24, 18:43], 0.55)  # the bridge: interior, not confidently
    foreground = np.clip(interior * 2.0, 0, 1)
    boundary = np.clip(foreground - interior, 0, 1) * 0.5
    background = 1 - interior - boundary
    return np.stack([background, interior, boundary]).astype(np.float32)


def test_strict_seeds_split_touching_objects():
    probs = two_touching_blobs()
    loose = labels_from_probabilities(probs, "instances", min_size=5)
    strict = labels_from_probabilities(probs, "instances", min_size=5, seed_threshold=0.8, fg_threshold=0.6)
    assert loose.max() == 1  # the argmax rule sees one object
    assert strict.max() == 2  # confident interiors are two


def test_bundle_carries_thresholds():
    from napari_unet.config import TrainConfig
    from napari_unet.models.bundle import ModelBundle

    bundle = ModelBundle(None, TrainConfig(), {"postprocess": {"seed_threshold": 0.8, "fg_threshold": 0.6, "x": 1}})
    assert bundle.postprocess == {"seed_threshold": 0.8, "fg_threshold": 0.6}
    assert ModelBundle(None, TrainConfig(), {}).postprocess == {}
