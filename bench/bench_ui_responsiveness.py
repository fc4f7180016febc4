"""How long is napari's event loop blocked while the plugin trains and predicts on the CPU?

A 10 ms QTimer records its gaps (``LoopProbe``) in a real, shown viewer (run under Xvfb:
``xvfb-run -a .venv/bin/python bench/bench_ui_responsiveness.py``) in three phases of the same
length: idle, training with the Train widget (live preview on), predicting with MC-dropout.
Prints the longest gap, the 95th percentile and the number of gaps over 100 ms for each, and
the time the Train button's click handler takes (layer set-up happens there).
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
    args = parser.parse_args()
    os.environ.setdefault("NAPARI_UNET_HOME", "/tmp/napari-unet-bench")

    import napari
    import numpy as np
    from qtpy.QtCore import QTimer

    from common import machine_description
    from napari_unet.data.samples import load_sample
    from napari_unet.widgets._probe import LoopProbe
    from napari_unet.widgets.train import SCRATCH

    viewer = napari.Viewer()
    image, truth = load_sample()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(truth.astype(np.uint32), name="nuclei annotations")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict")
    train.image.value, train.labels.value = "nuclei", "nuclei annotations"
    train.init.value = args.init if args.init in train.init.choices else SCRATCH
    train.time_limit.value = int(args.seconds) + 60
    probe, results = LoopProbe(), {}

    def phase(name: str, then) -> None:
        probe.stop()
        results[name] = probe.summary()
        print(f"{name:>10}: {results[name]}", flush=True)
        then()

    def start_training() -> None:
        t0 = time.perf_counter()
        train.start()
        results["click"] = f"{1000 * (time.perf_counter() - t0):.0f} ms"
        print(f"Train click handler: {results['click']}", flush=True)
        QTimer.singleShot(3000, lambda: probe.start())  # from the first steps on
        QTimer.singleShot(int(3000 + args.seconds * 1000), lambda: phase("training", stop_training))

    def stop_training() -> None:
        train.worker.finished.connect(lambda: QTimer.singleShot(1000, start_predicting))
        train.stop()

    def start_predicting() -> None:
        predict.image.value = "nuclei"
        predict.model.value = predict.model.choices[0]
        predict.mc_samples.value = 16
        probe.start()
        predict.start()
        predict.worker.finished.connect(lambda: phase("predicting", viewer.close))

    print(machine_description(), flush=True)
    QTimer.singleShot(3000, lambda: probe.start())  # idle, after the window's first frames
    QTimer.singleShot(int(3000 + args.seconds * 1000), lambda: phase("idle", start_training))
    napari.run()


if __name__ == "__main__":
    main()
