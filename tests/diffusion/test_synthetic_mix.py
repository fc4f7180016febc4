"""Segmentation training that mixes real and synthetic pairs; validation on real images only."""

import numpy as np
import pytest

from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.data.dataset import MixedSampler, PatchSampler, prepare_pairs
from napari_unet.errors import UserError
from napari_unet.training.engine import Trainer


def _run(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(model=UNetConfig(depth=2, base_width=8), patch_size=32, batch_size=4, steps=3,
                       time_limit=None, device="cpu", low_precision=False, validate_every=1e9,
                       preview_every=0, **kw)


def test_mixed_sampler_draws_the_ratio(small_pairs):
    cfg = _cfg()
    rng = np.random.default_rng(0)
    real = PatchSampler(prepare_pairs(small_pairs[:2], cfg), 16, rng)
    blank = [(np.full((32, 32), 7, np.uint8), np.zeros((32, 32), np.uint16)) for _ in range(2)]
    blank[0][1][4:10, 4:10] = 1  # one object so the labels hold two classes
    synthetic = PatchSampler(prepare_pairs(blank, cfg), 16, rng)
    images, targets, weights = MixedSampler(real, synthetic, 0.25, rng).sample(4000)
    assert images.shape == (4000, 1, 16, 16) and targets.shape == weights.shape == (4000, 16, 16)
    from_synthetic = np.ptp(images, axis=(1, 2, 3)) == 0  # the constant synthetic image
    assert 0.22 < from_synthetic.mean() < 0.28
    with pytest.raises(UserError, match="between 0 and 1"):
        MixedSampler(real, synthetic, 1.5, rng)


def test_trainer_uses_synthetic_patches_but_validates_on_real(small_pairs, monkeypatch):
    drawn = []
    original = MixedSampler.sample

    def spy(self, batch_size):
        out = original(self, batch_size)
        drawn.append(batch_size)
        return out

    monkeypatch.setattr(MixedSampler, "sample", spy)
    synthetic = [(im[:64, :64], m[:64, :64]) for im, m in small_pairs[:2]]
    bundle = _run(Trainer(small_pairs[:3], _cfg(synthetic_ratio=0.5, validation_fraction=0.34),
                          synthetic=synthetic).run())
    assert drawn == [4, 4, 4]
    assert bundle.meta["training"]["images"] == 2 and bundle.meta["training"]["validation_images"] == 1
    drawn.clear()
    _run(Trainer(small_pairs[:3], _cfg(synthetic_ratio=0.0), synthetic=synthetic).run())
    assert drawn == []  # ratio 0: the synthetic pairs are ignored
