"""When a Train run finishes, the Predict widget's model choice moves to the model just trained."""

from __future__ import annotations

from types import SimpleNamespace

from napari_unet.widgets.predict import PredictWidget
from napari_unet.widgets.train import CURRENT, TrainWidget


def finished_run(steps: int = 3) -> SimpleNamespace:
    """What the Train widget reads of a finished run's model bundle."""
    return SimpleNamespace(meta={"training": {"steps": steps, "seconds": 1.0}}, task="instances")


def test_a_finished_run_becomes_the_predict_model(nuclei_viewer):
    predict = PredictWidget(nuclei_viewer)
    train = TrainWidget(nuclei_viewer)
    assert CURRENT not in predict.model.choices and predict.model.value != CURRENT
    train._on_done(finished_run())
    assert predict.model.value == CURRENT

    predict.model.value = predict.model.choices[1]  # the user picks another model...
    train.session.changed.emit()  # an unrelated session change keeps the choice
    assert predict.model.value != CURRENT
    train._on_done(finished_run(5))  # ...until the next run finishes
    assert predict.model.value == CURRENT
