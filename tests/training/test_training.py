from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import run_trainer as run

from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.events import Finished, LossReport, Message, Preview, Progress, ValidationReport, run_to_end
from napari_unet.heads.losses import soft_dice_loss, weighted_cross_entropy
from napari_unet.inference.predict import predict_image
from napari_unet.metrics import evaluate_instances
from napari_unet.models.bundle import load_bundle, save_bundle, build_network
from napari_unet.training.checkpoint import load_compatible_weights
from napari_unet.training.engine import Trainer, learning_rate

TINY = UNetConfig(depth=2, base_width=8)


def test_losses_ignore_unannotated_pixels():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = -1
    weights = torch.ones(2, 8, 8)
    loss = weighted_cross_entropy(logits, target, weights)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[:, :, :4].abs().max() == 0
    perfect = torch.nn.functional.one_hot(target.clamp(min=0), 3).movedim(-1, 1).float() * 50
    assert soft_dice_loss(perfect, target) < 1e-3
    assert weighted_cross_entropy(perfect, target, weights * 10) < 1e-6


def test_learning_rate_schedule_warms_up_and_decays():
    assert learning_rate(1.0, 0.0) < learning_rate(1.0, 0.03) == pytest.approx(1.0)
    assert learning_rate(1.0, 1.0) == pytest.approx(0.05)


def test_training_converges_on_real_nuclei_and_roundtrips(small_pairs, tmp_path):
    cfg = TrainConfig(model=TINY, steps=150, time_limit=None, patch_size=128, batch_size=4,
                      validate_every=1e9, low_precision=False, learning_rate=5e-3)
    bundle, events = run(Trainer(small_pairs[:3], cfg, validation=small_pairs[3:]))
    kinds = {type(e) for e in events}
    assert {Message, Progress, LossReport, ValidationReport, Finished} <= kinds
    losses = [e.loss for e in events if isinstance(e, LossReport)]
    assert losses[-1] < 0.6 * losses[0]
    pcfg = PredictConfig()
    scores = evaluate_instances([(predict_image(bundle, im, pcfg).labels, m) for im, m in small_pairs])
    assert scores["ap50"] > 0.4, scores  # tiny net, 150 steps: well above chance, far from done

    folder = save_bundle(bundle, tmp_path / "model")
    again = load_bundle(folder, next(bundle.net.parameters()).device)  # same device: same arithmetic
    image = small_pairs[0][0]
    assert np.allclose(predict_image(again, image).probabilities, predict_image(bundle, image).probabilities, atol=1e-5)
    assert again.meta["training"]["steps"] == 150


def test_training_is_deterministic_with_a_seed(small_pairs):
    cfg = TrainConfig(model=TINY, steps=5, time_limit=None, patch_size=64, batch_size=2, low_precision=False,
                      validation_fraction=0, device="cpu")  # bit-exact repeats are promised on the CPU only
    a, _ = run(Trainer(small_pairs, cfg))
    b, _ = run(Trainer(small_pairs, cfg))
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(va, vb), k


def test_stop_and_live_data_update(small_pairs):
    cfg = TrainConfig(model=TINY, time_limit=60, patch_size=64, batch_size=2, preview_every=0.01,
                      validation_fraction=0)
    trainer = Trainer(small_pairs[:1], cfg, preview_image=small_pairs[0][0])
    seen = []

    def watch(event):
        seen.append(event)
        if isinstance(event, Progress) and event.done == 3:
            trainer.update_pairs(small_pairs)
        if isinstance(event, Preview):
            assert event.probabilities.shape == (3, 128, 128) and event.labels.shape == (128, 128)
            if event.step > 3:
                trainer.stop()

    bundle = run_to_end(trainer.run(), watch)
    texts = [e.text for e in seen if isinstance(e, Message)]
    assert any("4 image(s)" in t for t in texts)
    assert isinstance(seen[-1], Finished) and seen[-1].summary["steps"] == bundle.meta["training"]["steps"]
    assert bundle.meta["training"]["stopped_early"]


def test_fine_tuning_reinitialises_only_what_does_not_fit():
    three = build_network(TrainConfig(model=TINY))
    semantic = build_network(TrainConfig(model=TINY, task="semantic", n_classes=5))
    fresh = load_compatible_weights(semantic, three.state_dict())
    assert fresh and all("weight" in k or "bias" in k for k in fresh)
    assert len(fresh) <= 2  # only the final 1x1 conv


def test_semantic_sparse_training_runs(small_pairs):
    image, mask = small_pairs[0]
    scribbles = np.zeros(mask.shape, np.uint8)
    scribbles[(mask == 0)] = 1
    scribbles[mask > 0] = 2
    scribbles[::2] = 0  # half unannotated
    cfg = TrainConfig(task="semantic", sparse=True, n_classes=2, model=TINY, steps=3, time_limit=None,
                      patch_size=64, batch_size=2)
    bundle, _ = run(Trainer([(image, scribbles)], cfg))
    pred = predict_image(bundle, image)
    assert pred.labels.dtype == np.uint8 and pred.probabilities.shape == (2, 128, 128)


def test_mc_dropout_gives_uncertainty(small_pairs):
    cfg = TrainConfig(model=replace(TINY, dropout=0.3), steps=2, time_limit=None, patch_size=64, batch_size=2)
    bundle, _ = run(Trainer(small_pairs[:1], cfg))
    pred = predict_image(bundle, small_pairs[0][0], PredictConfig(mc_samples=4))
    assert set(pred.uncertainty) == {"total", "aleatoric", "epistemic"}
    assert pred.uncertainty["epistemic"].max() > 0
    assert np.allclose(pred.uncertainty["total"], pred.uncertainty["aleatoric"] + pred.uncertainty["epistemic"], atol=1e-4)
