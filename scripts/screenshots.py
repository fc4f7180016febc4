"""Render screenshots of the real napari window with the plugin's widgets docked.

Run under a (virtual) display, e.g. ``xvfb-run -a .venv/bin/python scripts/screenshots.py``.
It opens the nuclei sample, docks Annotate / Train / Predict, trains in the background and
saves ``docs/images/train_live.png`` while training runs (live preview, plot, progress), then
predicts with MC-dropout and saves ``docs/images/predict_uncertainty.png``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="pretrained:nuclei", help="Train widget 'Start from' choice")
    parser.add_argument("--seconds", type=int, default=90, help="training time limit")
    parser.add_argument("--shot-after", type=float, default=45.0, help="seconds of training before the shot")
    args = parser.parse_args()
    os.environ.setdefault("NAPARI_UNET_HOME", "/tmp/napari-unet-screenshots")

    import napari
    from qtpy.QtCore import QTimer

    from napari_unet.data.samples import load_sample
    from napari_unet.widgets.train import CURRENT, SCRATCH

    viewer = napari.Viewer(title="napari U-Net")
    viewer.window.resize(1500, 950)
    image, truth = load_sample()
    viewer.add_image(image, name="nuclei", colormap="gray")
    annotate_dock, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
    predict_dock, predict = viewer.window.add_plugin_dock_widget("napari-unet", "Predict", tabify=True)
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    annotate.image.value = "nuclei"
    labels = annotate.attach()
    labels.data = truth.astype(np.uint32)  # stands in for the user's painting
    train.image.value, train.labels.value = "nuclei", labels.name
    train.init.value = args.init if args.init in train.init.choices else SCRATCH
    train.time_limit.value = args.seconds
    OUT.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        viewer.window.screenshot(str(OUT / name), canvas_only=False)
        print("wrote", OUT / name)

    def predict_now() -> None:
        predict.image.value = "nuclei"
        predict.model.value = CURRENT
        predict.mc_samples.value = 8
        predict.worker_done = False
        predict.start()
        predict.worker.finished.connect(lambda: QTimer.singleShot(1500, after_predict))

    def after_predict() -> None:
        predict_dock.raise_()
        viewer.layers[labels.name].visible = False
        viewer.layers["nuclei prediction"].visible = False
        predict.suggest()
        viewer.reset_view()
        viewer.layers.selection.active = viewer.layers["nuclei uncertainty"]
        shot("predict_uncertainty.png")
        viewer.close()

    def during_training() -> None:
        viewer.layers[labels.name].visible = False
        viewer.layers.selection.active = viewer.layers["nuclei prediction"]
        shot("train_live.png")
        viewer.layers[labels.name].visible = True

    def start() -> None:
        train.start()
        train.worker.finished.connect(lambda: QTimer.singleShot(500, predict_now))
        QTimer.singleShot(int(args.shot_after * 1000), during_training)

    QTimer.singleShot(2000, start)
    napari.run()


if __name__ == "__main__":
    main()
