"""Long operations stop within about a second of asking: Trainer.stop() and closing generators."""

from __future__ import annotations

import threading
import time

import numpy as np
import tifffile
import torch

from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.events import Progress
from napari_unet.inference.predict import predict_files
from napari_unet.models.bundle import ModelBundle, build_network
from napari_unet.training.engine import Trainer
from napari_unet.training.validation import validate
from napari_unet.data.dataset import prepare_pairs

MASK = np.zeros((64, 64), np.uint16)
MASK[5:17, 6:20], MASK[25:40, 22:35], MASK[44:60, 40:58] = 1, 2, 3
PAIRS = [(((MASK > 0) * 0.7 + np.random.default_rng(i).random(MASK.shape) * 0.3).astype(np.float32), MASK)
         for i in range(4)]
CFG = TrainConfig(model=UNetConfig(depth=2, base_width=8), patch_size=48, batch_size=2, time_limit=60.0,
                  threads=1, preview_every=0.2, validate_every=0.3, validation_fraction=0.25, device="cpu")


def test_trainer_stop_from_another_thread_ends_the_run_quickly():
    trainer = Trainer(PAIRS, CFG, preview_image=PAIRS[0][0])
    asked: list[float] = []

    def stop() -> None:
        asked.append(time.perf_counter())
        trainer.stop()

    run, timer, steps = trainer.run(), None, 0
    while True:
        try:
            event = next(run)
        except StopIteration as end:
            bundle, ended = end.value, time.perf_counter()
            break
        if isinstance(event, Progress):
            steps += 1
            if timer is None:  # training is under way: ask to stop from another thread in 1 s
                timer = threading.Timer(1.0, stop)
                timer.start()
    latency = ended - asked[0]
    print(f"\nTrainer.stop() -> run() returned in {latency * 1000:.0f} ms after {steps} steps")
    assert latency < 5.0
    assert bundle.meta["training"]["stopped_early"] and bundle.meta["training"]["seconds"] < 30
    assert isinstance(bundle.net, torch.nn.Module)


def test_validation_gives_up_when_asked():
    prepared = prepare_pairs(PAIRS, CFG)
    net = build_network(CFG)
    calls = []
    assert validate(net, prepared, CFG, None, lambda: calls.append(1) or len(calls) > 1) is None
    assert len(calls) == 2  # checked before each image; stopped before the second


def test_closing_predict_files_stops_at_the_next_yield(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4))
    bundle = ModelBundle(build_network(cfg).eval(), cfg, {})
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"im{i}.tif")
        tifffile.imwrite(paths[-1], np.random.default_rng(i).random((256, 256)).astype(np.float32))
    gen = predict_files(bundle, paths, tmp_path / "out", PredictConfig())
    started = time.perf_counter()
    first = next(e for e in gen if isinstance(e, Progress))
    per_image = time.perf_counter() - started
    asked = time.perf_counter()
    gen.close()  # what a napari worker's quit() does
    latency = time.perf_counter() - asked
    print(f"\npredict_files: one 256x256 image {per_image * 1000:.0f} ms; close() took {latency * 1000:.1f} ms")
    assert first.done == 1 and latency < 5.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.tif"]  # nothing written after the stop
