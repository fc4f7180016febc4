"""The Annotate widget: an annotation layer per image, painting helpers, the training set."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton, Select, SpinBox

from napari_unet.config import ANNOTATE_MIN_SIZE, SETTINGS, TASK_LABELS
from napari_unet.errors import UserError
from napari_unet.widgets._corrections import ClickTool, apply_regions, correct_object, record_edit
from napari_unet.workflows import annotation
from napari_unet.widgets._layers import (annotation_colormap, annotations_name, find_layer, layers_of_type,
                                         prediction_name, regions_name)
from napari_unet.widgets._base import PluginWidget

# the first is the default: painting a few objects must not teach the unpainted ones as background
MODES = {TASK_LABELS[mode]: mode for mode in sorted(annotation.MODES, key=lambda mode: mode != "partial")}
ANNOTATE_TASK_HELP = ("what the annotations hold, as the Train widget's task: instances (each object an id, "
                      "unpainted = background), partial instances (unpainted = not annotated, 1 = background, "
                      "2.. = objects) or sparse classes (scribbles: 1 = background, 2.. = classes)")
REGION_HELP = ("Draw rectangles or polygons where every object is painted, then click "
               "'Mark region as fully annotated' again: their unpainted pixels become background")

if TYPE_CHECKING:
    import napari


class AnnotateWidget(PluginWidget):
    """Create/attach ``<image> annotations``, edit helpers, live stats, training set, project files."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=False)
        viewer = self.viewer
        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        # the task the annotations are for (a project's ``mode``): the Train widget's and train --task's setting
        self.mode = ComboBox(label=SETTINGS["task"].label, choices=list(MODES), value=list(MODES)[0],
                             tooltip=ANNOTATE_TASK_HELP)
        self.class_names = LineEdit(label="Classes", value="object",
                                    tooltip="sparse classes: names of classes 2, 3, ... (1 is background)")
        self.attach_button = PushButton(text="Create / attach annotations")
        self.next_id_button = PushButton(text="Next object id (N)")
        self.background_button = PushButton(text="Background brush (1)", visible=False)
        self.region_button = PushButton(text="Mark region as fully annotated", visible=False,
                                        tooltip="draw regions in '<image> regions'; unpainted pixels there "
                                                "become background (1)")
        self.accept_click = CheckBox(text="Accept object (click)", visible=False,
                                     tooltip="a click on a predicted object copies it in with a new id")
        self.remove_click = CheckBox(text="Remove object (click)", visible=False,
                                     tooltip="a click on an annotated object erases it")
        self.threshold_button = PushButton(text="Start from threshold")
        self.accept_button = PushButton(text="Accept prediction as annotation")
        self.fill_button = PushButton(text="Fill holes")
        self.min_size = SpinBox(label=SETTINGS["min_size"].label, value=ANNOTATE_MIN_SIZE, min=1, max=100000,
                                tooltip=f"{SETTINGS['min_size'].help}: Remove small objects, and the threshold start")
        self.small_button = PushButton(text="Remove small objects")
        self.clear_button = PushButton(text="Clear annotations")
        self.stats = Label(value="")
        self.training_set = Select(label="Training set", choices=self._sample_choices)
        self.add_button = PushButton(text="Add image to training set")
        self.remove_button = PushButton(text="Remove selected")
        self.project_folder = FileEdit(label="Project", mode="d")
        self.save_button = PushButton(text="Save project")
        self.load_button = PushButton(text="Load project")
        self.autosave_label = Label(value="")
        self.extend([
            Label(value="<b>Annotate</b>"), self.image, self.mode, self.class_names, self.attach_button,
            Container(widgets=[self.next_id_button, self.background_button], layout="horizontal", labels=False),
            self.region_button, self.threshold_button, self.accept_button,
            Container(widgets=[self.accept_click, self.remove_click], layout="horizontal", labels=False),
            self.fill_button,
            Container(widgets=[self.min_size, self.small_button], layout="horizontal", labels=False),
            self.clear_button, self.stats, Label(value="<b>Training set</b>"), self.training_set,
            Container(widgets=[self.add_button, self.remove_button], layout="horizontal", labels=False),
            self.project_folder,
            Container(widgets=[self.save_button, self.load_button], layout="horizontal", labels=False),
            self.autosave_label,
        ])
        self.attach_button.changed.connect(self.attach)
        self.next_id_button.changed.connect(self.next_id)
        self.background_button.changed.connect(self.background_brush)
        self.region_button.changed.connect(self.mark_regions)
        self.clicks = ClickTool(self.viewer, self.correct_at, lambda: getattr(self.labels_layer(), "scale", (1, 1)))
        self.accept_click.changed.connect(lambda on: self._toggle_clicks("accept", on))
        self.remove_click.changed.connect(lambda on: self._toggle_clicks("remove", on))
        self.mode.changed.connect(self._on_mode_changed)
        self.threshold_button.changed.connect(self.start_from_threshold)
        self.accept_button.changed.connect(self.accept_prediction)
        self.fill_button.changed.connect(
            lambda: self._edit(lambda a: annotation.fill_holes(a, 2 if self.mode_key == "partial" else 1)))
        self.small_button.changed.connect(lambda: self._edit(lambda a: annotation.remove_small(a, self.min_size.value)))
        self.clear_button.changed.connect(lambda: self._edit(np.zeros_like))
        self.add_button.changed.connect(self.attach)
        self.remove_button.changed.connect(self.remove_selected)
        self.save_button.changed.connect(self.save_project)
        self.load_button.changed.connect(self.load_project)
        self.image.changed.connect(self.refresh_stats)
        self.session.changed.connect(self._on_session_changed)
        self.session.annotations_edited.connect(lambda _name: self.refresh_stats())
        self.preselect_layers(self.image)
        self._on_mode_changed()
        self.refresh_stats()

    # -- choices -----------------------------------------------------------------------------
    def _image_choices(self, _widget=None) -> list:
        return [layer.name for layer in layers_of_type(self.viewer, "image")]

    def _sample_choices(self, _widget=None) -> list:
        return self.session.project.names()

    @property
    def mode_key(self) -> str:
        return MODES[self.mode.value]

    def image_layer(self):
        return find_layer(self.viewer, self.image.value)

    def labels_layer(self):
        layer = self.image_layer()
        return None if layer is None else find_layer(self.viewer, annotations_name(layer.name))

    # -- actions -----------------------------------------------------------------------------
    def attach(self) -> Any:
        """Create (or reuse) ``<image> annotations`` and add the pair to the training set."""
        from napari.utils.notifications import show_warning

        image = self.image_layer()
        if image is None:
            show_warning("Open an image first (File ▸ Open, or File ▸ Open Sample ▸ napari U-Net)")
            return None
        project = self.session.project
        if project.samples and project.mode != self.mode_key:
            show_warning(f"the training set holds {project.mode} annotations; "
                         "save it and start a new viewer to switch tasks")
            self.mode.value = next((k for k, v in MODES.items() if v == project.mode), self.mode.value)
        project.mode = self.mode_key
        project.class_names = ["background", *[n.strip() for n in self.class_names.value.split(",") if n.strip()]]
        labels = self.labels_layer()
        if labels is None:
            shape = image.data.shape[:-1] if image.rgb else image.data.shape[-2:]
            dtype = np.uint8 if self.mode_key == "sparse" else np.uint32
            labels = self.viewer.add_labels(np.zeros(shape, dtype), name=annotations_name(image.name),
                                            scale=image.scale[-2:], translate=image.translate[-2:])
        self._style(labels)
        labels.bind_key("n", lambda layer: self.next_id(), overwrite=True)
        self.session.attach(image, labels)
        self.viewer.layers.selection.active = labels
        labels.mode = "paint"
        self.next_id()
        return labels

    def _style(self, labels: Any) -> None:
        colormap = annotation_colormap(self.mode_key)
        if colormap is not None:
            labels.colormap = colormap

    def _on_mode_changed(self, _value=None) -> None:
        """Show the tools the mode has: background and regions where 1 is background, clicks on objects."""
        key = self.mode_key
        self.background_button.visible = self.region_button.visible = key != "instances"
        self.accept_click.visible = self.remove_click.visible = key != "sparse"
        if key == "sparse":
            self.accept_click.value = self.remove_click.value = False

    def _ensure_labels(self):
        labels = self.labels_layer()
        if labels is None or self.image_layer().name not in self.session.project.samples:
            labels = self.attach()
        return labels

    def next_id(self) -> None:
        """Select the next free label (a new object; in sparse mode a new class above the used ones)."""
        labels = self.labels_layer()
        if labels is None:
            return
        if self.mode_key == "sparse":
            labels.selected_label = 2 if labels.selected_label < 2 else labels.selected_label
        else:
            labels.selected_label = annotation.next_free_id(labels.data, self.mode_key)

    def background_brush(self) -> None:
        """Paint background (label 1) with the brush: what the stroke covers holds no object."""
        labels = self._ensure_labels()
        if labels is None:
            return
        labels.selected_label = annotation.BACKGROUND
        self.viewer.layers.selection.active = labels
        labels.mode = "paint"

    def _edit(self, fn) -> None:
        """Replace the annotation by ``fn(annotation)``, as one step napari's undo takes back."""
        labels = self._ensure_labels()
        if labels is None:
            return
        record_edit(labels, np.asarray(fn(np.asarray(labels.data))).astype(labels.data.dtype, copy=False))

    def mark_regions(self) -> None:
        """First click: open ``<image> regions`` for drawing; next click: the unpainted pixels
        under its shapes become background (one undoable step) and the shapes are cleared."""
        from napari.utils.notifications import show_info, show_warning

        labels = self._ensure_labels()
        if labels is None:
            return
        if self.mode_key == "instances":
            show_warning("with the instances task every unpainted pixel is background already")
            return
        added = apply_regions(self.viewer, labels, regions_name(self.image.value))
        if added is None:
            show_info(REGION_HELP)
            return
        self.background_brush()
        show_info(f"{added} unpainted pixels marked as background")

    def _toggle_clicks(self, kind: str, on: bool) -> None:
        """Turn a click correction on (the other one off; the labels stop painting) or off (the
        brush is back when neither is on)."""
        if on:
            (self.remove_click if kind == "accept" else self.accept_click).value = False
        active = "accept" if self.accept_click.value else "remove" if self.remove_click.value else None
        self.clicks.set(active)
        labels = self._ensure_labels() if on else self.labels_layer()
        if labels is not None:
            labels.mode = "paint" if active is None else "pan_zoom"  # with a tool on, a click corrects

    def correct_at(self, kind: str, world: tuple) -> None:
        """Accept the predicted object (``kind`` "accept") or remove the annotated one ("remove")
        under a canvas position, as one undoable step; a warning says why when nothing happens."""
        from napari.utils.notifications import show_warning

        labels = self.labels_layer()
        prediction = find_layer(self.viewer, prediction_name(self.image.value or ""))
        try:
            if labels is None:
                raise UserError("no annotations for this image: click 'Create / attach annotations' first")
            correct_object(labels, prediction, kind, world, self.mode_key)
        except UserError as exc:
            show_warning(str(exc))

    def start_from_threshold(self) -> None:
        """Replace the annotation by an Otsu threshold of the image (a rough start to correct)."""
        image = self.image_layer()
        if image is None:
            return
        data = np.asarray(image.data)
        rough = annotation.threshold_start(data if data.ndim == 2 or image.rgb else data.mean(axis=0), self.mode_key,
                                           self.min_size.value)
        self._edit(lambda a: rough)

    def accept_prediction(self) -> None:
        """Copy ``<image> prediction`` into the annotation, to correct instead of paint."""
        from napari.utils.notifications import show_warning

        image = self.image_layer()
        prediction = None if image is None else find_layer(self.viewer, prediction_name(image.name))
        if prediction is None:
            show_warning("no prediction for this image yet: train or run Predict first")
            return
        task = prediction.metadata.get("task", "instances")
        converted = annotation.prediction_to_annotation(prediction.data, self.mode_key, task)
        self._edit(lambda a: converted)

    def remove_selected(self) -> None:
        for name in list(self.training_set.value):
            self.session.detach(name)

    def save_project(self) -> None:
        from napari.utils.notifications import show_error, show_info

        from napari_unet.errors import UserError

        try:
            folder = self.session.save_project(self.project_folder.value)
        except UserError as exc:
            show_error(str(exc))
            return
        show_info(f"project saved to {folder}")
        self.refresh_stats()

    def load_project(self) -> None:
        """Open a saved project: its images and annotations become layers and the training set."""
        from napari.utils.notifications import show_error

        from napari_unet.errors import UserError
        from napari_unet.files.project import Project

        try:
            project = Project.load(self.project_folder.value)
        except UserError as exc:
            show_error(str(exc))
            return
        self.mode.value = next(k for k, v in MODES.items() if v == project.mode)
        self.class_names.value = ", ".join(project.class_names[1:])
        self.session.project.mode = project.mode
        for sample in project.samples.values():
            image = find_layer(self.viewer, sample.name) or self.viewer.add_image(sample.image, name=sample.name)
            labels = find_layer(self.viewer, annotations_name(sample.name))
            if labels is None:
                labels = self.viewer.add_labels(sample.labels, name=annotations_name(sample.name))
            else:
                labels.data = sample.labels
            self._style(labels)
            self.session.attach(image, labels)
        self.session.adopt_synthetic(project)
        self.session.use_folder(self.project_folder.value)
        self.image.value = project.names()[0] if project.samples else None

    # -- display -----------------------------------------------------------------------------
    def _on_session_changed(self) -> None:
        self.training_set.reset_choices()
        self.refresh_stats()

    def refresh_stats(self, *_args) -> None:
        """Show what is painted in the current image and in the whole training set."""
        labels = self.labels_layer()
        lines = []
        if labels is not None:
            s = annotation.annotation_stats(labels.data, self.mode_key)
            what = "object regions" if self.mode_key == "sparse" else "objects"
            background = f", {s.background_pixels} background px" if self.mode_key == "partial" else ""
            lines.append(f"this image: {s.objects} {what}{background}, {s.annotated_pixels} annotated px "
                         f"({s.fraction:.1%})")
        project = self.session.project
        if project.samples:
            total = sum(annotation.annotation_stats(x.labels, project.mode).objects for x in project.samples.values())
            lines.append(f"training set: {len(project.samples)} image(s), {total} objects")
        if project.synthetic:
            lines.append(f"{len(project.synthetic)} synthetic pair(s) (training only)")
        self.stats.value = "\n".join(lines) or "no annotations yet"
        if self.session.last_saved is not None:
            import time

            self.autosave_label.value = f"saved to {self.session.folder} at {time.strftime('%H:%M:%S', time.localtime(self.session.last_saved))}"
