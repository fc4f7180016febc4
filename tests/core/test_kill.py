"""A training run killed with SIGKILL leaves its model folder absent or loadable, never half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_unet.io import write_image
from napari_unet.training.checkpoint import load_bundle


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


def _train(images, masks, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    argv = [sys.executable, "-m", "napari_unet", "train", str(images), str(masks), "--out", str(out),
            "--time-limit", "120", "--checkpoint-every", "0.05", "--init", "none", "--depth", "2",
            "--base-width", "8", "--patch-size", "32", "--batch-size", "2", "--quiet"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_during_training_never_leaves_a_half_written_model(folders, tmp_path):
    images, masks = folders
    out = tmp_path / "model"
    proc = _train(images, masks, out)
    try:
        deadline = time.monotonic() + 60
        while not (out / "model.json").exists():  # wait for the first periodic checkpoint
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.01)
        time.sleep(0.37)  # then kill at some point of the save cycle (saves run every ~50 ms)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    bundle = load_bundle(out)  # restores an interrupted swap if the kill hit one
    assert bundle.meta["training"]["checkpoint"] is True and bundle.meta["training"]["steps"] >= 1
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
