"""Issue #27, "3D that works by default": a volume with two painted planes, the partial task and
the 3D model in the Train widget. The viewer keeps ticking while it trains, the current slice is
previewed, and the model finds the balls on the planes nobody painted."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from napari_unet.data.samples import ball_volume
from napari_unet.metrics import evaluate_instances
from napari_unet.widgets._session import session_for
from napari_unet.widgets.predict import PredictWidget
from napari_unet.widgets.train import CURRENT, SCRATCH, TASK_LABELS, VOLUME, TrainWidget

SHAPE = (20, 48, 48)
PAINTED = (3, 16)  # the two planes a user painted; every other voxel is 0 (not annotated)
FREE_BALL = 6  # this ball lies on planes 6-14: no painted plane cuts it
STEPS = 120  # a fixed step count (not a time limit), so a busy machine gives the same model


def two_plane_annotation(truth: np.ndarray, planes: tuple[int, ...] = PAINTED) -> np.ndarray:
    """Partial labels: on ``planes`` every ball section painted (ids 2..) and the rest background (1);
    0 everywhere else."""
    labels = np.zeros(truth.shape, np.uint32)
    for z in planes:
        labels[z] = np.where(truth[z] > 0, truth[z].astype(np.uint32) + 1, 1)
    return labels


def test_two_painted_planes_train_a_3d_model_that_finds_balls_between_them(make_napari_viewer, qtbot,
                                                                             loop_probe):
    viewer = make_napari_viewer()
    image, truth = ball_volume(np.random.default_rng(2), shape=SHAPE, n=6)
    viewer.add_image(image, name="vol")
    viewer.add_labels(two_plane_annotation(truth), name="vol annotations")

    train = TrainWidget(viewer)
    train.image.value, train.labels.value = "vol", "vol annotations"
    train.task.value = TASK_LABELS["partial"]
    train.dims.value = VOLUME
    train.init.value = SCRATCH
    for name, value in {"base_width": 8, "depth": 2, "patch_size": 0, "batch_size": 0,  # sizes: auto
                        "preview_every": 0.5, "preview_mc": 0, "device": "cpu"}.items():
        getattr(train, name).value = value
    request = train.request
    train.request = lambda: replace(request(), steps=STEPS, time_limit=None, seed=0)
    pairs, _ = train._gather()
    cfg = train.config(pairs)
    assert cfg.model.dims == 3 and cfg.task == "instances" and cfg.sparse
    assert pairs[0][0].shape == SHAPE  # partial: the whole volume trains, the painted planes inside it

    unpainted = 10
    viewer.dims.set_current_step(0, unpainted)
    train.train_button.changed.emit(True)
    loop_probe.start()
    qtbot.waitUntil(lambda: train.previews >= 1, timeout=120_000)
    probability = viewer.layers["vol probability"].data
    filled = np.flatnonzero(probability.reshape(len(probability), -1).any(axis=1))
    assert probability.shape == SHAPE and filled.tolist() == [unpainted]  # the current slice's preview
    qtbot.waitUntil(lambda: train.worker is None, timeout=300_000)
    loop_probe.stop()
    assert "done" in train.status.value, train.status.value
    print(f"event loop while training: longest gap {loop_probe.longest_ms:.0f} ms, "
          f"p95 {loop_probe.percentile_ms(95):.0f} ms over {len(loop_probe.gaps)} ticks")
    assert loop_probe.longest_ms < 5000  # not trained on the GUI thread (the figure: bench_ui_responsiveness)
    model = session_for(viewer).model
    assert model.config.model.dims == 3 and model.config.sparse

    predict = PredictWidget(viewer)
    predict.model.value, predict.mc_samples.value, predict.image.value = CURRENT, 0, "vol"
    predict.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=60_000)
    prediction = np.asarray(viewer.layers["vol prediction"].data)
    assert prediction.shape == SHAPE

    others = [z for z in range(SHAPE[0]) if z not in PAINTED]
    planes = evaluate_instances([(prediction[z], truth[z]) for z in others])
    between = evaluate_instances([(prediction[z], truth[z]) for z in range(PAINTED[0] + 1, PAINTED[1])])
    volume = evaluate_instances([(prediction, truth)])
    print(f"unpainted planes: AP@0.5 {planes['ap50']:.3f} ({planes['n_gt']} ball sections), between the "
          f"painted planes {between['ap50']:.3f}; whole volume 3D AP@0.5 {volume['ap50']:.3f}; the unpainted "
          f"ball: IoU {best_iou(prediction, truth == FREE_BALL):.2f}")
    # training seeds 0-2: 1.000 between the painted planes, 0.94-1.00 on all unpainted planes, the
    # unpainted ball at IoU 0.94-0.96 (about the same with the run cut to planes 3-16)
    assert between["ap50"] >= 0.8  # the sections of balls on planes nobody painted are found...
    assert planes["ap50"] >= 0.8  # ...also beyond the painted planes
    assert best_iou(prediction, truth == FREE_BALL) >= 0.7  # and the ball no painted plane cuts


def best_iou(prediction: np.ndarray, ball: np.ndarray) -> float:
    """The IoU of ``ball`` (a boolean volume) with the predicted object that overlaps it most."""
    ids, shared = np.unique(prediction[ball & (prediction > 0)], return_counts=True)
    if not len(ids):
        return 0.0
    best = ids[np.argmax(shared)]
    return float(shared.max() / np.count_nonzero(ball | (prediction == best)))
