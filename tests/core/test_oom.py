"""Out of GPU memory: training halves its batch, prediction its batch then its tile, and retries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.errors import UserError
from napari_unet.events import Message
from napari_unet.inference import predict as predict_module
from napari_unet.models.unet import UNet
from napari_unet.models.bundle import ModelBundle, build_network
from napari_unet.training.engine import Trainer

MASK = np.zeros((48, 48), np.uint16)
MASK[5:17, 6:20], MASK[25:40, 22:35] = 1, 2
PAIRS = [(((MASK > 0) * 0.7 + np.random.default_rng(i).random(MASK.shape) * 0.3).astype(np.float32), MASK)
         for i in range(2)]
CFG = TrainConfig(model=UNetConfig(depth=2, base_width=4), patch_size=32, batch_size=4, steps=3, time_limit=None,
                  threads=1, preview_every=0, low_precision=False, device="cpu")


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def _oom_on(calls: set[int], seen: list[int]):
    original = UNet.forward

    def forward(self, x):  # (B, C, H, W)
        seen.append(x.shape[0])
        if len(seen) in calls:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, x)

    return forward


def test_training_oom_halves_the_batch_and_retries(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(UNet, "forward", _oom_on({1}, seen))
    events, bundle = _run(Trainer(PAIRS, CFG).run())
    assert seen == [4, 2, 2, 2]  # the failed batch of 4, then three steps with 2
    assert any(isinstance(e, Message) and "batch size halved to 2" in e.text for e in events)
    assert bundle.meta["training"]["steps"] == 3 and bundle.meta["training"]["batch_size"] == 2


def test_training_oom_at_batch_one_is_a_user_error(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(UNet, "forward", _oom_on(set(range(1, 100)), seen))
    with pytest.raises(UserError, match="even with batch size 1"):
        _run(Trainer(PAIRS, CFG).run())
    assert seen == [4, 2, 1]


@pytest.fixture()
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4))
    return ModelBundle(build_network(cfg).eval(), cfg, {})


def test_smaller_after_oom_halves_batch_then_tile():
    cfg = PredictConfig(tile_size=256, batch_size=2, overlap=64)
    steps = [cfg := predict_module.smaller_after_oom(cfg) for _ in range(3)]
    assert [(c.batch_size, c.tile_size, c.overlap) for c in steps] == [(1, 256, 64), (1, 128, 32), (1, 64, 16)]
    with pytest.raises(UserError, match="even with 64-pixel tiles"):
        predict_module.smaller_after_oom(steps[-1])


def test_prediction_oom_retries_with_a_smaller_tile(bundle, monkeypatch):
    image = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    expected = predict_module.predict_probabilities(bundle, image, PredictConfig(tile_size=128, overlap=32))
    shapes: list[tuple[int, ...]] = []
    original = predict_module.network_forward

    def forward(net, batch, dtype=None):  # batch (B, C, h, w)
        shapes.append(batch.shape)
        if len(shapes) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(net, batch, dtype)

    monkeypatch.setattr(predict_module, "network_forward", forward)
    probs = predict_module.predict_probabilities(bundle, image, PredictConfig(tile_size=128, overlap=32))
    assert max(s[-1] for s in shapes[1:]) < shapes[0][-1]  # retried with smaller tiles
    assert probs.shape == (3, 256, 256) and np.isfinite(probs).all()
    assert np.abs(probs - expected).max() < 0.05  # same model, smaller tiles: the same prediction


def test_prediction_oom_at_smallest_tile_is_a_user_error(bundle, monkeypatch):
    def forward(net, batch, dtype=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(predict_module, "network_forward", forward)
    with pytest.raises(UserError, match="even with 64-pixel tiles"):
        predict_module.predict_probabilities(bundle, np.zeros((300, 300), np.float32), PredictConfig(tile_size=256))
