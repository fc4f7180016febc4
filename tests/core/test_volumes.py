"""3D: a 3D U-Net trained on small synthetic volumes end to end; 2D models on stacks slice-wise."""

import numpy as np
import torch

from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.events import ValidationReport
from napari_unet.inference.predict import predict_image
from napari_unet.metrics import evaluate_instances
from napari_unet.models.bundle import ModelBundle, build_network
from napari_unet.training.engine import Trainer

torch.set_num_threads(2)


def _volume(rng: np.random.Generator, shape=(20, 40, 40), n=5) -> tuple[np.ndarray, np.ndarray]:
    """Noisy bright balls (radius 4-6) on a dark background and their instance labels."""
    z, y, x = np.indices(shape)
    mask = np.zeros(shape, np.uint16)
    image = rng.normal(0.2, 0.1, shape).astype(np.float32)
    for i in range(n):
        c, r = rng.integers([6, 8, 8], [shape[0] - 6, shape[1] - 8, shape[2] - 8]), rng.integers(4, 7)
        ball = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r * r
        mask[ball & (mask == 0)] = i + 1
        image[ball] += 1.0
    return image, mask


def test_3d_unet_trains_on_volumes_and_segments_a_volume():
    rng = np.random.default_rng(0)
    pairs = [_volume(rng) for _ in range(4)]
    cfg = TrainConfig(model=UNetConfig(dims=3, depth=2, base_width=4), patch_size=24, batch_size=2, steps=80,
                      time_limit=None, learning_rate=1e-2, validation_fraction=0.25, validate_every=1e9)
    events = []
    run = Trainer(pairs, cfg).run()
    try:
        while True:
            events.append(next(run))
    except StopIteration as stop:
        bundle = stop.value
    assert any(isinstance(e, ValidationReport) for e in events)
    image, mask = _volume(np.random.default_rng(5))
    pred = predict_image(bundle, image, PredictConfig(tile_size=16, overlap=4))  # tiled in 3D
    assert pred.probabilities.shape == (3, 20, 40, 40) and pred.labels.shape == mask.shape
    ap = evaluate_instances([(pred.labels, mask)])["ap50"]
    print("3d ap50", ap)
    assert ap > 0.5


def test_2d_model_predicts_a_stack_slice_by_slice():
    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4))
    bundle = ModelBundle(build_network(cfg).eval(), cfg)
    stack = np.random.default_rng(1).random((6, 32, 40)).astype(np.float32)
    pred = predict_image(bundle, stack)
    assert pred.probabilities.shape == (3, 6, 32, 40) and pred.labels.shape == (6, 32, 40)
    one = predict_image(bundle, stack[3])
    assert np.allclose(pred.probabilities[:, 3], one.probabilities, atol=1e-5)
