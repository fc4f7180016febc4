"""Issue #28, "paint a few objects, click Train": on the stained colour sample, five painted nuclei
and a few background strokes in partial mode train a model that finds nuclei nobody painted."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from napari_unet.data.samples import stained_sample
from napari_unet.widgets.annotate import MODES, AnnotateWidget
from napari_unet.widgets.predict import PredictWidget
from napari_unet.widgets.train import CURRENT, SCRATCH, TASK_LABELS, TrainWidget

PAINTED = 5
STEPS = 150  # a fixed step count (not a time limit), so a busy machine gives the same model


def painted_ids(truth: np.ndarray, n: int) -> list[int]:
    """The ``n`` largest ground-truth nuclei: what a user paints first."""
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    return [int(i) for i in ids[np.argsort(sizes)[::-1][:n]]]


def background_strokes(truth: np.ndarray) -> np.ndarray:
    """Three horizontal brush strokes (7 px wide) over the background, kept 3 px clear of every nucleus."""
    clear = ~ndi.binary_dilation(truth > 0, iterations=3)
    strokes = np.zeros(truth.shape, bool)
    for y in (truth.shape[0] // 4, truth.shape[0] // 2, 3 * truth.shape[0] // 4):
        strokes[y - 3:y + 4] = True
    return strokes & clear


def test_few_painted_nuclei_train_a_model_that_finds_unpainted_ones(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    for data, kwargs, kind in stained_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    truth = np.asarray(viewer.layers["stained nuclei ground truth"].data)

    annotate = AnnotateWidget(viewer)
    annotate.image.value = "stained nuclei"
    annotate.mode.value = next(k for k, v in MODES.items() if v == "partial")
    labels = annotate.attach()
    chosen = painted_ids(truth, PAINTED)
    for new_id, gt_id in enumerate(chosen, start=2):  # one brush id per nucleus, as the N key gives them
        labels.data_setitem(np.nonzero(truth == gt_id), new_id)
    labels.data_setitem(np.nonzero(background_strokes(truth)), 1)
    stats = annotate.stats.value
    assert f"{PAINTED} objects" in stats and "background px" in stats

    predict = PredictWidget(viewer)
    predict.mc_samples.value = 0
    train = TrainWidget(viewer)
    assert train.task.value == TASK_LABELS["partial"]  # the project's mode chose the task
    train.image.value, train.labels.value, train.init.value = "stained nuclei", "stained nuclei annotations", SCRATCH
    train.patch_size.value, train.batch_size.value = 64, 4
    train.base_width.value, train.depth.value, train.device.value = 8, 3, "cpu"
    train.preview_every.value, train.preview_mc.value = 0.0, 0
    request = train.request
    train.request = lambda: replace(request(), steps=STEPS, time_limit=None, seed=0)
    cfg = train.config(train._gather()[0])
    assert cfg.task == "instances" and cfg.sparse and cfg.steps == STEPS

    train.train_button.changed.emit(True)
    assert train.worker is not None
    qtbot.waitUntil(lambda: train.worker is None, timeout=240_000)
    assert "done" in train.status.value, train.status.value
    assert predict.model.value == CURRENT  # the run just finished is what Predict uses

    predict.image.value = "stained nuclei"
    predict.predict_button.changed.emit(True)
    qtbot.waitUntil(lambda: predict.worker is None, timeout=60_000)
    prediction = np.asarray(viewer.layers["stained nuclei prediction"].data)
    assert prediction.shape == truth.shape

    found, on_nuclei = centred_in(prediction, truth, chosen)
    unpainted = len(np.unique(truth[truth > 0])) - PAINTED
    print(f"{found} predicted objects centred in the {unpainted} unpainted nuclei, {on_nuclei} of "
          f"{prediction.max()} in any nucleus")
    # seeds 0-4 found 27-38 (of 68 unpainted), about 90 % of the predicted objects on a nucleus
    assert found >= 15  # the model generalised from 5 painted nuclei to many nobody painted...
    assert on_nuclei >= 0.6 * prediction.max()  # ...without calling everything a nucleus


def centred_in(prediction: np.ndarray, truth: np.ndarray, painted: list[int]) -> tuple[int, int]:
    """How many predicted objects have their centroid in a ground-truth nucleus nobody painted,
    and how many in any ground-truth nucleus."""
    ids = [i for i in np.unique(prediction) if i > 0]
    centres = ndi.center_of_mass(np.ones_like(prediction), prediction, ids)
    at = [int(truth[int(round(y)), int(round(x))]) for y, x in centres]
    return sum(1 for gt in at if gt > 0 and gt not in painted), sum(1 for gt in at if gt > 0)
