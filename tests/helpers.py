"""Small helpers shared by test modules (``tests/`` is on ``sys.path`` through its conftest)."""

import torch

from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.training.checkpoint import ModelBundle, build_network


def drain(gen):
    """Run a core generator to its end and return its value."""
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def tiny_bundle(**model) -> ModelBundle:
    """A seeded, untrained depth-2 width-4 instance model (``model``: more UNetConfig fields)."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4, **model))
    return ModelBundle(build_network(cfg).eval(), cfg)


def ball_volume(rng, shape=(12, 48, 48), n=5, z_scale=1.0):
    """Noisy bright balls (radius 4-7 pixel widths, physically round for voxels ``z_scale`` deep)
    on a dark background and their instance labels (uint16), as (Z, Y, X) arrays."""
    import numpy as np

    z, y, x = np.indices(shape)
    z = z * z_scale
    mask = np.zeros(shape, np.uint16)
    image = rng.normal(0.2, 0.1, shape).astype(np.float32)
    for i in range(n):
        lo, hi = [3 * z_scale, 8, 8], [(shape[0] - 3) * z_scale, shape[1] - 8, shape[2] - 8]
        c, r = rng.uniform(lo, hi), rng.uniform(4, 7)
        ball = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r * r
        mask[ball & (mask == 0)] = i + 1
        image[ball] += 1.0
    return image, mask
