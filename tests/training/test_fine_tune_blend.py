"""Fine-tuning returns a blend of the fine-tuned and the starting weights
(``TrainConfig.fine_tune_keep``, ``training.checkpoint.blend_towards``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from helpers import tiny_bundle
from napari_unet import pretrained
from napari_unet.config import TrainConfig
from napari_unet.events import Message, run_to_end
from napari_unet.models.bundle import load_bundle
from napari_unet.training.finish import keep_by_agreement
from napari_unet.training.engine import Trainer
from napari_unet.workflows.model_spec import model_path


def _fine_tune(pairs, start, keep: float | None, **change) -> tuple[object, list[str]]:
    cfg = replace(TrainConfig(), model=start.config.model, steps=6, time_limit=None, patch_size=64, batch_size=2,
                  learning_rate=2e-2, validate_every=1e9, preview_every=0, low_precision=False, device="cpu",
                  threads=1, fine_tune_guard=False, fine_tune_keep=keep, percentiles=start.config.percentiles)
    cfg = replace(cfg, **change)
    texts: list[str] = []
    bundle = run_to_end(Trainer(pairs, cfg, init=start).run(),
                        lambda e: texts.append(e.text) if isinstance(e, Message) else None)
    return bundle, texts


def test_returned_weights_lie_between_the_start_and_the_fine_tuned_ones(small_pairs):
    start = tiny_bundle()
    before = {k: v.clone() for k, v in start.net.state_dict().items()}
    tuned, _ = _fine_tune(small_pairs, start, 1.0)
    blended, texts = _fine_tune(small_pairs, start, 0.25)  # the same run (same seed), blended at the end
    s0, s1, sb = before, tuned.net.state_dict(), blended.net.state_dict()
    moved = 0
    for name, value in sb.items():
        if not value.is_floating_point():  # num_batches_tracked: the run's own count
            assert torch.equal(value, s1[name])
            continue
        assert torch.allclose(value, 0.75 * s0[name] + 0.25 * s1[name], atol=1e-5), name
        moved += not torch.equal(s0[name], s1[name])
    assert moved > 10  # the run did change the weights, batch-norm statistics included
    assert any(name.endswith("running_mean") and not torch.equal(s0[name], s1[name]) for name in s0)
    assert blended.meta["training"]["fine_tune_keep"] == 0.25 and "fine_tune_keep" not in tuned.meta["training"]
    assert "returned weights: 25% fine-tuned, 75% starting model" in texts
    assert all(torch.equal(v, before[k]) for k, v in start.net.state_dict().items())  # the start is untouched


def test_fine_tuning_from_the_shipped_model_blends_by_agreement():
    shipped = load_bundle(model_path("pretrained:nuclei"))
    assert pretrained.fine_tune_config(TrainConfig(), shipped).fine_tune_keep is None  # by agreement
    assert pretrained.fine_tune_config(TrainConfig(), tiny_bundle()).fine_tune_keep == 1.0  # a user's own model
    assert TrainConfig().fine_tune_keep == 1.0  # from scratch: nothing to blend towards
    assert [keep_by_agreement(a) for a in (0.0, 0.5, 1.0)] == [1.0, 0.75, 0.0]


def test_in_domain_the_returned_model_stays_near_the_start(small_pairs):
    """Fluorescence nuclei, the shipped start's own kind: the two agree, the start keeps most weight."""
    start = load_bundle(model_path("pretrained:nuclei"))
    before = {k: v.clone() for k, v in start.net.state_dict().items()}
    tuned, _ = _fine_tune(small_pairs, start, 1.0, learning_rate=1e-3)
    blended, texts = _fine_tune(small_pairs, start, None, learning_rate=1e-3)
    agree, keep = (blended.meta["training"][k] for k in ("fine_tune_agreement", "fine_tune_keep"))
    assert agree > 0.7 and keep == pytest.approx(1 - agree ** 2, abs=1e-4) and keep < 0.5
    s1 = tuned.net.state_dict()
    for name, value in blended.net.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, keep * s1[name] + (1 - keep) * before[name], rtol=1e-3, atol=1e-4), name  # keep: rounded in meta
    assert any(t.startswith("returned weights:") and "agree on" in t for t in texts)


def test_a_start_that_finds_nothing_keeps_the_fine_tune(small_pairs):
    start = tiny_bundle()  # untrained: it finds no nucleus, the fine-tuned model does
    tuned, _ = _fine_tune(small_pairs, start, 1.0, steps=15)
    blended, _ = _fine_tune(small_pairs, start, None, steps=15)
    assert blended.meta["training"]["fine_tune_agreement"] == 0.0 and blended.meta["training"]["fine_tune_keep"] == 1.0
    s1 = tuned.net.state_dict()
    assert all(torch.allclose(v, s1[k], atol=1e-6) for k, v in blended.net.state_dict().items())


def test_a_run_from_scratch_is_not_blended(small_pairs):
    cfg = replace(TrainConfig(), model=tiny_bundle().config.model, steps=1, time_limit=None, patch_size=64,
                  batch_size=2, preview_every=0, low_precision=False, device="cpu", fine_tune_keep=0.5)
    bundle = run_to_end(Trainer(small_pairs, cfg).run(), lambda e: None)
    assert "fine_tune_keep" not in bundle.meta["training"]


@pytest.mark.parametrize("keep", [0.0, 1.0])
def test_blend_ends(small_pairs, keep):
    start = tiny_bundle()
    before = {k: v.clone() for k, v in start.net.state_dict().items()}
    bundle, _ = _fine_tune(small_pairs, start, keep)
    same = all(torch.equal(v, before[k]) for k, v in bundle.net.state_dict().items() if v.is_floating_point())
    assert same == (keep == 0.0)
