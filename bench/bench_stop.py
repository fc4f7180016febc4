"""Cancellation latency: seconds from ``Trainer.stop()`` (called from another thread) to the end of
``run()``, with the default training configuration on the bundled nuclei images, and from closing
``predict_files`` to its end. Prints the figures measured in this run.

    .venv/bin/python bench/bench_stop.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description  # noqa: E402

from napari_unet.config import PredictConfig, TrainConfig  # noqa: E402
from napari_unet.data.samples import training_samples  # noqa: E402
from napari_unet.events import Progress  # noqa: E402
from napari_unet.inference.predict import predict_files  # noqa: E402
from napari_unet.training.engine import Trainer  # noqa: E402


def stop_latency(pairs: list, cfg: TrainConfig, delay: float) -> tuple[float, int]:
    """(seconds from stop() to the end of run(), steps made) for one run stopped after ``delay`` s."""
    # the engine itself, not bench.common.train_as_user: what is timed is Trainer.stop() to the end of run()
    trainer = Trainer(pairs, cfg, preview_image=pairs[0][0])
    asked: list[float] = []
    timer, steps, run = None, 0, trainer.run()
    while True:
        try:
            event = next(run)
        except StopIteration:
            return time.perf_counter() - asked[0], steps
        if isinstance(event, Progress):
            steps += 1
            if timer is None:
                timer = threading.Timer(delay, lambda: (asked.append(time.perf_counter()), trainer.stop()))
                timer.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_description())
    samples = training_samples()
    pairs = [(image, mask) for _, image, mask in samples]
    cfg = TrainConfig(threads=args.threads, time_limit=120.0, device="cpu", validate_every=4.0, preview_every=2.0)
    for i in range(args.repeats):
        latency, steps = stop_latency(pairs, cfg, delay=3.0 + 2.5 * i)
        print(f"train: stop() -> run() ended in {latency:.3f} s (after {steps} steps)")
    result = Trainer(pairs[:2], TrainConfig(threads=args.threads, steps=2, device="cpu")).run()
    while True:
        try:
            next(result)
        except StopIteration as end:
            bundle = end.value
            break
    with tempfile.TemporaryDirectory() as tmp:
        from napari_unet.files.io import write_image

        paths = []
        for name, image, _ in samples:
            paths.append(Path(tmp) / f"{name}.tif")
            write_image(paths[-1], image)
        gen = predict_files(bundle, paths, Path(tmp) / "out", PredictConfig(threads=args.threads))
        started = time.perf_counter()
        next(e for e in gen if isinstance(e, Progress))
        first = time.perf_counter() - started
        asked = time.perf_counter()
        gen.close()
        print(f"predict_files: first image took {first:.3f} s (a stop waits for at most one image); "
              f"close() took {(time.perf_counter() - asked) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
