"""Partial annotations with few painted objects pull the unannotated pixels towards background less:
the pull's weight was chosen for ten painted objects, and five collapsed under it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from helpers import tiny_bundle
from napari_unet.config import TrainConfig
from napari_unet.data.targets import PULL_OBJECTS, pull_for_painted
from napari_unet.events import Message, run_to_end
from napari_unet.training.engine import Trainer


def test_the_pull_follows_the_painted_objects_up_to_ten():
    assert pull_for_painted(0.01, 5) == pytest.approx(0.005)
    assert pull_for_painted(0.01, PULL_OBJECTS) == pull_for_painted(0.01, 50) == 0.01
    assert pull_for_painted(0.0, 3) == 0.0


def _partial(showcase, n: int) -> tuple[np.ndarray, np.ndarray]:
    image, gt = showcase
    ids = np.unique(gt[gt > 0])[:n]
    partial = np.where(np.isin(gt, ids), gt.astype(np.int64) + 1, 0)
    partial[(partial == 0) & (np.abs(np.gradient(np.isin(gt, ids).astype(float))).sum(0) > 0)] = 1  # background rims
    return image, partial


@pytest.mark.parametrize("painted, scaled", [(5, True), (12, False)])
def test_a_run_scales_the_pull_it_trains_with_and_saves_the_setting_as_given(showcase, painted, scaled):
    image, partial = _partial(showcase, painted)
    cfg = replace(TrainConfig(sparse=True), model=tiny_bundle().config.model, steps=2, time_limit=None, patch_size=64,
                  batch_size=2, preview_every=0, low_precision=False, device="cpu", fine_tune_guard=False)
    trainer = Trainer([(image, partial)], cfg)
    texts: list[str] = []
    bundle = run_to_end(trainer.run(), lambda e: texts.append(e.text) if isinstance(e, Message) else None)
    used = trainer._loss_cfg.loss.unannotated_background
    assert used == pytest.approx(0.01 * (painted / PULL_OBJECTS if scaled else 1))
    assert bundle.config.loss.unannotated_background == 0.01  # the setting as given: a resumed run scales the same
    assert any("pull towards background at 0.005" in t for t in texts) == scaled, texts
