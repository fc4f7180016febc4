"""The Predict widget: run a model over the selected image layer in the background."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox

from napari_unet.widgets._layers import (find_layer, layers_of_type, prediction_name, probability_name,
                                         show_image, show_labels, show_uncertainty, uncertainty_name)
from napari_unet.widgets._base import PluginWidget
from napari_unet.widgets._worker import format_seconds, on_close, run_in_thread, show_failure, unless_closed
from napari_unet.widgets.train import CURRENT, FOLDER, gui_threads, pretrained_choices

UNCERTAINTY_KINDS = ["epistemic", "total", "aleatoric"]

if TYPE_CHECKING:
    import napari


class PredictWidget(PluginWidget):
    """Model choice, MC-dropout samples, Predict/Cancel, progress; writes prediction layers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        viewer = self.viewer
        self.image = ComboBox(label="Image", nullable=True,
                              choices=lambda _w: [l.name for l in layers_of_type(viewer, "image")])
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model_folder = FileEdit(label="Model folder", mode="d", visible=False)
        self.mc_samples = SpinBox(label="MC-dropout samples", value=8, min=0, max=64,
                                  tooltip="0 = no uncertainty layer; more samples = smoother uncertainty, slower")
        self.uncertainty = ComboBox(label="Uncertainty", choices=UNCERTAINTY_KINDS, value="epistemic")
        self.predict_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1000, value=0)
        self.status = Label(value="")
        self.n_regions = SpinBox(label="Regions", value=5, min=1, max=50)
        self.region_size = SpinBox(label="Region size (px)", value=96, min=16, max=2048, step=16)
        self.suggest_button = PushButton(text="Suggest where to annotate")
        self.next_button = PushButton(text="Go to next region")
        self.extend([self.image, self.model, self.model_folder, self.mc_samples, self.uncertainty,
                     Container(widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False),
                     self.progress, self.status, Label(value="<b>Annotate next</b>"), self.n_regions,
                     self.region_size,
                     Container(widgets=[self.suggest_button, self.next_button], layout="horizontal", labels=False)])
        self.suggest_button.changed.connect(self.suggest)
        self.next_button.changed.connect(self.go_to_next)
        self._regions: list = []
        self._region_index = -1
        self.model.changed.connect(lambda v: setattr(self.model_folder, "visible", v == FOLDER))
        self.predict_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.session.changed.connect(self.model.reset_choices)
        on_close(self, lambda w: w.worker.quit() if w.worker is not None else None)

    def suggest(self) -> None:
        """Rank windows of ``<image> uncertainty`` and show the top ones as Shapes ``annotate next``."""
        from napari.utils.notifications import show_warning

        from napari_unet.inference.suggest import rank_regions

        image = find_layer(self.viewer, self.image.value)
        layer = None if image is None else find_layer(self.viewer, uncertainty_name(image.name))
        if layer is None:
            show_warning("no uncertainty yet: predict with MC-dropout samples > 0, or train with preview MC samples")
            return
        values = np.asarray(layer.data)
        values = values if values.ndim == 2 else values[min(self.viewer.dims.current_step[0], values.shape[0] - 1)]
        self._regions = rank_regions(values, self.region_size.value, self.n_regions.value)
        shapes = [r.corners() for r in self._regions]
        texts = {"string": [f"#{i + 1}" for i in range(len(shapes))], "color": "yellow", "size": 12}
        if "annotate next" in self.viewer.layers:
            self.viewer.layers.remove("annotate next")
        active = self.viewer.layers.selection.active
        self.viewer.add_shapes(shapes, shape_type="rectangle", name="annotate next", edge_color="yellow",
                               face_color="transparent", edge_width=3, text=texts,
                               scale=tuple(image.scale[-2:]), translate=tuple(image.translate[-2:]))
        self.viewer.layers.selection.active = active
        self._region_index = -1
        self.go_to_next()

    def go_to_next(self) -> None:
        """Centre the camera on the next suggested region (wrapping around)."""
        if not self._regions:
            return
        self._region_index = (self._region_index + 1) % len(self._regions)
        region = self._regions[self._region_index]
        layer = self.viewer.layers["annotate next"] if "annotate next" in self.viewer.layers else None
        scale = np.asarray(layer.scale[-2:]) if layer is not None else np.ones(2)
        offset = np.asarray(layer.translate[-2:]) if layer is not None else np.zeros(2)
        centre = np.asarray(region.centre) * scale + offset
        self.viewer.camera.center = tuple(centre)
        canvas = getattr(self.viewer, "_canvas_size", (600, 600))
        extent = float(max(region.y1 - region.y0, region.x1 - region.x0) * scale.max())
        self.viewer.camera.zoom = 0.6 * min(canvas) / max(extent, 1.0)
        self.status.value = f"region {self._region_index + 1}/{len(self._regions)}: uncertainty {region.score:.3f}"

    def _model_choices(self, _widget=None) -> list[str]:
        current = [CURRENT] if self.session.model is not None else []
        return [*current, *pretrained_choices(), FOLDER]

    def start(self) -> None:
        """Predict the selected image in a worker thread."""
        from napari.utils.notifications import show_warning

        from napari_unet.config import PredictConfig

        image = find_layer(self.viewer, self.image.value)
        if image is None:
            show_warning("pick an image layer to predict")
            return
        if self.worker is not None:
            return
        choice = self.model.value
        if choice == CURRENT and self.session.model is None:
            show_warning("no model yet: train one, load one, or choose a pretrained model")
            return
        spec = str(self.model_folder.value) if choice == FOLDER else choice
        current = self.session.model
        cfg = PredictConfig(mc_samples=self.mc_samples.value, threads=gui_threads())
        data, rgb, kind = np.asarray(image.data), bool(image.rgb), self.uncertainty.value
        self._target = image
        self.progress.value = 0
        self.status.value = "predicting…"
        self.predict_button.enabled, self.cancel_button.enabled = False, True
        self.worker = run_in_thread(lambda: _predict_events(spec, current, data, rgb, cfg, kind), self._on_event,
                                    self._on_done, self._on_error, self._on_finished)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelled"

    @unless_closed
    def _on_event(self, event: Any) -> None:
        from napari_unet.events import Progress

        if isinstance(event, Progress) and event.total:
            self.progress.value = int(1000 * event.done / event.total)
            self.status.value = f"{event.message} · {format_seconds(event.eta)} left"

    @unless_closed
    def _on_done(self, result: Any) -> None:
        bundle, prediction = result
        image = self._target
        if image not in self.viewer.layers:
            return
        task = bundle.task
        show_labels(self.viewer, prediction_name(image.name), prediction.labels, like=image, metadata={"task": task})
        self.viewer.layers[prediction_name(image.name)].metadata["task"] = task
        show_image(self.viewer, probability_name(image.name), (1.0 - prediction.probabilities[0]).astype(np.float32),
                   like=image, colormap="magma", opacity=0.45, blending="additive", contrast_limits=(0.0, 1.0),
                   visible=False)
        for kind, values in prediction.uncertainty.items():
            show_uncertainty(self.viewer, image, values, kind)
        self.progress.value = 1000
        n = int(prediction.labels.max()) if task == "instances" else len(np.unique(prediction.labels))
        self.status.value = f"done: {n} {'objects' if task == 'instances' else 'classes'}"

    _on_error = show_failure

    @unless_closed
    def _on_finished(self) -> None:
        self.worker = None
        self.predict_button.enabled, self.cancel_button.enabled = True, False


def _predict_events(spec: str, current: Any, data: np.ndarray, rgb: bool, cfg: Any, kind: str):
    """Worker generator: load the model (unless it is the session's), then predict."""
    import torch

    from napari_unet.inference.arrays import predict_array
    from napari_unet.training.checkpoint import load_bundle

    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    if spec == CURRENT:
        bundle = current
    else:
        from napari_unet.pretrained import resolve_init

        folder = resolve_init(spec)
        bundle = load_bundle(folder)
    prediction = yield from predict_array(bundle, data, cfg, rgb=rgb, uncertainty=kind)
    return bundle, prediction
