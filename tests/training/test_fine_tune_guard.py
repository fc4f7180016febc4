"""Fine-tuning never ends worse than the starting model (``napari_unet.training.guard``)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import tiny_bundle, write_pairs
from napari_unet import pretrained
from napari_unet.cli import drive, main
from napari_unet.config import TrainConfig
from napari_unet.events import Message
from napari_unet.models.bundle import load_bundle
from napari_unet.training.engine import Trainer
from napari_unet.training.guard import KEY, START, TUNED, guard_note
from napari_unet.workflows.model_spec import resolve_model


def _run(trainer: Trainer) -> tuple[object, list[str]]:
    texts: list[str] = []
    gen = trainer.run()
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value, texts
        if isinstance(event, Message):
            texts.append(event.text)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k].float().cpu(), sb[k].float().cpu()) for k in sa)


def test_cli_keeps_the_start_model_when_fine_tuning_is_sabotaged(tmp_path, small_pairs, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "FINE_TUNE_LR", 400.0)  # lr 2.0: a few steps wreck the starting model
    images, masks = write_pairs(tmp_path, small_pairs)
    out = tmp_path / "model"
    assert main(["train", str(images), str(masks), "--out", str(out), "--steps", "3", "--patch-size", "64",
                 "--batch-size", "2", "--checkpoint-every", "0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "model.json").read_text())["training"][KEY]
    assert record["kept"] == START and record["start_score"] > record["fine_tuned_score"], record
    assert record["validation_images"] == 1
    saved_line = next(line for line in printed.splitlines() if line.startswith("saved model"))
    assert "kept the starting model" in saved_line
    start = resolve_model("pretrained:nuclei")
    assert _same_weights(load_bundle(out).net, start.net)  # the starting weights, under this run's record
    assert load_bundle(out).postprocess == start.postprocess  # and its own post-processing, not one re-tuned


def test_fine_tuned_model_is_kept_when_it_is_better(small_pairs):
    start = tiny_bundle()  # untrained: it finds no nucleus
    cfg = replace(TrainConfig(), model=start.config.model, steps=15, time_limit=None, patch_size=64, batch_size=4,
                  learning_rate=2e-2, validate_every=1e9, preview_every=0, low_precision=False, device="cpu")
    bundle, texts = _run(Trainer(small_pairs[:3], cfg, init=start, validation=small_pairs[3:]))
    record = bundle.meta["training"][KEY]
    assert record["kept"] == TUNED and record["fine_tuned_score"] > record["start_score"], record
    assert not _same_weights(bundle.net, start.net)
    assert bundle.meta["validation"]["score"] == pytest.approx(record["fine_tuned_score"], abs=1e-4)
    assert any(t.startswith("starting model: validation score") for t in texts)
    assert guard_note(bundle.meta) in texts and "fine-tuned model kept" in guard_note(bundle.meta)


@pytest.mark.parametrize("change, reason", [
    ({"validation_fraction": 0.0}, "no validation images"),
    ({"task": "semantic"}, "re-initialised"),  # a fresh head: the start's outputs mean something else
])
def test_guard_says_when_it_cannot_run(small_pairs, change, reason):
    start = tiny_bundle()
    cfg = replace(TrainConfig(), model=start.config.model, steps=2, time_limit=None, patch_size=64, batch_size=2,
                  preview_every=0, low_precision=False, device="cpu", **change)
    pairs = [(im, (m > 0).astype(np.uint8) if cfg.task == "semantic" else m) for im, m in small_pairs]
    bundle, texts = _run(Trainer(pairs, cfg, init=start))
    record = bundle.meta["training"][KEY]
    assert record["kept"] == TUNED and reason in record["not_run"]
    assert any(reason in t and "not checked" in t for t in texts)


def test_training_from_scratch_has_no_guard_record(small_pairs):
    cfg = replace(TrainConfig(), model=tiny_bundle().config.model, steps=1, time_limit=None, patch_size=64,
                  batch_size=2, preview_every=0, low_precision=False, device="cpu")
    bundle = drive(Trainer(small_pairs, cfg).run(), "t", quiet=True)
    assert KEY not in bundle.meta["training"] and guard_note(bundle.meta) is None


def test_a_tie_keeps_the_starting_model():
    from napari_unet.training.guard import keep_fine_tuned

    assert keep_fine_tuned(0.70, 0.71)
    assert not keep_fine_tuned(0.771, 0.771)  # the images cannot tell them apart: the known model stays
    assert not keep_fine_tuned(0.70, 0.69)


def test_a_few_held_out_objects_do_not_decide(showcase):
    """Ten painted objects of one image hold out two for validation: too few to compare the two
    models, so the guard says so and the fine-tuned model stays (with enough it compares)."""
    from napari_unet.training.guard import MIN_HELD_OUT_OBJECTS

    image, gt = showcase
    ids = np.unique(gt[gt > 0])[:10]
    partial = np.where(np.isin(gt, ids), gt.astype(np.int64) + 1, 0)
    partial[(partial == 0) & (np.abs(np.gradient(np.isin(gt, ids).astype(float))).sum(0) > 0)] = 1  # a rim of background
    cfg = replace(TrainConfig(sparse=True), model=tiny_bundle().config.model, steps=2, time_limit=None, patch_size=64,
                  batch_size=2, preview_every=0, low_precision=False, device="cpu")
    bundle, texts = _run(Trainer([(image, partial)], cfg, init=tiny_bundle()))
    record = bundle.meta["training"][KEY]
    assert record["kept"] == TUNED and "held-out object(s) cannot tell" in record["not_run"], record
    assert f"from {MIN_HELD_OUT_OBJECTS} on" in guard_note(bundle.meta)
    assert not any(t.startswith("starting model: validation score") for t in texts)  # not even scored
