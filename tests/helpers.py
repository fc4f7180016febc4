"""Small helpers shared by test modules (``tests/`` is on ``sys.path`` through its conftest)."""

import torch

from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.models.bundle import ModelBundle, build_network


def drain(gen):
    """Run a core generator to its end and return its value."""
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def run_trainer(trainer):
    """(the returned bundle, every event) of ``trainer.run()``."""
    from napari_unet.events import run_to_end

    events = []
    return run_to_end(trainer.run(), events.append), events


def tiny_bundle(**model) -> ModelBundle:
    """A seeded, untrained depth-2 width-4 instance model (``model``: more UNetConfig fields)."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4, **model))
    return ModelBundle(build_network(cfg).eval(), cfg)


def write_pairs(root, pairs) -> tuple:
    """Write (image, mask) pairs as ``root/images/n{i}.png`` and ``root/masks/n{i}.tif``; return both folders."""
    from napari_unet.files.io import write_image

    images, masks = root / "images", root / "masks"
    for i, (image, mask) in enumerate(pairs):
        write_image(images / f"n{i}.png", image)
        write_image(masks / f"n{i}.tif", mask)
    return images, masks


def bench_module(name: str, folder: str = "bench"):
    """Import ``<folder>/<name>.py`` (``bench/`` or ``bench/peers``) as a module, with its folder on
    ``sys.path`` while it loads and is used; a generator for a pytest fixture: yields the module, then
    takes the folder off the path. ``module.imported`` names the modules its loading imported."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / folder
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        before = set(sys.modules)
        spec.loader.exec_module(module)
        module.imported = set(sys.modules) - before
        yield module
    finally:
        sys.path.remove(str(bench))
