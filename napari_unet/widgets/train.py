"""The Train widget: click-to-train in a background thread with a live preview over the image."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, SpinBox)

from napari_unet.arrays.layout import array_layout
from napari_unet.config import (LIVE_UNCERTAINTY_MC, SETTINGS, SYNTHETIC_RATIO, TASK_LABELS, USER_TASKS,
                                AugmentConfig, LossConfig, TrainConfig, UNetConfig)
from napari_unet.workflows.classes import config_task, zero_is_unannotated
from napari_unet.workflows.model_spec import CURRENT
from napari_unet.workflows.train_run import TrainRun, asked_architecture
from napari_unet.widgets._layers import (annotations_name, find_layer, layers_of_type, prediction_name,
                                         probability_name, show_image, show_labels, show_uncertainty,
                                         uncertainty_name)
from napari_unet.widgets._base import PluginWidget
from napari_unet.widgets._worker import (format_seconds, load_folder, on_close, progress_permille, run_in_thread,
                                         save_folder, show_failure, unless_closed)

TASKS = {TASK_LABELS[task]: task for task in USER_TASKS}  # choice -> user task (labels: config.TASK_LABELS)
SCRATCH, FOLDER = "none (from scratch)", "model folder…"
SLICES, VOLUME = "2D (slice by slice)", "3D"
SYNC_INTERVAL_MS = 1000
STATUS_INTERVAL_S = 1.0
DETECTING = "device: detecting…"  # the device line until the warm-up or a run's RunSetup (device, sizes)
ARCHITECTURE_TIP = ("from scratch; a starting model keeps its own, and one unlike it here is an error "
                    "(leave the default to take the starting model's)")

if TYPE_CHECKING:
    import napari


def gui_threads() -> int:
    """Torch threads for background work: leave one core to the viewer."""
    return max(1, (os.cpu_count() or 2) - 1)


def pretrained_choices() -> list[str]:
    """Names like ``pretrained:nuclei`` for the shipped starting models (none if unavailable)."""
    try:
        from napari_unet.pretrained import available
    except ImportError:
        return []
    return [f"pretrained:{name}" for name in available()]


class TrainWidget(PluginWidget):
    """Settings, Train/Stop, progress with ETA, live loss/validation plot, save/load model."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self.run: TrainRun | None = None
        self._trained = None  # the model this widget's last run returned (Resume keeps its plot)
        self._volumes = False  # the running (or last) run trains a 3D model
        self._zero_unannotated = False  # ...on masks where 0 is "not annotated" (whole volumes train)
        self._plane: tuple[int, int] | None = None  # 3D current-slice preview: (z, its index in the slab)
        self._preview_target = None
        self.previews = 0
        self._status_time = 0.0
        self._edited = False
        self._build_data_controls()
        self._build_run_controls()
        self._build_advanced()
        self._build_buttons()
        self._lay_out()
        self._connect()
        self.preselect_layers(self.image, self.labels)
        self._on_image_changed(self.image.value)
        self._on_session_changed()
        self._warm_up = start_warm_up(self.device_label)

    def _build_data_controls(self) -> None:
        """What to train on and what kind of model: image, annotations, task, head, 2D/3D."""
        viewer = self.viewer
        self.image = ComboBox(label="Image", choices=lambda _w: [l.name for l in layers_of_type(viewer, "image")],
                              nullable=True, tooltip="previewed while training; trained on with its annotations")
        self.labels = ComboBox(label="Annotations", nullable=True,
                               choices=lambda _w: [l.name for l in layers_of_type(viewer, "labels")
                                                   if not l.name.endswith(" prediction")])
        self.task = ComboBox(label=SETTINGS["task"].label, choices=list(TASKS), value=TASK_LABELS[TrainConfig.task],
                             tooltip=SETTINGS["task"].help)
        from napari_unet import heads  # here, not at the top: the heads import torch, opening a widget must not

        self.instance_head = ComboBox(label="Instance head", choices=list(heads.names()),
                                      value=TrainConfig.instance_head,
                                      tooltip="; ".join(f"{name}: {heads.get(name).description}"
                                                        for name in heads.names()))
        self.dims = ComboBox(label="Model", choices=[SLICES, VOLUME], value=SLICES, visible=False, enabled=False,
                             tooltip="3D image: a 2D model trained on its annotated slices, or a 3D U-Net on the "
                                     "annotated z-range (annotate every plane of it; with partial instances or scribbles "
                                     "a few painted planes are enough; z-scale from the layer's scale)")
        self.preview_volume = CheckBox(text="Preview the whole volume", value=False, visible=False,
                                       tooltip="off: only the current slice is previewed (cheap)")

    def _build_run_controls(self) -> None:
        """Where the run starts from, how long and where it runs."""
        self.init = ComboBox(label="Start from", choices=self._init_choices)
        self.init_folder = FileEdit(label="Model folder", mode="d", visible=False)
        self.time_limit = SpinBox(label="Time limit (s)", value=int(TrainConfig.time_limit), min=5, max=7 * 24 * 3600,
                                  step=30)
        self.device = ComboBox(label=SETTINGS["device"].label, choices=list(SETTINGS["device"].choices),
                               value=TrainConfig.device, tooltip=SETTINGS["device"].help)
        self.device_label = Label(value=DETECTING)
        self.show_advanced = CheckBox(text="Advanced settings", value=False)

    def _build_advanced(self) -> None:
        """The advanced settings, hidden until asked for; defaults from the config dataclasses."""
        self.base_width = SpinBox(label="Base width", value=UNetConfig().base_width, min=4, max=128,
                                  tooltip=ARCHITECTURE_TIP)
        self.depth = SpinBox(label="Depth", value=UNetConfig().depth, min=1, max=6, tooltip=ARCHITECTURE_TIP)
        auto = "0 = sized to the device (runtime.device.default_sizes)"
        self.patch_size = SpinBox(label="Patch size (0 = auto)", value=0, min=0, max=1024, step=32, tooltip=auto)
        self.batch_size = SpinBox(label="Batch size (0 = auto)", value=0, min=0, max=128, tooltip=auto)
        self.learning_rate = FloatSpinBox(label="Learning rate", value=TrainConfig.learning_rate, min=1e-6, max=1.0,
                                          step=1e-4)
        self.elastic = CheckBox(text="Elastic deformation", value=AugmentConfig.elastic)
        self.w0 = FloatSpinBox(label="Border weight w0", value=LossConfig.border_w0, min=0.0, max=100.0)
        self.sigma = FloatSpinBox(label="Border σ (px)", value=LossConfig.border_sigma, min=0.5, max=50.0)
        self.preview_every = FloatSpinBox(label="Preview every (s)", value=TrainConfig.preview_every, min=0.0,
                                          max=600.0)
        ratio, mc = SETTINGS["synthetic_ratio"], SETTINGS["preview_mc_samples"]
        self.synthetic_ratio = FloatSpinBox(label=ratio.label, value=SYNTHETIC_RATIO, min=0.0, max=0.95, step=0.05,
                                            tooltip=ratio.help + ": the accepted synthetic pairs'")
        self.preview_mc = SpinBox(label=mc.label, value=LIVE_UNCERTAINTY_MC, min=0, max=32, tooltip=mc.help)
        self.advanced = Container(widgets=[self.base_width, self.depth, self.patch_size, self.batch_size,
                                           self.learning_rate, self.elastic, self.w0, self.sigma, self.preview_every,
                                           self.preview_mc, self.synthetic_ratio],
                                  visible=False)

    def _build_buttons(self) -> None:
        """Train/Stop/Resume, progress and status, the plot, and the model folder's Save/Load."""
        from napari_unet.widgets._plot import TrainingPlot

        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.resume_button = PushButton(text="Resume", enabled=False,
                                        tooltip="continue the current model's stopped run where it stopped: the same "
                                                "training set, its own settings and time limit (a stopped run here, "
                                                "or a model folder loaded with its training state)")
        self.progress = ProgressBar(label="Progress", min=0, max=1000, value=0)
        self.status = Label(value="")
        _fixed_height(self.status)
        self.plot = TrainingPlot()
        self.model_folder = FileEdit(label="Model", mode="d")
        self.save_button = PushButton(text="Save model")
        self.load_button = PushButton(text="Load model")
        self.model_label = Label(value="no model yet")

    def _lay_out(self) -> None:
        """The controls top to bottom, the plot under the status line."""
        self.extend([self.image, self.labels, self.task, self.instance_head, self.dims, self.preview_volume, self.init,
                     self.init_folder, self.time_limit, self.device,
                     self.device_label, self.show_advanced, self.advanced,
                     Container(widgets=[self.train_button, self.stop_button, self.resume_button], layout="horizontal",
                               labels=False),
                     self.progress, self.status])
        self.extend([self.model_folder,
                     Container(widgets=[self.save_button, self.load_button], layout="horizontal", labels=False),
                     self.model_label])
        layout = self.native.layout()
        rows = [layout.itemAt(i).widget() for i in range(layout.count())]
        below = next((i for i, w in enumerate(rows)
                      if w is not None and (w is self.status.native or w.isAncestorOf(self.status.native))), -2)
        layout.insertWidget(below + 1, self.plot)

    def _connect(self) -> None:
        """Controls, buttons, the viewer's slice, the session and the annotation sync timer."""
        from qtpy.QtCore import QTimer

        self.show_advanced.changed.connect(lambda v: setattr(self.advanced, "visible", v))
        self.init.changed.connect(lambda v: setattr(self.init_folder, "visible", v == FOLDER))
        self.image.changed.connect(self._on_image_changed)
        self.task.changed.connect(self._on_task_changed)
        self.dims.changed.connect(self._on_dims_changed)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.train_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.resume_button.changed.connect(self.resume)
        self.save_button.changed.connect(self.save_model)
        self.load_button.changed.connect(self.load_model)
        self.session.annotations_edited.connect(self._on_edited)
        self.session.changed.connect(self._on_session_changed)
        self._sync = QTimer()
        self._sync.setInterval(SYNC_INTERVAL_MS)
        self._sync.timeout.connect(self._push_annotations)
        on_close(self, lambda w: w.run.stop() if w.run is not None else None)

    # -- choices -----------------------------------------------------------------------------
    def _init_choices(self, _widget=None) -> list[str]:
        task = TASKS.get(getattr(getattr(self, "task", None), "value", "instances"), "instances")
        volume = hasattr(self, "dims") and self._volume_mode()  # the shipped models are 2D
        pretrained = pretrained_choices() if config_task(task) == "instances" and not volume else []
        current = [CURRENT] if getattr(self, "session", None) and self.session.model is not None else []
        return [*current, *pretrained, SCRATCH, FOLDER]

    def _on_task_changed(self, _value=None) -> None:
        self.init.reset_choices()
        self.instance_head.visible = config_task(TASKS[self.task.value]) == "instances"

    def _volume_mode(self) -> bool:
        """Whether the settings ask for a 3D model (a volume image and the 3D choice)."""
        return self.dims.enabled and self.dims.value == VOLUME

    def _on_dims_changed(self, _value=None) -> None:
        self.preview_volume.visible = self.preview_volume.enabled = self._volume_mode()
        self.init.reset_choices()

    @unless_closed
    def _on_step(self, _event=None) -> None:
        """The current-slice preview of a 3D run follows the viewer's slice."""
        layer = self._preview_target if self.run is not None else None
        if layer is not None and self._volumes and not self.preview_volume.value:
            self.run.set_preview(self._preview_data(layer))

    def _on_image_changed(self, name: str | None) -> None:
        from napari_unet.arrays.layout import is_volume

        layer = find_layer(self.viewer, name)
        volume = layer is not None and is_volume(np.shape(layer.data), bool(layer.rgb))
        self.dims.enabled = self.dims.visible = volume
        self._on_dims_changed()
        labels = None if layer is None else find_layer(self.viewer, annotations_name(layer.name))
        if labels is not None:
            self.labels.value = labels.name
        if self.run is not None and layer is not None and (volume or not self._volumes):  # 3D runs: volumes only
            self.run.set_preview(self._preview_data(layer))

    def _on_session_changed(self) -> None:
        project = self.session.project
        if project.samples:
            self.task.value = next((k for k, v in TASKS.items() if v == project.mode), self.task.value)
        self.init.reset_choices()
        self.resume_button.enabled = self.worker is None and self._resumable() is not None

    def _resumable(self) -> Any:
        """The current model's training state when its run stopped before its end (else None)."""
        state = getattr(self.session.model, "resume", None)
        return state if state is not None and not state.finished else None

    def _on_edited(self, _name: str) -> None:
        self._edited = True

    # -- training ----------------------------------------------------------------------------
    def _preview_data(self, layer: Any) -> np.ndarray | None:
        """What the live preview predicts: the image, the current slice of a stack, or for a 3D model
        the whole volume or a slab around the current slice (``self._plane`` says which plane)."""
        data = np.asarray(layer.data)
        if self._volumes:
            from napari_unet.arrays.volumes import preview_slab

            if self.preview_volume.value:
                self._plane = None
                return data
            z = self.viewer.dims.current_step[0]
            slab, inside = preview_slab(data, z)
            self._plane = (min(max(z, 0), data.shape[0] - 1), inside)
            return slab
        from napari_unet.errors import UserError

        try:
            layout = array_layout(data.shape, bool(layer.rgb))
        except UserError:
            return None
        if not layout.is_stack:
            return data
        return data[min(self.viewer.dims.current_step[0], data.shape[0] - 1)]

    def _gather(self, volumes: bool | None = None, zero_unannotated: bool | None = None) -> tuple[list, list[str]]:
        """The training set plus the selected image/annotation pair (added to the set); ``volumes``:
        3D samples whole (default: as the settings ask); ``zero_unannotated``: 0 means "not
        annotated" (default: as the task says)."""
        image, labels = find_layer(self.viewer, self.image.value), find_layer(self.viewer, self.labels.value)
        if image is not None and labels is not None and image.name not in self.session.project.samples:
            self.session.project.mode = TASKS[self.task.value]  # a project's mode is the user task
            self.session.attach(image, labels)
        return self.session.training_pairs(volumes=self._volume_mode() if volumes is None else volumes,
                                           zero_unannotated=self._unannotated_zero() if zero_unannotated is None
                                           else zero_unannotated)

    def _unannotated_zero(self) -> bool:
        """Whether 0 in the annotations means "not annotated": the task's rule (``workflows.classes``)."""
        return zero_is_unannotated(TASKS[self.task.value])

    def request(self) -> Any:
        """The ``TrainRequest`` the current settings describe."""
        from napari_unet.workflows.train_request import TrainRequest

        dims, z_scale = 2, 1.0
        if self._volume_mode():
            from napari_unet.arrays.volumes import z_scale_of

            layer = find_layer(self.viewer, self.image.value)
            dims, z_scale = 3, z_scale_of(layer.scale) if layer is not None else 1.0
        return TrainRequest(
            dims=dims, z_scale=z_scale,
            task=TASKS[self.task.value], instance_head=self.instance_head.value, base_width=self.base_width.value,
            depth=self.depth.value, elastic=self.elastic.value, border_w0=self.w0.value, border_sigma=self.sigma.value,
            patch_size=self.patch_size.value or None, batch_size=self.batch_size.value or None,
             learning_rate=self.learning_rate.value,
            time_limit=float(self.time_limit.value), preview_every=self.preview_every.value, device=self.device.value,
            preview_mc_samples=self.preview_mc.value, synthetic=bool(self.session.synthetic),
            synthetic_ratio=self.synthetic_ratio.value, threads=gui_threads())

    def config(self, pairs: list) -> Any:
        """The ``TrainConfig`` for the current settings on these (image, labels) pairs."""
        from napari_unet.workflows.train_request import train_config_for

        return train_config_for(self.request(), [image for image, _ in pairs], [labels for _, labels in pairs])

    def start(self) -> None:
        """Start training in the background (the Train button)."""
        self._launch(None)

    def resume(self) -> None:
        """Continue the current model's stopped run in the background (the Resume button)."""
        from napari.utils.notifications import show_warning

        state = self._resumable()
        if state is None:
            show_warning("nothing to resume: stop a run first, or load a model folder a stopped run saved")
            return
        self._launch(state)

    def _launch(self, resume: Any) -> None:
        """Train from the settings, or continue ``resume`` (a ``TrainingState``) with its own."""
        from napari.utils.notifications import show_warning

        from napari_unet.errors import UserError

        if self.worker is not None:
            return
        volumes = self._volume_mode() if resume is None else resume.config.model.dims == 3
        zero = self._unannotated_zero() if resume is None else bool(resume.config.sparse)
        try:
            pairs, names = self._gather(volumes, zero)
            if not pairs:
                raise UserError("nothing to train on: pick an image and its annotations (or use Annotate)")
            cfg = self.config(pairs) if resume is None else None
        except UserError as exc:
            show_warning(str(exc))
            return
        image = find_layer(self.viewer, self.image.value)
        self._volumes, self._zero_unannotated = volumes, zero
        self.run = self._train_run(cfg)
        self.run.preview = None if image is None else self._preview_data(image)
        self._preview_target = image
        if image is not None and self.run.preview is not None:
            self._prepare_preview_layers(image, self.run.preview)
        if resume is None or self.session.model is not self._trained:  # a resumed run's curve goes on
            self.plot.clear()
        self.progress.value = 0
        self.status.value = "starting…" if resume is None else "resuming…"
        self._set_running(True)
        self._edited = False
        run = self.run
        synthetic = list(self.session.synthetic)
        self.worker = run_in_thread(lambda: run.events(pairs, names, cfg, resume=resume, synthetic=synthetic),
                                    self._on_event, self._on_done, self._on_error, self._on_finished)
        self._sync.start()

    def _train_run(self, cfg: Any) -> TrainRun:
        """The run the settings describe (``cfg`` None: a resumed run, which keeps its own start).

        The starting model keeps its architecture: a depth or base width changed from its
        default in the advanced settings is asked for, and one unlike the starting model's is a
        one-line error (as the CLI's ``--depth``); at its default it is the starting model's.
        2D or 3D is always asked for."""
        if cfg is None:
            return TrainRun()
        spec = self.init.value
        spec = str(self.init_folder.value) if spec == FOLDER else "none" if spec == SCRATCH else spec
        default = UNetConfig()
        asked = asked_architecture(None if self.depth.value == default.depth else self.depth.value,
                                   None if self.base_width.value == default.base_width else self.base_width.value,
                                   cfg.model.dims)
        return TrainRun(spec, cfg.task, asked, current=self.session.model,
                        hint=f"choose \"{SCRATCH}\" under Start from to train another architecture")

    def stop(self) -> None:
        """Ask the run to end; it finishes the current step and keeps the best model."""
        if self.run is not None:
            self.run.stop()
            self.status.value = "stopping…"

    @unless_closed
    def _push_annotations(self) -> None:
        if self._edited and self.run is not None:
            self._edited = False
            pairs, names = self.session.training_pairs(volumes=self._volumes, zero_unannotated=self._zero_unannotated)
            if pairs:
                self.run.update_pairs(pairs, names)

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = not running
        self.stop_button.enabled = running
        self.resume_button.enabled = not running and self._resumable() is not None
        self.load_button.enabled = not running

    @unless_closed
    def _on_event(self, event: Any) -> None:
        from napari_unet.events import LossReport, Message, Preview, Progress, RunSetup, ValidationReport

        if isinstance(event, Progress):
            self.progress.value = progress_permille(event)
            now = time.monotonic()
            if now - self._status_time >= STATUS_INTERVAL_S:  # text changes re-layout the dock: throttle
                self._status_time = now
                self.status.value = f"step {event.done} · {format_seconds(event.eta)} left"
        elif isinstance(event, LossReport):
            self.plot.add_loss(event.step, event.loss)
        elif isinstance(event, ValidationReport):
            name = "AP@0.5" if "ap50" in event.metrics else "IoU"
            self.plot.add_score(event.step, event.metrics.get("score", 0.0), name)
        elif isinstance(event, Preview):
            self._show_preview(event)
        elif isinstance(event, RunSetup):
            self.device_label.value = f"device: {event.where}, {event.sizes}"
            self.status.value = event.text
        elif isinstance(event, Message):
            self.status.value = event.text

    def _prepare_preview_layers(self, image: Any, data: np.ndarray) -> None:
        """Create empty preview layers now, so the first preview only swaps data in."""
        shape = array_layout(data.shape, bool(image.rgb)).spatial
        if self._volumes:  # 3D previews fill volume-shaped layers
            shape = np.shape(image.data)[:3]
        active = self.viewer.layers.selection.active
        if prediction_name(image.name) not in self.viewer.layers:
            show_labels(self.viewer, prediction_name(image.name), np.zeros(shape, np.uint32), like=image)
        if probability_name(image.name) not in self.viewer.layers:
            show_image(self.viewer, probability_name(image.name), np.zeros(shape, np.float32), like=image,
                       colormap="magma", opacity=0.45, blending="additive", contrast_limits=(0.0, 1.0), visible=False)
        if self.preview_mc.value > 0 and uncertainty_name(image.name) not in self.viewer.layers:
            show_uncertainty(self.viewer, image, np.zeros(shape, np.float32), "epistemic")
        self.viewer.layers.selection.active = active

    def _show_preview(self, event: Any) -> None:
        self.previews += 1
        image = self._preview_target
        if image is None or image not in self.viewer.layers:
            return
        task = config_task(TASKS[self.task.value])
        place = self._placed if self._volumes else (lambda a: a)
        labels = show_labels(self.viewer, prediction_name(image.name), place(event.labels), like=image,
                             metadata={"task": task})
        labels.metadata["task"] = task
        foreground = 1.0 - event.probabilities[0]
        show_image(self.viewer, probability_name(image.name), place(foreground.astype(np.float32)), like=image,
                   colormap="magma", opacity=0.45, blending="additive", contrast_limits=(0.0, 1.0), visible=False)
        if event.uncertainty is not None:
            show_uncertainty(self.viewer, image, place(event.uncertainty), "epistemic")

    def _placed(self, values: np.ndarray) -> np.ndarray:
        """A 3D preview as a volume-shaped array: the whole volume as is, a slab's previewed plane
        at its z (the other planes empty)."""
        if self._plane is None:
            return values
        z, inside = self._plane
        out = np.zeros((np.shape(self._preview_target.data)[0], *values.shape[1:]), values.dtype)
        out[z] = values[min(inside, values.shape[0] - 1)]
        return out

    @unless_closed
    def _on_done(self, bundle: Any) -> None:
        from napari.utils.notifications import show_info

        from napari_unet.training.guard import guard_note

        self.session.model = self._trained = bundle
        training = bundle.meta.get("training", {})
        score = bundle.meta.get("validation", {}).get("score")
        self.session.model_name = f"trained here ({training.get('steps', '?')} steps)"
        self.model_label.value = self.session.model_name + (f", validation {score:.3f}" if score is not None else "")
        self.progress.value = 1000
        note = guard_note(bundle.meta)  # fine-tuning: which model was kept
        self.status.value = (f"done: {training.get('steps', '?')} steps in {format_seconds(training.get('seconds'))}"
                             + (f"; {note}" if note else ""))
        self.init.reset_choices()
        self.session.changed.emit()
        show_info(f"napari-unet: training finished ({training.get('steps', '?')} steps)")

    _on_error = show_failure

    @unless_closed
    def _on_finished(self) -> None:
        self._sync.stop()
        self.worker = None
        self._set_running(False)

    # -- model files -------------------------------------------------------------------------
    def save_model(self) -> None:
        from napari_unet.models.bundle import save_bundle

        save_folder(save_bundle, self.session.model, self.model_folder.value, "model")

    def load_model(self) -> None:
        from napari_unet.training.state import load_resumable

        bundle = load_folder(load_resumable, self.model_folder.value)  # with a stopped run's state: Resume
        if bundle is None:
            return
        self.session.model = bundle
        self.session.model_name = f"loaded from {self.model_folder.value}"
        self.session.changed.emit()
        self.model_label.value = self.session.model_name
        self.init.reset_choices()
        self.init.value = CURRENT


def _fixed_height(label: Label) -> None:
    """Keep a label's size fixed so text updates do not re-layout the whole dock."""
    from qtpy.QtWidgets import QSizePolicy

    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)


def _load_engine() -> str:
    """Import torch and the engine (slow the first time) and describe the default device."""
    import napari_unet.inference.predict  # noqa: F401
    import napari_unet.training.engine  # noqa: F401
    from napari_unet.runtime.device import describe, resolve_device

    return describe(resolve_device("auto"))


def start_warm_up(label: Label):
    """Import the engine in a daemon thread when the widget opens (so Train starts at once); a
    main-thread timer then shows the detected device. Nothing Qt runs in the thread."""
    import threading

    from qtpy.QtCore import QTimer

    result: dict[str, str] = {}

    def load() -> None:
        try:
            result["device"] = _load_engine()
        except Exception as exc:  # shown, not raised: training will report the real error
            result["device"] = f"unknown ({type(exc).__name__})"

    thread = threading.Thread(target=load, name="napari-unet warm-up", daemon=True)
    timer = QTimer(label.native)
    timer.setInterval(200)

    def poll() -> None:
        if "device" in result:
            timer.stop()
            if label.value == DETECTING:  # a run that started first already showed its device and sizes
                label.value = f"device: {result['device']}"

    timer.timeout.connect(poll)
    thread.start()
    timer.start()
    return thread
