"""The bundled CC0 nuclei images (DSB 2018): napari sample data and the demo's training set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).parent / "sample_data"
SHOWCASE = "193ffaa5272d5c42"


def sample_names() -> list[str]:
    """Names of all bundled images (sorted)."""
    return sorted(p.stem for p in SAMPLE_DIR.glob("*.png") if not p.stem.endswith("_mask"))


def load_sample(name: str = SHOWCASE) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W), instance labels uint16 (H, W)) of one bundled image."""
    import imageio.v3 as iio

    return iio.imread(SAMPLE_DIR / f"{name}.png"), iio.imread(SAMPLE_DIR / f"{name}_mask.png")


def training_samples() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The bundled pairs the demo trains on (all but the showcase image)."""
    return [(n, *load_sample(n)) for n in sample_names() if n != SHOWCASE]


def nuclei_sample() -> list[tuple]:
    """napari sample-data contribution: the showcase image and its ground-truth labels."""
    image, labels = load_sample(SHOWCASE)
    return [
        (image, {"name": "nuclei"}, "image"),
        (labels, {"name": "nuclei ground truth", "opacity": 0.5}, "labels"),
    ]
