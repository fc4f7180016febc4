"""Annotate widget, partial mode: background brush, object ids from 2, regions marked fully
annotated, click corrections; every edit one step of napari's undo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

from napari_unet.widgets.annotate import MODES, AnnotateWidget
from napari_unet.widgets._session import session_for

PARTIAL = next(k for k, v in MODES.items() if v == "partial")


@dataclass
class Click:
    """The parts of a napari mouse event that the viewer's drag callbacks read."""

    type: str
    position: tuple[float, float]
    modifiers: tuple = ()
    is_dragging: bool = False
    button: int = 1
    view_direction: None = None
    dims_displayed: tuple = (0, 1)
    handled: bool = False


def press_release(viewer, press: tuple[float, float], release: tuple[float, float]) -> None:
    """Press at one world position and release at another, as napari's canvas does (a read-only
    event whose wrapped object the release swaps in)."""
    mouse_press_callbacks(viewer, ReadOnlyWrapper(Click("mouse_press", press), exceptions=("handled",)))
    mouse_release_callbacks(viewer, Click("mouse_release", release))


def click(viewer, y: float, x: float) -> None:
    press_release(viewer, (y, x), (y, x))


@pytest.fixture
def partial(nuclei_viewer):
    widget = AnnotateWidget(nuclei_viewer)
    widget.image.value = "nuclei"
    widget.mode.value = PARTIAL
    widget.attach()
    return widget


def centre_of(labels: np.ndarray, value: int) -> tuple[int, int]:
    ys, xs = np.nonzero(labels == value)
    i = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)  # a pixel of the object near its centre
    return int(ys[i]), int(xs[i])


def test_partial_mode_ids_background_brush_and_stats(partial, nuclei_viewer):
    labels = nuclei_viewer.layers["nuclei annotations"]
    assert labels.data.dtype == np.uint32 and not partial.background_button.native.isHidden()
    assert labels.selected_label == 2  # the first object id
    assert labels.colormap.map(1)[3] < 1  # background label 1 is a see-through grey
    assert session_for(nuclei_viewer).project.mode == "partial"
    partial.background_brush()
    assert labels.selected_label == 1 and labels.mode == "paint"
    labels.paint((5, 5), 1, refresh=True)
    labels.paint((100, 100), 2, refresh=True)
    partial.next_id()
    assert labels.selected_label == 3
    partial.refresh_stats()
    assert "1 objects" in partial.stats.value and "background px" in partial.stats.value


def test_mark_region_as_fully_annotated(partial, nuclei_viewer, notifications):
    labels = nuclei_viewer.layers["nuclei annotations"]
    labels.data_setitem((np.array([20]), np.array([20])), 5)  # one painted object pixel inside the region
    partial.region_button.changed.emit(True)  # first click: the regions layer, ready to draw
    shapes = nuclei_viewer.layers["nuclei regions"]
    assert nuclei_viewer.layers.selection.active is shapes and shapes.mode == "add_rectangle"
    assert notifications[-1][0] == "info" and "Draw rectangles" in notifications[-1][1]
    shapes.add_rectangles(np.array([[10, 10], [40, 60]]))
    history = len(labels._undo_history)
    partial.region_button.changed.emit(True)  # second click: apply
    data = labels.data
    assert (data[11:39, 11:59][data[11:39, 11:59] != 5] == 1).all()
    assert data[20, 20] == 5 and data[5, 5] == 0 and data[50, 70] == 0  # painted stays, outside stays
    assert len(shapes.data) == 0 and len(labels._undo_history) == history + 1
    labels.undo()
    assert (labels.data[11:39, 11:59] == 1).sum() == 0 and labels.data[20, 20] == 5


def test_accept_and_remove_objects_by_click_undoably(partial, nuclei_viewer, notifications):
    viewer = nuclei_viewer
    truth = viewer.layers["nuclei ground truth"].data
    viewer.add_labels(truth, name="nuclei prediction", metadata={"task": "instances"})
    labels = viewer.layers["nuclei annotations"]
    labels.paint((0, 0), 1, refresh=True)
    before = labels.data.copy()
    y, x = centre_of(truth, int(truth[truth > 0][0]))

    partial.accept_click.value = True
    assert labels.mode == "pan_zoom"
    click(viewer, y, x)
    new_id = int(labels.data[y, x])
    assert new_id == 2 and ((labels.data == 2) == (truth == truth[y, x])).all()
    assert (labels.data[truth == 0] == before[truth == 0]).all()  # nothing around the object changed
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    labels.redo()

    click(viewer, 0, 0)  # predicted background
    assert notifications[-1][0] == "warning" and "click on an object" in notifications[-1][1]

    partial.remove_click.value = True
    assert not partial.accept_click.value
    accepted = labels.data.copy()
    click(viewer, y, x)
    assert labels.data[y, x] == 0 and (labels.data == new_id).sum() == 0  # back to unannotated
    labels.undo()
    np.testing.assert_array_equal(labels.data, accepted)
    partial.remove_click.value = False
    assert partial.clicks._on_press not in viewer.mouse_drag_callbacks and labels.mode == "paint"
    click(viewer, y, x)
    np.testing.assert_array_equal(labels.data, accepted)  # tools off: a click changes nothing


def test_a_drag_is_not_a_click(partial, nuclei_viewer):
    viewer = nuclei_viewer
    truth = viewer.layers["nuclei ground truth"].data
    viewer.add_labels(truth, name="nuclei prediction", metadata={"task": "instances"})
    y, x = centre_of(truth, int(truth[truth > 0][0]))
    partial.accept_click.value = True
    press_release(viewer, (y, x), (y + 30, x + 30))
    assert viewer.layers["nuclei annotations"].data.max() == 0


def test_accept_prediction_in_partial_mode_and_undo(partial, nuclei_viewer):
    truth = nuclei_viewer.layers["nuclei ground truth"].data
    nuclei_viewer.add_labels(truth, name="nuclei prediction", metadata={"task": "instances"})
    partial.accept_prediction()
    labels = nuclei_viewer.layers["nuclei annotations"]
    assert (labels.data[truth == 0] == 1).all() and (labels.data[truth > 0] >= 2).all()
    labels.undo()
    assert labels.data.max() == 0
