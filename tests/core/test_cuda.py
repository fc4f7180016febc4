"""The CUDA paths, run where a GPU is present (CI has none, so there they are skipped).

Each test compares the GPU result with the CPU one, so a wrong device, dtype or a lost
transfer shows up as a mismatch rather than passing silently.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import drain
from napari_unet.config import AugmentConfig, PredictConfig, TrainConfig, UNetConfig
from napari_unet.data.augment import augment_batch
from napari_unet.inference.predict import predict_image, predict_probabilities
from napari_unet.metrics import evaluate_instances
from napari_unet.models.bundle import load_bundle, save_bundle
from napari_unet.runtime.device import low_precision_dtype, resolve_device
from napari_unet.training.engine import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = UNetConfig(depth=2, base_width=8)


def test_auto_device_picks_cuda_with_low_precision():
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert low_precision_dtype(device, None) in (torch.bfloat16, torch.float16)


def test_training_on_cuda_converges_and_predicts_like_cpu(small_pairs, tmp_path):
    cfg = TrainConfig(model=TINY, steps=150, time_limit=None, patch_size=128, batch_size=4, validate_every=1e9,
                      learning_rate=5e-3, device="cuda")
    bundle = drain(Trainer(small_pairs[:3], cfg, validation=small_pairs[3:]).run())
    assert next(bundle.net.parameters()).device.type == "cuda"
    assert "CUDA" in bundle.meta["training"]["device"]
    scores = evaluate_instances([(predict_image(bundle, im).labels, m) for im, m in small_pairs])
    assert scores["ap50"] > 0.4, scores

    folder = save_bundle(bundle, tmp_path / "model")
    on_cpu, on_gpu = load_bundle(folder, "cpu"), load_bundle(folder, "cuda")
    image = small_pairs[0][0]
    p_cpu = predict_probabilities(on_cpu, image)
    p_gpu = predict_probabilities(on_gpu, image)
    assert p_gpu.dtype == np.float32 and p_gpu.shape == p_cpu.shape
    assert np.abs(p_gpu - p_cpu).max() < 0.05  # bf16/fp16 autocast on the GPU, fp32 or bf16 on the CPU
    assert (p_gpu.argmax(0) == p_cpu.argmax(0)).mean() > 0.99


def test_tiled_prediction_and_mc_dropout_on_cuda(small_pairs):
    cfg = TrainConfig(model=replace(TINY, dropout=0.3), steps=20, time_limit=None, patch_size=64, batch_size=4,
                      device="cuda")
    bundle = drain(Trainer(small_pairs[:2], cfg).run())
    image = np.tile(small_pairs[0][0], (3, 3))  # 384²: several tiles
    whole = predict_probabilities(bundle, image, PredictConfig(tile_size=512))
    tiled = predict_probabilities(bundle, image, PredictConfig(tile_size=128))
    assert np.abs(whole - tiled).max() < 2e-2  # low-precision arithmetic differs slightly at tile edges
    pred = predict_image(bundle, small_pairs[0][0], PredictConfig(mc_samples=4))
    assert pred.uncertainty["epistemic"].max() > 0
    assert np.allclose(pred.uncertainty["total"], pred.uncertainty["aleatoric"] + pred.uncertainty["epistemic"],
                       atol=1e-4)


def test_augmentation_on_cuda_keeps_labels_aligned():
    image = torch.zeros(4, 1, 96, 96)
    image[:, :, 30:60, 20:70] = 1.0
    labels = (image[:, 0] > 0.5).long()
    gen = torch.Generator(device="cuda").manual_seed(0)
    out, lab, _ = augment_batch(image.cuda(), labels.cuda(), None, AugmentConfig(probability=1.0), gen)
    assert out.device.type == "cuda" and lab.device.type == "cuda" and lab.dtype == labels.dtype
    inside = lab == 1
    assert inside.any() and (out[:, 0][inside].mean() > 0.5) and (out[:, 0][~inside].mean() < 0.5)


def test_diffusion_trains_and_samples_on_cuda(small_pairs):
    from napari_unet.diffusion.config import DiffusionConfig, DiffusionUNetConfig, SampleConfig
    from napari_unet.diffusion.sample import synthesize
    from napari_unet.diffusion.train import DiffusionTrainer

    net = DiffusionUNetConfig(base_width=8, channel_mults=(1, 2), attention_levels=(1,), head_width=8,
                              context_dim=16, groups=4)
    pairs = [(im[:64, :64], m[:64, :64]) for im, m in small_pairs[:3]]
    cfg = DiffusionConfig(model=net, crop_size=32, batch_size=4, steps=5, time_limit=None, device="cuda",
                          train_timesteps=100)
    bundle = drain(DiffusionTrainer(pairs, cfg).run())
    assert next(bundle.net.parameters()).device.type == "cuda"
    masks = [pairs[0][1][:32, :32]]
    scfg = SampleConfig(steps=4, guidance=2.0, seed=3, batch_size=1)
    first = drain(synthesize(bundle, masks, scfg))
    again = drain(synthesize(bundle, masks, scfg))
    assert first[0].shape == (32, 32) and first[0].dtype == np.uint8
    assert np.abs(first[0].astype(int) - again[0].astype(int)).max() <= 1  # seeded sampling repeats on the GPU
