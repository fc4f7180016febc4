"""A training run killed with SIGKILL leaves its model folder absent or loadable, never half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_unet.files.io import write_image
from napari_unet.models.bundle import load_bundle
from napari_unet.training.state import STATE_FILES, load_state


@pytest.fixture()
def folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((48, 48), np.uint16)
        mask[5:17, 6:20], mask[25:40, 22:35] = 1, 2
        write_image(images / f"n{i}.png", ((mask > 0) * 150 + rng.integers(0, 60, mask.shape)).astype(np.uint8))
        write_image(masks / f"n{i}.tif", mask)
    return images, masks


def _cli(*args) -> subprocess.Popen:
    """``napari-unet ARGS`` in a one-thread subprocess (stderr kept for failure messages)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "napari_unet", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_once_exists(proc: subprocess.Popen, path, what: str, poll: float, delay: float = 0.0) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``path`` appears (at most 60 s), and reap it."""
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"{what} within 60 s"
            time.sleep(poll)
        if delay:
            time.sleep(delay)
            assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _train(images, masks, out):
    return _cli("train", images, masks, "--out", out, "--time-limit", "120", "--checkpoint-every", "0.05",
                "--init", "none", "--depth", "2", "--base-width", "8", "--patch-size", "32", "--batch-size", "2",
                "--quiet")


def test_sigkill_during_training_never_leaves_a_half_written_model(folders, tmp_path):
    images, masks = folders
    out = tmp_path / "model"
    # after the first periodic checkpoint, kill at some point of the save cycle (saves run every ~50 ms)
    _kill_once_exists(_train(images, masks, out), out / "model.json", "no checkpoint", 0.01, delay=0.37)
    bundle = load_bundle(out)  # restores an interrupted swap if the kill hit one
    assert bundle.meta["training"]["checkpoint"] is True and bundle.meta["training"]["steps"] >= 1
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.json", "model.safetensors", *STATE_FILES])
    state = load_state(out)  # written in the same swap: the state of the weights beside it (`train --resume`)
    assert state.step == bundle.meta["training"]["steps"] and not state.finished


N_FILES = 16


@pytest.fixture()
def batch(tmp_path, small_pairs):
    """A tiny model and 16 small real images (crops of the bundled nuclei)."""
    import torch

    from napari_unet.config import TrainConfig, UNetConfig
    from napari_unet.models.bundle import ModelBundle, build_network, save_bundle

    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4))
    model = save_bundle(ModelBundle(build_network(cfg).eval(), cfg), tmp_path / "model")
    images = tmp_path / "images"
    for i in range(N_FILES):
        image = small_pairs[i % len(small_pairs)][0]
        write_image(images / f"n{i:02d}.png", np.roll(image, 7 * i, axis=1)[:96, :112])
    return model, images


def _outputs(out):
    """Final-named outputs (OME-Zarr stores) by name."""
    return sorted(p.name for p in out.glob("*.ome.zarr"))


def test_sigkill_mid_batch_then_rerun_completes_without_redoing_finished_files(batch, tmp_path, capsys):
    import csv

    import torch

    from napari_unet.cli import main
    from napari_unet.files.omezarr import open_pyramid
    from napari_unet.workflows.resume import RECORDS

    model, images = batch
    options = ["--format", "ome-zarr", "--probabilities", "--quiet"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the OMP_NUM_THREADS=1 subprocess
    try:
        reference = tmp_path / "reference"
        assert main(["predict", str(model), str(images), "--out", str(reference), *options]) == 0
        out = tmp_path / "out"
        # kill while n03's probabilities are being written
        _kill_once_exists(_cli("predict", model, images, "--out", out, *options), out / "n03.ome.zarr",
                          "n03 was not reached", 0.002)
        done = sorted(p.stem for p in (out / RECORDS).glob("*.json"))
        assert 3 <= len(done) < N_FILES, done  # killed mid-folder
        assert not (out / "summary.csv").exists()
        for name in _outputs(out):  # whatever has a final name is whole, even the file in flight
            for level, expected in zip(open_pyramid(out / name), open_pyramid(reference / name)):
                assert np.array_equal(np.asarray(level), np.asarray(expected)), name
        with capsys.disabled():
            print(f"\nkilled after {len(done)} of {N_FILES} files; {len(_outputs(out))} stores had their final name")
        stamps = {n: (out / n / "0" / ".zarray").stat().st_mtime_ns for n in _outputs(out)
                  if n.split(".")[0].removesuffix("_probabilities") in done}
        capsys.readouterr()
        assert main(["predict", str(model), str(images), "--out", str(out), *options]) == 0  # the same command
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert f"skipping {len(done)} file(s)" in printed and f"predicting {N_FILES - len(done)} file(s)" in printed
    assert {n: (out / n / "0" / ".zarray").stat().st_mtime_ns for n in stamps} == stamps  # not predicted twice
    assert _outputs(out) == _outputs(reference) and len(_outputs(out)) == 2 * N_FILES
    for name in _outputs(reference):
        got, expected = open_pyramid(out / name), open_pyramid(reference / name)
        assert len(got) == len(expected) and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, expected))

    def rows(folder):
        with open(folder / "summary.csv") as fh:
            return [{k: v.replace(str(folder), "") for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]

    assert rows(out) == rows(reference) and len(rows(out)) == N_FILES
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [RECORDS]  # no temporaries left
