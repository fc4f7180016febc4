"""Annotation edits napari can undo, and the two tools of the Annotate widget that make them.

``record_edit`` writes a new label image into a Labels layer as ONE step of napari's undo history
(``Labels.data_setitem`` inside ``block_history``: only the changed pixels are recorded, and the
layer's ``paint`` event fires, which the session's autosave listens to). ``ClickTool`` turns a
click on the canvas (press and release without dragging) into a call of ``correct_object``, so
"accept the predicted object under the cursor" and "remove the annotated object under the cursor"
stay Qt-free numpy functions (``napari_unet.workflows.annotation``) applied to the plane on show.
``apply_regions`` rasterises the Shapes layer the user drew regions in onto the labels' grid and
marks them fully annotated.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from napari_unet.errors import UserError
from napari_unet.workflows import annotation

CLICK_TOLERANCE = 2.0  # data pixels the cursor may move between press and release and still click


def record_edit(labels: Any, new: np.ndarray, index: tuple[int, ...] = ()) -> bool:
    """Make ``labels.data[index]`` equal ``new`` as one undoable step; False when nothing changed.

    ``index`` picks a plane of a stack (leading indices). A whole new array of another shape
    cannot be a history step: it replaces the data (not undoable), as before.
    """
    old = labels.data[index] if index else labels.data
    new = np.asarray(new)
    if not index and new.shape != np.shape(old):
        labels.data = new.astype(labels.data.dtype, copy=False)
        return True
    changed = np.nonzero(np.asarray(old) != new)
    if changed[0].size == 0:
        return False
    where = tuple(np.full(changed[0].size, i, np.intp) for i in index) + changed
    with labels.block_history():
        labels.data_setitem(where, new[changed].astype(labels.data.dtype, copy=False))
    return True


def plane_of(data: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """The 2D plane ``index`` of a stack, or ``data`` itself when it is already 2D."""
    return np.asarray(data[index] if np.ndim(data) == len(index) + 2 else data)


def data_point(layer: Any, world: Any) -> tuple[tuple[int, ...], int, int]:
    """A world position as (leading plane index, y, x) in ``layer``'s data pixels (rounded)."""
    point = np.round(np.asarray(layer.world_to_data(world), dtype=float)).astype(int)
    return tuple(int(p) for p in point[:-2]), int(point[-2]), int(point[-1])


def region_mask(shapes: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Where any shape of a Shapes layer lies, on a grid of ``shape`` (the layers share scale and translate)."""
    if len(shapes.data) == 0:
        return np.zeros(shape, bool)
    return np.asarray(shapes.to_masks(mask_shape=shape)).any(axis=0)


def clear_shapes(shapes: Any) -> None:
    """Remove every shape of a Shapes layer (the layer stays, ready for the next regions)."""
    shapes.selected_data = set(range(len(shapes.data)))
    shapes.remove_selected()


def apply_regions(viewer: Any, labels: Any, name: str) -> int | None:
    """Mark the regions drawn in the Shapes layer ``name`` as fully annotated in ``labels`` (one
    undoable step) and clear the shapes: the number of pixels that became background. None when
    there was nothing drawn yet: the layer (created if missing, on the labels' grid) is then
    made active in rectangle mode for the user to draw."""
    shapes = viewer.layers[name] if name in viewer.layers else None
    if shapes is None or len(shapes.data) == 0:
        if shapes is None:
            shapes = viewer.add_shapes(name=name, ndim=labels.ndim, scale=labels.scale, translate=labels.translate,
                                       edge_width=2, edge_color="yellow", face_color="transparent")
        viewer.layers.selection.active = shapes
        shapes.mode = "add_rectangle"
        return None
    new = annotation.mark_fully_annotated(labels.data, region_mask(shapes, labels.data.shape))
    added = int(np.count_nonzero(new != labels.data))
    record_edit(labels, new)
    clear_shapes(shapes)
    return added


def correct_object(labels: Any, prediction: Any, kind: str, world: tuple, mode: str) -> None:
    """Accept (``kind`` "accept") the object of the ``prediction`` layer, or remove ("remove") the
    annotated object, under world position ``world``: one undoable step on the plane shown.
    ``UserError`` when there is nothing to do there."""
    index, y, x = data_point(labels, world)
    index = index if labels.data.ndim > 2 else ()
    plane = plane_of(labels.data, index)
    if kind == "accept":
        if prediction is None:
            raise UserError("no prediction for this image yet: train or run Predict first")
        new = annotation.accept_object(plane, plane_of(prediction.data, index), y, x, mode)
    else:
        new = annotation.remove_object(plane, y, x, mode)
    record_edit(labels, new, index)


class ClickTool:
    """While a kind is on, a click on ``viewer``'s canvas calls ``apply(kind, world_position)``.

    A viewer-level ``mouse_drag_callbacks`` generator, so it works whichever layer is active; a
    press that turns into a drag (panning) is not a click.
    """

    def __init__(self, viewer: Any, apply: Callable[[str, tuple], None], scale: Callable[[], Any]) -> None:
        self.viewer, self.apply, self.scale = viewer, apply, scale
        self.kind: str | None = None

    def set(self, kind: str | None) -> None:
        """Turn ``kind`` on (None: off)."""
        self.kind = kind
        callbacks = self.viewer.mouse_drag_callbacks
        if kind is not None and self._on_press not in callbacks:
            callbacks.append(self._on_press)
        elif kind is None and self._on_press in callbacks:
            callbacks.remove(self._on_press)

    def _on_press(self, _viewer: Any, event: Any):
        start = np.asarray(event.position, dtype=float)
        yield
        while event.type == "mouse_move":
            yield
        scale = np.asarray(self.scale(), dtype=float)  # world units per data pixel, last axes
        moved = np.abs(np.asarray(event.position, dtype=float) - start)[-scale.size:] / scale
        if self.kind is not None and moved.max(initial=0.0) <= CLICK_TOLERANCE:
            self.apply(self.kind, tuple(start))
