"""State shared by the plugin's widgets in one viewer: the training set, its autosave, the model.

The Annotate widget fills the training set, the Train widget trains on it and leaves the
model here, the Predict widget applies it. Annotation edits are saved to the project folder
a couple of seconds after they happen (atomic writes), so a crash loses at most those seconds.
Synthetic pairs accepted in the Synthesize widget are written there at once.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from napari_unet.arrays.layout import annotated_planes
from napari_unet.files.project import Project

AUTOSAVE_DELAY_MS = 2000
_SESSIONS: dict[int, tuple[weakref.ref, "Session"]] = {}


def plugin_home() -> Path:
    """Where autosaved projects live (``$NAPARI_UNET_HOME`` or ``~/.napari-unet``)."""
    return Path(os.environ.get("NAPARI_UNET_HOME") or Path.home() / ".napari-unet")


class Session:
    """Training set + model of one viewer; ``changed`` fires when either changes."""

    changed = Signal()
    annotations_edited = Signal(str)  # sample name

    def __init__(self, viewer: Any) -> None:
        from qtpy.QtCore import QTimer

        self._viewer = weakref.ref(viewer)
        self.project = Project()
        self.folder = plugin_home() / "autosave" / time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}")
        self.model = None  # ModelBundle once trained or loaded
        self.model_name = ""
        self.last_saved: float | None = None
        self._layers: dict[str, tuple[Any, Any]] = {}  # sample name -> (image layer, labels layer)
        self._dirty: set[str] = set()
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_DELAY_MS)
        self._timer.timeout.connect(self.autosave)

    @property
    def viewer(self) -> Any:
        return self._viewer()

    # -- the training set --------------------------------------------------------------------
    def attach(self, image_layer: Any, labels_layer: Any) -> None:
        """Put an image layer and its annotation layer in the training set and watch edits."""
        name = image_layer.name
        self.project.add(name, np.asarray(image_layer.data), labels_layer.data)
        self._layers[name] = (image_layer, labels_layer)
        labels_layer.events.paint.connect(lambda _e=None, n=name: self.mark_edited(n))
        labels_layer.events.data.connect(lambda _e=None, n=name: self.mark_edited(n))
        self._write_image(name)
        self.mark_edited(name)
        self.changed.emit()

    def detach(self, name: str) -> None:
        """Take a sample out of the training set (its files stay on disk)."""
        self.project.remove(name)
        self._layers.pop(name, None)
        self._dirty.discard(name)
        self.project.save_description(self.folder)
        self.changed.emit()

    def labels_layer(self, name: str) -> Any:
        return self._layers.get(name, (None, None))[1]

    def mark_edited(self, name: str) -> None:
        """Record an edit; the annotation is saved after ``AUTOSAVE_DELAY_MS``."""
        layer = self.labels_layer(name)
        if layer is not None and name in self.project.samples:
            self.project.update_labels(name, layer.data)
        self._dirty.add(name)
        self._timer.start()
        self.annotations_edited.emit(name)

    def training_pairs(self, volumes: bool = False, zero_unannotated: bool = False,
                       ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
        """Copies of all (image, labels) pairs, safe to hand to a worker thread; ``volumes``: 3D
        annotations stay whole (their annotated planes, or with ``zero_unannotated`` the whole
        volume: ``arrays.layout.annotated_planes``) instead of being split into 2D slices."""
        pairs, names = [], []
        for sample in self.project.samples.values():
            for name, image, labels in annotated_planes(sample.name, sample.image, sample.labels, 3 if volumes else 2,
                                                         zero_unannotated):
                pairs.append((image, np.array(labels, copy=True)))
                names.append(name)
        return pairs, names

    # -- synthetic pairs (training only; validation stays on the real samples) -----------------
    @property
    def synthetic(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The accepted diffusion-made (image, mask) pairs."""
        return self.project.synthetic_pairs()

    def add_synthetic(self, image: np.ndarray, mask: np.ndarray, origin: dict | None = None) -> str:
        """Accept a generated pair: keep it and write it to the project folder now."""
        from napari.utils.notifications import show_error

        from napari_unet.errors import UserError

        name = self.project.add_synthetic(image, mask, origin)
        try:
            self.project.save_synthetic(self.folder, name)
            self.project.save_description(self.folder)
        except UserError as exc:
            show_error(f"autosave failed: {exc}")
        self.changed.emit()
        return name

    def adopt_synthetic(self, project: Project) -> None:
        """Take over the synthetic pairs of a loaded project (same names replace ours)."""
        self.project.synthetic.update(project.synthetic)
        self.changed.emit()

    # -- files -------------------------------------------------------------------------------
    def use_folder(self, folder: str | os.PathLike) -> None:
        """Autosave to ``folder`` from now on, first copying there what it lacks of the training set."""
        from napari.utils.notifications import show_error

        from napari_unet.errors import UserError

        self.folder = Path(folder)
        samples, synthetic = self.project.missing_files(self.folder)
        try:
            for name in samples:
                self.project.save_image(self.folder, name)
                self.project.save_labels(self.folder, name)
            for name in synthetic:
                self.project.save_synthetic(self.folder, name)
            self.project.save_description(self.folder)
        except UserError as exc:
            show_error(f"autosave failed: {exc}")

    def autosave(self) -> None:
        """Write the annotations edited since the last save (called by the timer)."""
        from napari.utils.notifications import show_error

        from napari_unet.errors import UserError

        dirty, self._dirty = self._dirty, set()
        try:
            for name in dirty:
                if name in self.project.samples:
                    self.project.save_labels(self.folder, name)
            self.project.save_description(self.folder)
            self.last_saved = time.time()
        except UserError as exc:
            self._dirty |= dirty
            show_error(f"autosave failed: {exc}")

    def save_project(self, folder: str | os.PathLike) -> Path:
        """Save everything to ``folder`` and keep autosaving there."""
        self.folder = Path(folder)
        self.project.save(self.folder)
        self._dirty.clear()
        self.last_saved = time.time()
        return self.folder

    def _write_image(self, name: str) -> None:
        from napari.utils.notifications import show_error

        from napari_unet.errors import UserError

        try:
            self.project.save_image(self.folder, name)
        except UserError as exc:
            show_error(f"autosave failed: {exc}")


def unwrap(viewer: Any) -> Any:
    """The real viewer behind napari's public-only proxy (widgets share state per viewer)."""
    return getattr(viewer, "__wrapped__", viewer)


def session_for(viewer: Any) -> Session:
    """The one ``Session`` of ``viewer`` (created on first use)."""
    viewer = unwrap(viewer)
    for key, (ref, _session) in list(_SESSIONS.items()):
        if ref() is None:
            del _SESSIONS[key]
    entry = _SESSIONS.get(id(viewer))
    if entry is None or entry[0]() is not viewer:
        entry = (weakref.ref(viewer), Session(viewer))
        _SESSIONS[id(viewer)] = entry
    return entry[1]
