"""Resume in the Train widget: a stopped run, saved and loaded back, goes on where it stopped."""

from __future__ import annotations

from napari_unet.events import Message, Progress
from napari_unet.training.state import STATE_FILES
from napari_unet.widgets._session import session_for
from napari_unet.widgets.train import SCRATCH, TrainWidget


def test_stop_save_load_and_resume(nuclei_viewer, qtbot, tmp_path):
    widget = TrainWidget(nuclei_viewer)
    widget.image.value, widget.labels.value = "nuclei", "nuclei ground truth"
    widget.init.value = SCRATCH
    widget.time_limit.value = 5  # the smallest: the resumed run ends on its own within seconds
    widget.patch_size.value, widget.batch_size.value = 64, 2
    widget.base_width.value, widget.depth.value = 4, 2
    widget.preview_every.value, widget.preview_mc.value = 0, 0
    assert not widget.resume_button.enabled  # no run yet

    widget.start()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=60_000)
    widget.stop()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    session = session_for(nuclei_viewer)
    first = session.model.meta["training"]
    assert first["stopped_early"] and widget.resume_button.enabled and widget.train_button.enabled

    # the run's state goes into the model folder with the weights, and comes back with Load model
    widget.model_folder.value = tmp_path / "model"
    widget.save_model()
    assert all((tmp_path / "model" / name).is_file() for name in STATE_FILES)
    session.model = None
    session.changed.emit()
    assert not widget.resume_button.enabled
    widget.load_model()
    assert session.model.resume.step == first["steps"] and widget.resume_button.enabled

    seen, show = [], widget._on_event

    def spy(event):  # every event the worker hands the widget
        seen.append(event)
        show(event)

    widget._on_event = spy
    widget.resume_button.changed.emit(True)
    assert widget.worker is not None and not widget.resume_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert f"resuming at step {first['steps']}" in [e.text.split(" (")[0] for e in seen if isinstance(e, Message)]
    assert next(e.done for e in seen if isinstance(e, Progress)) == first["steps"] + 1
    done = session.model.meta["training"]
    assert not done["stopped_early"] and done["steps"] > first["steps"] and done["seconds"] >= 5
    assert session.model.resume.finished and not widget.resume_button.enabled  # the time limit is spent
    assert widget.status.value.startswith("done")
