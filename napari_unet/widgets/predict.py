"""The Predict widget: run a model over the selected image layer in the background."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox

from napari_unet.widgets._layers import (find_layer, layers_of_type, prediction_name, probability_name,
                                         show_image, show_labels, show_uncertainty, uncertainty_name)
from napari_unet.config import MC_SAMPLES_WHEN_ASKED, SETTINGS, SHAPE, PredictConfig
from napari_unet.widgets._base import PluginWidget, diameter_control, read_diameter
from napari_unet.widgets._next_regions import RegionTour
from napari_unet.widgets._worker import format_seconds, on_close, run_in_thread, show_failure, unless_closed
from napari_unet.widgets.train import FOLDER, _fixed_height, gui_threads, pretrained_choices
from napari_unet.workflows.model_spec import CURRENT

CURRENT_IMAGE, TRAINING_SET = "current image", "all training-set images"

if TYPE_CHECKING:
    import napari

PACKAGE = "bioimage.io package…"  # a .zip that napari-unet exported (export-model --format bioimageio)


class PredictWidget(PluginWidget):
    """Model choice, MC-dropout samples, Predict/Cancel, progress; writes prediction layers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        viewer = self.viewer
        self.image = ComboBox(label="Image", nullable=True,
                              choices=lambda _w: [l.name for l in layers_of_type(viewer, "image")])
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model_folder = FileEdit(label="Model folder", mode="d", visible=False)
        self.model_package = FileEdit(label="Package", mode="r", filter="*.zip", visible=False,
                                      tooltip="a bioimage.io model package exported by napari-unet")
        mc, kind = SETTINGS["mc_samples"], SETTINGS["uncertainty_kind"]
        self.mc_samples = SpinBox(label=mc.label, value=MC_SAMPLES_WHEN_ASKED, min=0, max=64,
                                  tooltip=mc.help + "; 0: no uncertainty layer")
        # which uncertainty map is shown (``uncertainty`` is the switch of the CLI and the batch export)
        self.uncertainty_kind = ComboBox(label=kind.label, choices=list(kind.choices), value=kind.choices[0],
                                         tooltip=kind.help)
        self.diameter = diameter_control()
        self.predict_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1000, value=0)
        self.status = Label(value="")
        _fixed_height(self.status)  # the whole row, and no re-layout when the text changes
        self.scope = ComboBox(label="Suggest from", choices=[CURRENT_IMAGE, TRAINING_SET], value=CURRENT_IMAGE,
                              tooltip="rank the chosen image, or every training-set image (those without an "
                                      "uncertainty layer are predicted first with the model above)")
        self.n_regions = SpinBox(label="Regions", value=5, min=1, max=50)
        self.region_size = SpinBox(label="Region size (px)", value=96, min=16, max=2048, step=16)
        self.suggest_button = PushButton(text="Suggest where to annotate")
        self.next_button = PushButton(text="Go to next region")
        self.extend([self.image, self.model, self.model_folder, self.model_package, self.mc_samples,
                     self.uncertainty_kind, self.diameter,
                     Container(widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False),
                     self.progress, self.status, Label(value="<b>Annotate next</b>"), self.scope, self.n_regions,
                     self.region_size,
                     Container(widgets=[self.suggest_button, self.next_button], layout="horizontal", labels=False)])
        self.suggest_button.changed.connect(self.suggest)
        self.next_button.changed.connect(self.go_to_next)
        self.tour = RegionTour(self.viewer, self.session)
        self.model.changed.connect(lambda v: setattr(self.model_folder, "visible", v == FOLDER))
        self.model.changed.connect(lambda v: setattr(self.model_package, "visible", v == PACKAGE))
        self.predict_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self._model_seen = self.session.model  # the session's model the choice last followed
        self.session.changed.connect(self._on_session_changed)
        on_close(self, lambda w: w.worker.quit() if w.worker is not None else None)
        self.preselect_layers(self.image)

    def _on_session_changed(self) -> None:
        """Refresh the model choices; when the session has a new model (a Train run finished, or
        a model was loaded there), choose it, so Predict uses what was just trained."""
        self.model.reset_choices()
        if self.session.model is not None and self.session.model is not self._model_seen:
            self.model.value = CURRENT
        self._model_seen = self.session.model

    def suggest(self) -> None:
        """Rank windows by uncertainty (of the chosen image, or of every training-set image) and
        show the top ones as the Shapes layer ``annotate next``."""
        from dataclasses import replace

        from napari.utils.notifications import show_warning

        from napari_unet.inference.suggest import rank_regions

        if self.scope.value == TRAINING_SET:
            self._suggest_training_set()
            return
        image = find_layer(self.viewer, self.image.value)
        layer = None if image is None else find_layer(self.viewer, uncertainty_name(image.name))
        if layer is None:
            show_warning("no uncertainty yet: predict with MC samples > 0, or train with preview MC samples")
            return
        regions = rank_regions(self._plane(layer), self.region_size.value, self.n_regions.value)
        self.tour.start([replace(r, name=image.name) for r in regions], image.name)
        self._report()

    def _suggest_training_set(self) -> None:
        """Rank over all training-set images; those without a ``kind`` uncertainty layer are
        predicted first (in a worker, with the chosen model and MC-dropout samples)."""
        from napari.utils.notifications import show_warning

        names = [n for n in self.session.project.names() if find_layer(self.viewer, n) is not None]
        if not names:
            show_warning("the training set is empty: attach annotations to images in the Annotate widget")
            return
        kind = self.uncertainty_kind.value
        missing = [n for n in names if not _has_uncertainty(self.viewer, n, kind)]
        if not missing:
            self._rank_training_set(names)
            return
        if self.worker is not None:
            return
        if self.mc_samples.value < 2:
            show_warning(f"{len(missing)} training-set image(s) have no uncertainty yet: set MC-dropout samples >= 2")
            return
        spec = self._model_spec()
        if spec is None:
            return
        cfg, current = self._predict_config(), self.session.model
        if cfg is None:
            return
        layers = [self.viewer.layers[n] for n in missing]
        items = [(layer.name, np.asarray(layer.data), bool(layer.rgb)) for layer in layers]
        self.status.value = f"uncertainty of {len(items)} training-set image(s)…"
        self.predict_button.enabled, self.cancel_button.enabled = False, True
        self.worker = run_in_thread(lambda: _uncertainty_events(spec, current, items, cfg, kind), self._on_event,
                                    lambda maps: self._on_maps(maps, names, kind), self._on_error,
                                    self._on_finished)

    @unless_closed
    def _on_maps(self, maps: dict, names: list[str], kind: str) -> None:
        """Show the computed uncertainty layers (only the image on screen's visibly), then rank."""
        for name, values in maps.items():
            image = find_layer(self.viewer, name)
            if image is not None:
                layer = show_uncertainty(self.viewer, image, values, kind)
                layer.visible = image.visible and name == self.image.value
        self._rank_training_set([n for n in names if find_layer(self.viewer, n) is not None])

    def _rank_training_set(self, names: list[str]) -> None:
        from napari_unet.inference.suggest import rank_regions_across

        maps = [self._plane(self.viewer.layers[uncertainty_name(n)]) for n in names]
        regions = rank_regions_across(maps, self.region_size.value, self.n_regions.value, names)
        self.tour.start(regions, self.image.value if self.image.value in names else None)
        self._after_move()

    def go_to_next(self) -> None:
        """Centre the camera on the next suggested region (wrapping around), switching images if needed."""
        if self.tour.next() is not None:
            self._after_move()

    def _after_move(self) -> None:
        region = self.tour.regions[self.tour.index] if self.tour.regions else None
        if region is not None and region.name in self.viewer.layers and region.name != self.image.value:
            self.image.value = region.name  # Predict and Suggest now act on the image on show
        self._report()

    def _report(self) -> None:
        if not self.tour.regions:
            self.status.value = "no region to suggest"
            return
        region, n = self.tour.regions[self.tour.index], len(self.tour.regions)
        self.status.value = f"region {self.tour.index + 1}/{n}" + region_summary(region, self.scope.value == TRAINING_SET)
        kind = self.uncertainty_kind.value
        unit = "" if kind == SHAPE else " nats"  # the shape spread is in pixels or flow units
        self.status.tooltip = (f"mean {kind} uncertainty in this region {region.mean:.2g}{unit}, "
                               f"{region.relative:.1f} times the image's mean")

    def _plane(self, layer: Any) -> np.ndarray:
        """A 2D uncertainty map: the layer's data, or its slice at the viewer's current step."""
        values = np.asarray(layer.data)
        return values if values.ndim == 2 else values[min(self.viewer.dims.current_step[0], values.shape[0] - 1)]

    def _model_spec(self) -> str | None:
        """What to load: CURRENT, a pretrained name or a folder; None (after a warning) when no model."""
        from napari.utils.notifications import show_warning

        from napari_unet.workflows.model_spec import resolve_model
        from napari_unet.errors import UserError

        choice = self.model.value
        if choice == CURRENT:
            try:
                resolve_model(CURRENT, self.session.model)  # only says whether there is one
            except UserError as exc:
                show_warning(str(exc))
                return None
        if choice == PACKAGE:
            return str(self.model_package.value)
        return str(self.model_folder.value) if choice == FOLDER else choice

    def _model_choices(self, _widget=None) -> list[str]:
        current = [CURRENT] if self.session.model is not None else []
        return [*current, *pretrained_choices(), FOLDER, PACKAGE]

    def _predict_config(self) -> PredictConfig | None:
        """The ``PredictConfig`` of the controls; None (after a one-line warning) for a bad diameter."""
        diameter = read_diameter(self.diameter)
        if diameter is None:
            return None
        return PredictConfig(mc_samples=self.mc_samples.value, diameter=diameter, threads=gui_threads())

    def start(self) -> None:
        """Predict the selected image in a worker thread."""
        from napari.utils.notifications import show_warning

        image = find_layer(self.viewer, self.image.value)
        if image is None:
            show_warning("pick an image layer to predict")
            return
        if self.worker is not None:
            return
        spec = self._model_spec()
        if spec is None:
            return
        current, cfg = self.session.model, self._predict_config()
        if cfg is None:
            return
        data, rgb, kind = np.asarray(image.data), bool(image.rgb), self.uncertainty_kind.value
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
        sizing = prediction.sizing
        if sizing is not None and sizing.how != "off":  # the estimated size and the factor used
            self.status.value += f"; {sizing.text}"
            self.status.tooltip = sizing.text

    _on_error = show_failure

    @unless_closed
    def _on_finished(self) -> None:
        self.worker = None
        self.predict_button.enabled, self.cancel_button.enabled = True, False


def region_summary(region: Any, across: bool) -> str:
    """': 3.1× the image's mean uncertainty' for the status line (``across``: ' in IMAGE' first)."""
    where = f" in {region.name}" if across else ""
    return f"{where}: {region.relative:.1f}× the image's mean uncertainty"


def _has_uncertainty(viewer: Any, name: str, kind: str) -> bool:
    """Whether image ``name`` has an uncertainty layer of ``kind``."""
    layer = find_layer(viewer, uncertainty_name(name))
    return layer is not None and layer.metadata.get("kind") == kind


def _predict_events(spec: str, current: Any, data: np.ndarray, rgb: bool, cfg: Any, kind: str):
    """Worker generator: load the model (unless it is the session's), then predict."""
    import torch

    from napari_unet.workflows.model_spec import resolve_model
    from napari_unet.inference.arrays import predict_array

    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    bundle = resolve_model(spec, current)
    prediction = yield from predict_array(bundle, data, cfg, rgb=rgb, uncertainty=kind)
    return bundle, prediction


def _uncertainty_events(spec: str, current: Any, items: list, cfg: Any, kind: str):
    """Worker generator: the ``kind`` uncertainty map of each (name, data, rgb); returns {name: map}."""
    import torch

    from napari_unet.workflows.model_spec import resolve_model
    from napari_unet.inference.arrays import predict_many

    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    predictions = yield from predict_many(resolve_model(spec, current), items, cfg, uncertainty=kind)
    return {name: prediction.uncertainty[kind] for name, prediction in predictions.items()}
