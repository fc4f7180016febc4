"""Resumable training: a stopped or killed run, resumed, ends where an uninterrupted one would."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import tiny_bundle, write_pairs
from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.errors import UserError
from napari_unet.events import LossReport, Message, Progress, ValidationReport, run_to_end
from napari_unet.models.bundle import load_bundle
from napari_unet.training.engine import Trainer
from napari_unet.training.state import STATE_FILES, has_state, load_state, resumed_config

STEPS = 40
# fp32 on one thread: bit-exact repeats (bf16 autocast would be too, but the CPU may lack it)
CFG = TrainConfig(model=UNetConfig(depth=2, base_width=4), steps=STEPS, time_limit=None, patch_size=32, batch_size=2,
                  low_precision=False, device="cpu", threads=1, preview_every=0, validate_every=1e9)


@pytest.fixture(scope="module")
def pairs(small_pairs):
    return [(image[:96, :96], mask[:96, :96]) for image, mask in small_pairs]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def same_weights(a, b) -> bool:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def stop_at(trainer: Trainer, step: int, seen: list):
    def watch(event):
        seen.append(event)
        if isinstance(event, Progress) and event.done == step:
            trainer.stop()
    return watch


def test_stopped_run_resumed_ends_where_the_uninterrupted_one_does(pairs):
    """Keep-best on every step: the best weights and score so far travel with the state too."""
    # validation at every step (deterministic, unlike seconds); semantic: a cheap score
    cfg = dataclasses.replace(CFG, validate_every=0, task="semantic", n_classes=2)
    pairs = [(image, (mask > 0).astype("uint8")) for image, mask in pairs]
    whole = run_to_end(Trainer(pairs, cfg).run())

    first, seen = Trainer(pairs, cfg, names=["a", "b", "c", "d"]), []
    stopped = run_to_end(first.run(), stop_at(first, 20, seen))
    state = stopped.resume
    assert state.step == 20 and not state.finished and stopped.meta["training"]["stopped_early"]
    assert state.tensors.keys() >= {"random.torch", "random.augment"}
    assert any(k.startswith("best.") for k in state.tensors)  # keep-best's weights so far

    later = []
    resumed = run_to_end(Trainer.resuming(state, pairs, names=["a", "b", "c", "d"]).run(), later.append)
    assert any(isinstance(e, Message) and e.text.startswith("resuming at step 20") for e in later)
    assert [e.done for e in later if isinstance(e, Progress)] == list(range(21, STEPS + 1))
    assert min(e.step for e in later if isinstance(e, (LossReport, ValidationReport))) == 21  # the curve goes on
    assert same_weights(resumed, whole)
    assert resumed.meta["validation"] == whole.meta["validation"]
    assert resumed.meta.get("postprocess") == whole.meta.get("postprocess")
    assert resumed.meta["training"]["steps"] == STEPS and resumed.resume.finished


def test_killed_fine_tuning_run_resumes_from_its_last_checkpoint(pairs, tmp_path):
    """A kill is simulated by abandoning the run and reading its folder back: nothing of the first
    process survives but the checkpoint (step 20). The starting model (the fine-tune guard) is in it."""
    cfg = dataclasses.replace(CFG, checkpoint_every=1e-9)  # a checkpoint after every step
    whole = run_to_end(Trainer(pairs, CFG, init=tiny_bundle()).run())

    folder = tmp_path / "model"
    events = Trainer(pairs, cfg, init=tiny_bundle(), checkpoint_to=folder).run()
    while not (isinstance(event := next(events), Progress) and event.done == 21):
        pass  # step 21 is done; the checkpoint of step 20 is on disk
    events.close()
    assert has_state(folder) and load_bundle(folder).meta["training"]["steps"] == 20
    state = load_state(folder)
    assert state.step == 20 and state.info["init"] is not None

    resumed = run_to_end(Trainer.resuming(state, pairs, dataclasses.replace(state.config, checkpoint_every=None)).run())
    assert same_weights(resumed, whole)
    guard, whole_guard = resumed.meta["training"]["fine_tune_guard"], whole.meta["training"]["fine_tune_guard"]
    assert guard == {**whole_guard, "seconds": guard["seconds"]}  # the same verdict on the same scores


def test_time_limited_run_continues_its_clock(pairs):
    cfg = dataclasses.replace(CFG, steps=None, time_limit=600.0)
    first, seen = Trainer(pairs, cfg), []
    state = run_to_end(first.run(), stop_at(first, 3, seen)).resume
    assert state.step == 3 and 0 < state.seconds < 600 and not state.finished

    second, later = None, []
    second = Trainer.resuming(state, pairs)
    bundle = run_to_end(second.run(), stop_at(second, 5, later))
    progress = [e for e in later if isinstance(e, Progress)]
    assert progress[0].done == 4 and progress[0].elapsed >= state.seconds  # the clock goes on from the first sitting
    assert progress[0].remaining <= 600 - state.seconds
    assert bundle.resume.step == 5 and bundle.resume.seconds >= state.seconds


def test_budget_rules(pairs):
    first, seen = Trainer(pairs, CFG), []
    state = run_to_end(first.run(), stop_at(first, 2, seen)).resume
    assert resumed_config(state) == state.config  # unfinished: its own budget
    assert resumed_config(state, steps=80).steps == 80 and resumed_config(state, time_limit=30).steps is None
    with pytest.raises(UserError, match="beyond that budget"):
        resumed_config(state, steps=2)
    done = dataclasses.replace(state, info={**state.info, "step": STEPS, "finished": True})
    with pytest.raises(UserError, match=r"finished run \(40 of 40 steps\)"):
        resumed_config(done)
    assert resumed_config(done, steps=60).steps == 60  # a finished run trains further with a larger budget
    timed = dataclasses.replace(state, info={**state.info, "config": {**state.info["config"], "steps": None,
                                                                     "time_limit": 100.0}, "seconds": 99.0})
    assert resumed_config(timed).time_limit == 100.0  # one second left
    with pytest.raises(UserError, match="finished"):
        resumed_config(dataclasses.replace(timed, info={**timed.info, "seconds": 100.0}))


def test_resume_refuses_other_data(pairs):
    first, seen = Trainer(pairs, CFG, names=["a", "b", "c", "d"]), []
    state = run_to_end(first.run(), stop_at(first, 1, seen)).resume
    with pytest.raises(UserError, match=r"4 pair\(s\) then, 3 now; missing: d"):
        Trainer.resuming(state, pairs[:3], names=["a", "b", "c"])
    with pytest.raises(UserError, match="b was 96x96 uint8 with a 96x96 mask, is 64x64"):
        Trainer.resuming(state, [pairs[0], (pairs[1][0][:64, :64], pairs[1][1][:64, :64]), *pairs[2:]],
                         names=["a", "b", "c", "d"])


# -- the command line -----------------------------------------------------------------------------
ARGS = ["--steps", str(STEPS), "--init", "none", "--depth", "2", "--base-width", "4", "--patch-size", "32",
        "--batch-size", "2", "--quiet"]


def test_cli_resume_after_an_interrupt_matches_the_whole_run(pairs, tmp_path, monkeypatch, capsys):
    import napari_unet.events as events
    from napari_unet.cli import main

    images, masks = write_pairs(tmp_path, pairs)
    torch.set_num_threads(1)
    assert main(["train", str(images), str(masks), "--out", str(tmp_path / "whole"), *ARGS]) == 0
    whole = tmp_path / "whole"
    assert sorted(p.name for p in whole.iterdir()) == sorted(["model.json", "model.safetensors", *STATE_FILES])
    assert load_state(whole).finished

    drive_to_end, out = events.run_to_end, tmp_path / "run"

    def interrupted(gen, show=None):  # Ctrl-C (or a kill) after the second checkpoint
        def on(event):
            show(event)
            if isinstance(event, Progress) and event.done == 3:
                raise KeyboardInterrupt
        return drive_to_end(gen, on)

    monkeypatch.setattr(events, "run_to_end", interrupted)
    assert main(["train", str(images), str(masks), "--out", str(out), *ARGS, "--checkpoint-every", "1e-9"]) == 130
    monkeypatch.undo()
    assert load_state(out).step == 2
    capsys.readouterr()
    assert main(["train", str(images), str(masks), "--resume", str(out), "--quiet"]) == 0
    assert "saved model to" in capsys.readouterr().out
    assert same_weights(load_bundle(out), load_bundle(whole)) and load_bundle(out).meta["training"]["steps"] == STEPS


@pytest.fixture(scope="module")
def finished(pairs):
    """A finished 2-step run on the files ``write_pairs`` writes (n0.png ... n3.png)."""
    cfg = dataclasses.replace(CFG, steps=2)
    return run_to_end(Trainer(pairs, cfg, names=[f"n{i}.png" for i in range(len(pairs))]).run())


@pytest.mark.parametrize("extra, message", [
    ([], "holds a finished run (2 of 2 steps); give a larger --steps, --epochs or --time-limit"),
    (["--steps", "1"], "already trained beyond that budget"),
    (["--depth", "3", "--seed", "1"], "drop --seed, --depth (only --steps"),
    (["--steps", "50", "--other-data"], "not the training images the run trained on (4 pair(s) then, 3 now; "
                                        "missing: n3.png)"),
])
def test_cli_resume_refusals_are_one_line(pairs, finished, tmp_path, capsys, extra, message):
    from napari_unet.cli import main
    from napari_unet.models.bundle import save_bundle

    images, masks = write_pairs(tmp_path, pairs)
    model = save_bundle(finished, tmp_path / "model")
    if "--other-data" in extra:
        extra = extra[:-1]
        (images / "n3.png").unlink()
    assert main(["train", str(images), str(masks), "--resume", str(model), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
