"""The Batch export widget: predict whole folders to TIFF / PNG / OME-Zarr with a summary table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, Table

from napari_unet.config import SETTINGS
from napari_unet.widgets._base import PluginWidget, diameter_control, read_diameter
from napari_unet.widgets._worker import format_seconds, on_close, run_in_thread, show_failure, unless_closed
from napari_unet.widgets.train import FOLDER, gui_threads, pretrained_choices
from napari_unet.workflows.batch_file import BatchConfig
from napari_unet.workflows.model_spec import CURRENT

SHOWN = ["file", "status", "objects", "mean_area", "mean_uncertainty", "seconds", "error"]

if TYPE_CHECKING:
    import napari


class ExportWidget(PluginWidget):
    """Model, input folder, output folder and format; progress, cancel, per-image summary (failed
    files are rows with their error; files an earlier export completed are skipped)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        viewer = self.viewer
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model_folder = FileEdit(label="Model folder", mode="d", visible=False)
        self.inputs = FileEdit(label="Input folder", mode="d")
        self.recursive = CheckBox(text="Include sub-folders", value=False)
        self.output = FileEdit(label="Output folder", mode="d")
        self.format = ComboBox(label="Format", choices=["tif", "png", "ome-zarr"], value=BatchConfig.format)
        self.probabilities = CheckBox(text="Also write probabilities", value=False)
        self.uncertainty = CheckBox(text="Also write MC-dropout uncertainty", value=BatchConfig.uncertainty,
                                    tooltip=f"{SETTINGS['uncertainty'].help} ({BatchConfig.mc_samples} MC samples)")
        self.diameter = diameter_control()
        self.overwrite = CheckBox(text="Predict files already done again", value=False,
                                  tooltip="off: files an earlier export completed in the output folder are skipped")
        self.run_button = PushButton(text="Export")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1000, value=0)
        self.status = Label(value="")
        self.table = Table(value=_table([]))
        self._counts: dict = {}  # Finished.summary of the last run (images, failed, skipped)
        self.extend([self.model, self.model_folder, self.inputs, self.recursive, self.output, self.format,
                     self.probabilities, self.uncertainty, self.diameter, self.overwrite,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                     self.progress, self.status, self.table])
        self.model.changed.connect(lambda v: setattr(self.model_folder, "visible", v == FOLDER))
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.session.changed.connect(self.model.reset_choices)
        on_close(self, lambda w: w.cancel())

    def _model_choices(self, _widget=None) -> list[str]:
        current = [CURRENT] if self.session.model is not None else []
        return [*current, *pretrained_choices(), FOLDER]

    def start(self) -> None:
        """Predict every image of the input folder in a worker thread."""
        from napari.utils.notifications import show_warning

        from napari_unet.workflows.batch import collect_inputs
        from napari_unet.config import PredictConfig
        from napari_unet.workflows.model_spec import batch_source
        from napari_unet.errors import UserError

        if self.worker is not None:
            return
        diameter = read_diameter(self.diameter)
        if diameter is None:
            return
        choice = self.model.value
        if choice == FOLDER:
            choice = str(self.model_folder.value)
        try:
            model, preloaded = batch_source(choice, self.session.model)
            inputs = collect_inputs([self.inputs.value], self.recursive.value)
            if not inputs:
                raise UserError(f"no images found in {self.inputs.value}")
        except UserError as exc:
            show_warning(str(exc))
            return
        bcfg = BatchConfig(format=self.format.value, probabilities=self.probabilities.value,
                           uncertainty=self.uncertainty.value, overwrite=self.overwrite.value)
        pcfg = PredictConfig(diameter=diameter, threads=gui_threads())
        out = self.output.value

        def events():
            from napari_unet.workflows.batch import predict_batch

            return (yield from predict_batch(model, inputs, out, pcfg, bcfg, preloaded=preloaded))

        self.table.value = _table([])
        self.progress.value = 0
        self._counts = {}
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.worker = run_in_thread(events, self._on_event, self._on_done, self._on_error, self._on_finished)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelling after the current file…"

    @unless_closed
    def _on_event(self, event: Any) -> None:
        from napari_unet.events import Finished, Message, Progress

        if isinstance(event, Progress) and event.total:
            self.progress.value = int(1000 * event.done / event.total)
            self.status.value = f"{event.done}/{event.total} · {event.message} · {format_seconds(event.eta)} left"
        elif isinstance(event, Message):
            self.status.value = event.text
        elif isinstance(event, Finished):
            self._counts = dict(event.summary)

    @unless_closed
    def _on_done(self, rows: list[dict]) -> None:
        from pathlib import Path

        from napari.utils.notifications import show_warning

        data = [[Path(row["file"]).name, *(_short(row.get(c)) for c in SHOWN[1:])] for row in rows]
        self.table.value = _table(data)
        self.progress.value = 1000
        failed = sum(row["status"] == "failed" for row in rows)
        skipped = self._counts.get("skipped", 0)
        notes = [f"{skipped} already done"] if skipped else []
        notes += [f"{failed} of {len(rows)} failed"] if failed else []
        self.status.value = (f"exported {len(rows) - failed} image(s) to {self.output.value}"
                             + (f" ({', '.join(notes)})" if notes else ""))
        if failed:
            show_warning(f"{failed} of {len(rows)} files could not be predicted: see the table "
                         f"(status, error) and summary.csv")

    _on_error = show_failure

    @unless_closed
    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False


def _table(rows: list[list]) -> dict:
    """magicgui Table value in 'split' form (rows of the SHOWN columns)."""
    return {"data": rows, "index": list(range(len(rows))), "columns": SHOWN}


def _short(value: Any) -> Any:
    """Numbers (also numeric strings) rounded for display; other values unchanged."""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return round(value, 3) if isinstance(value, float) else value
