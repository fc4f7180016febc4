"""The Train widget: click-to-train in a background thread with a live preview over the image."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, SpinBox)

from napari_unet.config import INSTANCE_HEADS, TrainConfig, UNetConfig
from napari_unet.widgets._layers import (annotations_name, find_layer, layers_of_type, prediction_name,
                                         probability_name, show_image, show_labels, show_uncertainty,
                                         uncertainty_name)
from napari_unet.widgets._base import PluginWidget
from napari_unet.widgets._worker import (format_seconds, load_folder, on_close, progress_permille, run_in_thread,
                                         save_folder, show_failure, unless_closed)

TASKS = {"instances": "instances", "sparse classes": "sparse", "classes (every pixel labelled)": "classes"}
SCRATCH, CURRENT, FOLDER = "none (from scratch)", "current model", "model folder…"
SYNC_INTERVAL_MS = 1000
STATUS_INTERVAL_S = 1.0

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


class TrainRun:
    """One background training run: owns the core ``Trainer`` once the worker has built it."""

    def __init__(self) -> None:
        self.trainer = None
        self.stopped = False
        self.pending: tuple | None = None
        self.preview: np.ndarray | None = None

    def stop(self) -> None:
        self.stopped = True
        if self.trainer is not None:
            self.trainer.stop()

    def update_pairs(self, pairs: list, names: list[str]) -> None:
        if self.trainer is not None:
            self.trainer.update_pairs(pairs, names)
        else:
            self.pending = (pairs, names)

    def set_preview(self, image: np.ndarray | None) -> None:
        self.preview = image
        if self.trainer is not None:
            self.trainer.set_preview_image(image)

    def events(self, pairs: list, names: list[str], cfg: Any, init_spec: str | None, current: Any,
               synthetic: list | None = None):
        """The worker's generator: load the starting model, train, then preview the best model."""
        from napari_unet.events import Message, Preview
        from napari_unet.inference.postprocess import labels_for
        from napari_unet.inference.predict import predict_probabilities
        from napari_unet.training.checkpoint import load_bundle
        from napari_unet.training.engine import Trainer

        init = current if init_spec == CURRENT else None
        if init_spec and init_spec not in (CURRENT, SCRATCH):
            from napari_unet.pretrained import resolve_init

            folder = resolve_init(init_spec)
            init = load_bundle(folder) if folder is not None else None
            yield Message(f"starting from {init_spec}")
        if init is not None:
            from napari_unet.pretrained import fine_tune_config

            cfg = fine_tune_config(cfg, init)  # the starting model's architecture, gentler learning rate
        self.trainer = Trainer(pairs, cfg, init=init, names=names, preview_image=self.preview,
                               synthetic=synthetic or None)
        if self.pending is not None:
            self.trainer.update_pairs(*self.pending)
        if self.stopped:
            self.trainer.stop()
        bundle = yield from self.trainer.run()
        if self.preview is not None:
            probs = predict_probabilities(bundle, self.preview)
            yield Preview(-1, 0, probs, labels_for(bundle, probs))
        return bundle


class TrainWidget(PluginWidget):
    """Settings, Train/Stop, progress with ETA, live loss/validation plot, save/load model."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from qtpy.QtCore import QTimer

        from napari_unet.widgets._plot import TrainingPlot

        super().__init__(viewer)
        viewer = self.viewer
        self.run: TrainRun | None = None
        self.previews = 0
        self._status_time = 0.0
        self._edited = False
        self.image = ComboBox(label="Image", choices=lambda _w: [l.name for l in layers_of_type(viewer, "image")],
                              nullable=True, tooltip="previewed while training; trained on with its annotations")
        self.labels = ComboBox(label="Annotations", nullable=True,
                               choices=lambda _w: [l.name for l in layers_of_type(viewer, "labels")
                                                   if not l.name.endswith(" prediction")])
        self.task = ComboBox(label="Task", choices=list(TASKS), value="instances")
        self.instance_head = ComboBox(label="Instance head", choices=list(INSTANCE_HEADS),
                                      value=TrainConfig.instance_head,
                                      tooltip="3class: interior/boundary classes + watershed; star: StarDist rays + "
                                              "polygon NMS (crowded round nuclei)")
        self.init = ComboBox(label="Start from", choices=self._init_choices)
        self.init_folder = FileEdit(label="Model folder", mode="d", visible=False)
        self.time_limit = SpinBox(label="Time limit (s)", value=120, min=5, max=7 * 24 * 3600, step=30)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.device_label = Label(value="device: detecting…")
        self.show_advanced = CheckBox(text="Advanced settings", value=False)
        self.base_width = SpinBox(label="Base width", value=UNetConfig().base_width, min=4, max=128)
        self.depth = SpinBox(label="Depth", value=UNetConfig().depth, min=1, max=6)
        auto = "0 = sized to the device (training.device.default_sizes)"
        self.patch_size = SpinBox(label="Patch size (0 = auto)", value=0, min=0, max=1024, step=32, tooltip=auto)
        self.batch_size = SpinBox(label="Batch size (0 = auto)", value=0, min=0, max=128, tooltip=auto)
        self.learning_rate = FloatSpinBox(label="Learning rate", value=5e-3, min=1e-6, max=1.0, step=1e-4)
        self.elastic = CheckBox(text="Elastic deformation", value=True)
        self.w0 = FloatSpinBox(label="Border weight w0", value=10.0, min=0.0, max=100.0)
        self.sigma = FloatSpinBox(label="Border σ (px)", value=5.0, min=0.5, max=50.0)
        self.preview_every = FloatSpinBox(label="Preview every (s)", value=4.0, min=0.0, max=600.0)
        self.synthetic_ratio = FloatSpinBox(label="Synthetic share", value=0.5, min=0.0, max=0.95, step=0.05,
                                            tooltip="share of patches from accepted synthetic pairs (if any)")
        self.preview_mc = SpinBox(label="Preview MC samples", value=4, min=0, max=32,
                                  tooltip="MC-dropout passes per preview for the live uncertainty layer (0 = off)")
        self.advanced = Container(widgets=[self.base_width, self.depth, self.patch_size, self.batch_size,
                                           self.learning_rate, self.elastic, self.w0, self.sigma, self.preview_every,
                                           self.preview_mc, self.synthetic_ratio],
                                  visible=False)
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1000, value=0)
        self.status = Label(value="")
        _fixed_height(self.status)
        self.model_folder = FileEdit(label="Model", mode="d")
        self.save_button = PushButton(text="Save model")
        self.load_button = PushButton(text="Load model")
        self.model_label = Label(value="no model yet")
        self.extend([self.image, self.labels, self.task, self.instance_head, self.init, self.init_folder, self.time_limit, self.device,
                     self.device_label, self.show_advanced, self.advanced,
                     Container(widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False),
                     self.progress, self.status])
        self.plot = TrainingPlot()
        self.extend([self.model_folder,
                     Container(widgets=[self.save_button, self.load_button], layout="horizontal", labels=False),
                     self.model_label])
        layout = self.native.layout()
        rows = [layout.itemAt(i).widget() for i in range(layout.count())]
        below = next((i for i, w in enumerate(rows)
                      if w is not None and (w is self.status.native or w.isAncestorOf(self.status.native))), -2)
        layout.insertWidget(below + 1, self.plot)  # the plot under the status line
        self.show_advanced.changed.connect(lambda v: setattr(self.advanced, "visible", v))
        self.init.changed.connect(lambda v: setattr(self.init_folder, "visible", v == FOLDER))
        self.image.changed.connect(self._on_image_changed)
        self.task.changed.connect(self._on_task_changed)
        self.train_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self.save_model)
        self.load_button.changed.connect(self.load_model)
        self.session.annotations_edited.connect(self._on_edited)
        self.session.changed.connect(self._on_session_changed)
        self._sync = QTimer()
        self._sync.setInterval(SYNC_INTERVAL_MS)
        self._sync.timeout.connect(self._push_annotations)
        on_close(self, lambda w: w.run.stop() if w.run is not None else None)
        self.preselect_layers(self.image, self.labels)
        self._on_image_changed(self.image.value)
        self._on_session_changed()
        self._warm_up = start_warm_up(self.device_label)

    # -- choices -----------------------------------------------------------------------------
    def _init_choices(self, _widget=None) -> list[str]:
        task = TASKS.get(getattr(getattr(self, "task", None), "value", "instances"), "instances")
        pretrained = pretrained_choices() if task == "instances" else []
        current = [CURRENT] if getattr(self, "session", None) and self.session.model is not None else []
        return [*current, *pretrained, SCRATCH, FOLDER]

    def _on_task_changed(self, _value=None) -> None:
        self.init.reset_choices()
        self.instance_head.visible = TASKS[self.task.value] == "instances"

    def _on_image_changed(self, name: str | None) -> None:
        layer = find_layer(self.viewer, name)
        labels = None if layer is None else find_layer(self.viewer, annotations_name(layer.name))
        if labels is not None:
            self.labels.value = labels.name
        if self.run is not None and layer is not None:
            self.run.set_preview(self._preview_data(layer))

    def _on_session_changed(self) -> None:
        project = self.session.project
        if project.samples:
            self.task.value = {"instances": "instances", "sparse": "sparse classes"}[project.mode]
        self.init.reset_choices()

    def _on_edited(self, _name: str) -> None:
        self._edited = True

    # -- training ----------------------------------------------------------------------------
    def _preview_data(self, layer: Any) -> np.ndarray | None:
        data = np.asarray(layer.data)
        if data.ndim == 2 or layer.rgb or (data.ndim == 3 and data.shape[0] <= 4):
            return data
        step = self.viewer.dims.current_step[0] if data.ndim == 3 else 0
        return data[min(step, data.shape[0] - 1)] if data.ndim == 3 else None

    def _gather(self) -> tuple[list, list[str]]:
        """The training set plus the selected image/annotation pair (added to the set)."""
        image, labels = find_layer(self.viewer, self.image.value), find_layer(self.viewer, self.labels.value)
        if image is not None and labels is not None and image.name not in self.session.project.samples:
            self.session.project.mode = "instances" if TASKS[self.task.value] == "instances" else "sparse"
            self.session.attach(image, labels)
        return self.session.training_pairs()

    def config(self, pairs: list) -> Any:
        """The ``TrainConfig`` the current settings describe."""
        from napari_unet.config import AugmentConfig, LossConfig, TrainConfig

        task = TASKS[self.task.value]
        image = pairs[0][0]
        in_channels = 1
        if image.ndim == 3:
            in_channels = image.shape[-1] if image.shape[-1] <= 4 and image.shape[0] > 4 else image.shape[0]
        n_classes = 2
        if task != "instances":
            top = max(int(np.max(labels)) for _, labels in pairs)
            n_classes = max(2, top if task == "sparse" else top + 1)
        return TrainConfig(
            task="instances" if task == "instances" else "semantic", sparse=task == "sparse", n_classes=n_classes,
            instance_head=self.instance_head.value,
            model=UNetConfig(in_channels=in_channels, base_width=self.base_width.value, depth=self.depth.value),
            augment=AugmentConfig(elastic=self.elastic.value),
            loss=LossConfig(border_w0=self.w0.value, border_sigma=self.sigma.value),
            patch_size=self.patch_size.value or None, batch_size=self.batch_size.value or None, learning_rate=self.learning_rate.value,
            time_limit=float(self.time_limit.value), preview_every=self.preview_every.value, device=self.device.value,
            preview_mc_samples=self.preview_mc.value, synthetic_ratio=self.synthetic_ratio.value,
            threads=gui_threads(), validate_every=15.0)

    def start(self) -> None:
        """Start training in the background (the Train button)."""
        from napari.utils.notifications import show_warning

        from napari_unet.errors import UserError

        if self.worker is not None:
            return
        try:
            pairs, names = self._gather()
            if not pairs:
                raise UserError("nothing to train on: pick an image and its annotations (or use Annotate)")
            cfg = self.config(pairs)
        except UserError as exc:
            show_warning(str(exc))
            return
        init_spec = self.init.value
        if init_spec == FOLDER:
            init_spec = str(self.init_folder.value)
        image = find_layer(self.viewer, self.image.value)
        self.run = TrainRun()
        self.run.preview = None if image is None else self._preview_data(image)
        self._preview_target = image
        if image is not None and self.run.preview is not None:
            self._prepare_preview_layers(image, self.run.preview)
        self.plot.clear()
        self.progress.value = 0
        self.status.value = "starting…"
        self._set_running(True)
        self._edited = False
        run = self.run
        synthetic = list(self.session.synthetic)
        self.worker = run_in_thread(lambda: run.events(pairs, names, cfg, init_spec, self.session.model, synthetic),
                                    self._on_event, self._on_done, self._on_error, self._on_finished)
        self._sync.start()

    def stop(self) -> None:
        """Ask the run to end; it finishes the current step and keeps the best model."""
        if self.run is not None:
            self.run.stop()
            self.status.value = "stopping…"

    @unless_closed
    def _push_annotations(self) -> None:
        if self._edited and self.run is not None:
            self._edited = False
            pairs, names = self.session.training_pairs()
            if pairs:
                self.run.update_pairs(pairs, names)

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = not running
        self.stop_button.enabled = running
        self.load_button.enabled = not running

    @unless_closed
    def _on_event(self, event: Any) -> None:
        from napari_unet.events import LossReport, Message, Preview, Progress, ValidationReport

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
        elif isinstance(event, Message):
            if event.text.startswith("training on "):
                self.device_label.value = "device: " + event.text.removeprefix("training on ")
            self.status.value = event.text

    def _prepare_preview_layers(self, image: Any, data: np.ndarray) -> None:
        """Create empty preview layers now, so the first preview only swaps data in."""
        shape = data.shape[:2] if image.rgb else data.shape[-2:]
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
        task = "instances" if TASKS[self.task.value] == "instances" else "semantic"
        labels = show_labels(self.viewer, prediction_name(image.name), event.labels, like=image,
                             metadata={"task": task})
        labels.metadata["task"] = task
        foreground = 1.0 - event.probabilities[0]
        show_image(self.viewer, probability_name(image.name), foreground.astype(np.float32), like=image,
                   colormap="magma", opacity=0.45, blending="additive", contrast_limits=(0.0, 1.0), visible=False)
        if event.uncertainty is not None:
            show_uncertainty(self.viewer, image, event.uncertainty, "epistemic")

    @unless_closed
    def _on_done(self, bundle: Any) -> None:
        from napari.utils.notifications import show_info

        from napari_unet.training.guard import guard_note

        self.session.model = bundle
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
        from napari_unet.training.checkpoint import save_bundle

        save_folder(save_bundle, self.session.model, self.model_folder.value, "model")

    def load_model(self) -> None:
        from napari_unet.training.checkpoint import load_bundle

        bundle = load_folder(load_bundle, self.model_folder.value)
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
    from napari_unet.training.device import describe, resolve_device

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
            label.value = f"device: {result['device']}"

    timer.timeout.connect(poll)
    thread.start()
    timer.start()
    return thread
