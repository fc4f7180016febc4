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
