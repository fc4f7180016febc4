"""The bundled CC0 nuclei images (DSB 2018): napari sample data and the demo's training set
(fluorescence), one stained colour image (a second sample, a kind of image the shipped model
never saw); synthetic 3D balls for trying (and testing) 3D models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).parent.parent / "sample_data"
SHOWCASE = "193ffaa5272d5c42"
STAINED = "0c2550a23b8a0f29"  # H&E-like RGB, 256x320, 73 nuclei (DSB 2018 stage1_train)
COLOUR_SAMPLES = (STAINED,)  # kept out of the fluorescence set the demo trains on


def sample_names() -> list[str]:
    """Names of the bundled grey fluorescence images (sorted; the colour ones are apart)."""
    return sorted(p.stem for p in SAMPLE_DIR.glob("*.png")
                  if not p.stem.endswith("_mask") and p.stem not in COLOUR_SAMPLES)


def load_sample(name: str = SHOWCASE) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W), or (H, W, 3) for a colour one; instance labels uint16 (H, W)) of one bundled image."""
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


def stained_sample() -> list[tuple]:
    """napari sample-data contribution: the stained colour image (RGB) and its ground-truth labels."""
    image, labels = load_sample(STAINED)
    return [
        (image[..., :3], {"name": "stained nuclei", "rgb": True}, "image"),
        (labels, {"name": "stained nuclei ground truth", "opacity": 0.5}, "labels"),
    ]


def ball_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (12, 48, 48), n: int = 5,
                z_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy bright balls (radius 4-7 pixel widths, round in tissue for voxels ``z_scale`` deep)
    on a dark background: (image float32 (Z, Y, X), instance labels uint16 (Z, Y, X))."""
    z, y, x = np.indices(shape)
    z = z * z_scale
    mask = np.zeros(shape, np.uint16)
    image = rng.normal(0.2, 0.1, shape).astype(np.float32)
    lo, hi = [3 * z_scale, 8, 8], [(shape[0] - 3) * z_scale, shape[1] - 8, shape[2] - 8]
    for i in range(n):
        c, r = rng.uniform(lo, hi), rng.uniform(4, 7)
        ball = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r * r
        mask[ball & (mask == 0)] = i + 1
        image[ball] += 1.0
    return image, mask
