"""One training run for both front ends: ``workflows.train_run.TrainRun`` and its ``RunSetup`` event."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import tiny_bundle
from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.errors import UserError
from napari_unet.events import Finished, Message, Preview, RunSetup, run_to_end
from napari_unet.workflows.model_spec import CURRENT
from napari_unet.workflows.train_run import TrainRun, asked_architecture

CFG = TrainConfig(model=UNetConfig(depth=2, base_width=4), steps=3, time_limit=None, patch_size=32, batch_size=2,
                  low_precision=False, device="cpu", threads=1, preview_every=0, validate_every=1e9)


def test_a_run_yields_its_setup_as_fields_and_ends_with_a_preview(small_pairs):
    run = TrainRun("none", "instances", preview=small_pairs[0][0])
    seen = []
    bundle = run_to_end(run.events(small_pairs[:2], ["a", "b"], CFG), seen.append)
    setup = next(e for e in seen if isinstance(e, RunSetup))
    assert (setup.batch_size, setup.patch, setup.precision) == (2, (32, 32), None) and setup.device.startswith("CPU")
    assert setup.text == f"training on {setup.device}, 2 patches of 32 × 32 per step"
    assert not any(isinstance(e, Message) and e.text.startswith("training on ") for e in seen)  # no text to parse
    assert isinstance(seen[-2], Finished) and isinstance(seen[-1], Preview)
    assert run.init is None and bundle.meta["training"]["steps"] == 3


def test_the_starting_model_keeps_its_architecture_unless_another_is_asked_for(small_pairs):
    start = tiny_bundle()  # depth 2, width 4
    taken = TrainRun(CURRENT, "instances", asked_architecture(None, None, 2), current=start)
    cfg = dataclasses.replace(CFG, model=UNetConfig(depth=3, base_width=8))  # the request's defaults
    trainer = taken.build(small_pairs[:2], ["a", "b"], cfg)
    assert trainer.cfg.model.depth == 2 and trainer.cfg.model.base_width == 4 and taken.init is start

    asked = TrainRun(CURRENT, "instances", asked_architecture(3, None, None), current=start)
    with pytest.raises(UserError, match="depth 3 does not match the starting model"):
        asked.build(small_pairs[:2], ["a", "b"], cfg)


def test_a_stop_before_the_trainer_exists_reaches_it(small_pairs):
    run = TrainRun("none", "instances")
    run.stop()
    bundle = run_to_end(run.events(small_pairs[:2], ["a", "b"], dataclasses.replace(CFG, steps=50)))
    assert run.trainer is not None and bundle.meta["training"]["stopped_early"]


def test_the_cli_prints_the_setup_line(small_pairs, capsys):
    from napari_unet.cli import drive

    drive(TrainRun("none", "instances").events(small_pairs[:2], ["a", "b"], CFG), "t", quiet=True)
    assert any(line.startswith("training on CPU (") and line.endswith(", 2 patches of 32 × 32 per step")
               for line in capsys.readouterr().out.splitlines())
