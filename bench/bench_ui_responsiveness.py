"""How long is napari's event loop blocked while the plugin trains and predicts on the CPU?

A 10 ms QTimer records its gaps (``LoopProbe``) in a real, shown viewer (run under Xvfb:
``xvfb-run -a .venv/bin/python bench/bench_ui_responsiveness.py``) in three phases of the same
length: idle, training with the Train widget (live preview on), predicting with MC-dropout.
Prints the longest gap, the 95th percentile and the number of gaps over 100 ms for each, and
the time the Train button's click handler takes (layer set-up happens there).

``--volume``: the 3D case instead: a synthetic ball volume (``--shape``, default 32 x 128 x 128,
``data.samples.ball_volume``) of which only two planes are painted (partial annotations: the ball
sections ids 2.., the rest of those planes background 1, every other voxel 0), the Train widget set
to the partial task, the 3D model from scratch, the other settings at their defaults (the current
slice previewed, the viewer on an unpainted plane), then Predict on the volume.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--init", default="pretrained:nuclei")
    parser.add_argument("--volume", action="store_true", help="the 3D case: two painted planes of a volume")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128), help="with --volume: (Z, Y, X)")
    parser.add_argument("--seed", type=int, default=0, help="with --volume: the volume's seed")
    parser.add_argument("--no-nice", action="store_true",
                        help="an experiment: the workers keep the viewer's OS priority (not lowered)")
    args = parser.parse_args()
    os.environ.setdefault("NAPARI_UNET_HOME", "/tmp/napari-unet-bench")

    import napari
    import numpy as np
    from qtpy.QtCore import QTimer

    from common import machine_description
    from napari_unet.data.samples import ball_volume, load_sample
    from napari_unet.widgets._probe import LoopProbe
    from napari_unet.widgets.train import SCRATCH, TASK_LABELS, VOLUME

    if args.no_nice:
        from napari_unet.widgets import _worker

        _worker.lower_thread_priority = lambda niceness=10: None
    viewer = napari.Viewer()
    name = "volume" if args.volume else "nuclei"
    if args.volume:
        image, truth = ball_volume(np.random.default_rng(args.seed), shape=tuple(args.shape), n=args.shape[1] // 6)
        viewer.add_image(image, name=name)
        viewer.add_labels(two_planes(truth), name=f"{name} annotations")
        viewer.dims.set_current_step(0, args.shape[0] // 2)
    else:
        image, truth = load_sample()
        viewer.add_image(image, name=name)
        viewer.add_labels(truth.astype(np.uint32), name=f"{name} annotations")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")
    train.image.value, train.labels.value = name, f"{name} annotations"
    if args.volume:
        train.task.value = TASK_LABELS["partial"]
        train.dims.value = VOLUME
    train.init.value = args.init if args.init in train.init.choices else SCRATCH
    train.time_limit.value = int(args.seconds) + 60
    probe, results = LoopProbe(), {}

    events: list[tuple[float, str]] = []  # (time, kind) of the training worker's events, on arrival

    def phase(name: str, then) -> None:
        probe.stop()
        results[name] = probe.summary()
        print(f"{name:>10}: {results[name]} (load {os.getloadavg()[0]:.1f}){longest_gap(probe, events)}", flush=True)
        then()

    def start_training() -> None:
        t0 = time.perf_counter()
        train.start()
        results["click"] = f"{1000 * (time.perf_counter() - t0):.0f} ms"
        print(f"Train click handler: {results['click']}", flush=True)
        train.worker.yielded.connect(lambda e: events.append((time.perf_counter(), type(e).__name__)))
        QTimer.singleShot(3000, lambda: probe.start())  # from the first steps on
        QTimer.singleShot(int(3000 + args.seconds * 1000), lambda: phase("training", stop_training))

    def stop_training() -> None:
        train.worker.finished.connect(lambda: QTimer.singleShot(1000, start_predicting))
        train.stop()

    def start_predicting() -> None:
        predict.image.value = name
        predict.model.value = predict.model.choices[0]
        predict.mc_samples.value = 16
        probe.start()
        predict.start()
        predict.worker.finished.connect(lambda: phase("predicting", viewer.close))

    print(machine_description(), flush=True)
    QTimer.singleShot(3000, lambda: probe.start())  # idle, after the window's first frames
    QTimer.singleShot(int(3000 + args.seconds * 1000), lambda: phase("idle", start_training))
    napari.run()


def longest_gap(probe, events: list[tuple[float, str]]) -> str:
    """When the longest gap ended (seconds after the probe started) and the worker events that
    arrived from 0.2 s before it began to its end."""
    import numpy as np

    if not probe.gaps:
        return ""
    ends = probe.started + np.cumsum(probe.gaps)
    i = int(np.argmax(probe.gaps))
    begin, end = ends[i] - probe.gaps[i], ends[i]
    near = [kind for t, kind in events if begin - 0.2 <= t <= end]
    return f"; longest ended at +{end - probe.started:.1f} s, events around it: {near or 'none'}"


def two_planes(truth):
    """Partial annotations of two planes (a quarter and three quarters of the way up) of the
    instance volume ``truth``: ball sections 2.., background 1 on those planes; 0 elsewhere."""
    import numpy as np

    labels = np.zeros(truth.shape, np.uint32)
    for z in (truth.shape[0] // 4, 3 * truth.shape[0] // 4):
        labels[z] = np.where(truth[z] > 0, truth[z].astype(np.uint32) + 1, 1)
    return labels


if __name__ == "__main__":
    main()
