"""Annotate widget in a real viewer: annotation layer, helpers, stats, training set, project files."""

from __future__ import annotations

import numpy as np

from napari_unet.files.project import Project
from napari_unet.widgets.annotate import AnnotateWidget, MODES

INSTANCES = next(k for k, v in MODES.items() if v == "instances")
from napari_unet.widgets._session import session_for


def test_attach_creates_annotation_layer_and_training_sample(nuclei_viewer):
    widget = AnnotateWidget(nuclei_viewer)
    widget.image.value = "nuclei"
    widget.mode.value = INSTANCES
    labels = widget.attach()
    assert labels.name == "nuclei annotations"
    assert labels.data.shape == nuclei_viewer.layers["nuclei"].data.shape
    assert session_for(nuclei_viewer).project.names() == ["nuclei"]
    assert labels.selected_label == 1
    labels.data[10:20, 10:20] = 1
    widget.next_id()
    assert labels.selected_label == 2
    assert "training set: 1 image(s)" in widget.stats.value


def test_threshold_fill_and_remove_small(nuclei_viewer):
    widget = AnnotateWidget(nuclei_viewer)
    widget.image.value = "nuclei"
    widget.mode.value = INSTANCES
    widget.start_from_threshold()
    labels = nuclei_viewer.layers["nuclei annotations"]
    n_objects = len(np.unique(labels.data)) - 1
    assert n_objects > 10  # the showcase image has dozens of nuclei
    first = int(labels.data.max())
    labels.data[labels.data == first] = 0
    labels.data[100:110, 100:110] = 0
    labels.data[100:110, 100:110][[0, -1], :] = 999
    labels.data[100:110, 100:110][:, [0, -1]] = 999  # a ring with a hole
    widget._edit(lambda a: a)
    widget.fill_button.changed.emit(True)
    assert (labels.data[102:108, 102:108] == 999).all()
    widget.min_size.value = 10_000
    widget.small_button.changed.emit(True)
    assert labels.data.max() == 0 or np.bincount(labels.data.ravel())[1:].max() >= 10_000
    assert "this image:" in widget.stats.value


def test_sparse_mode_threshold_marks_background_and_objects(nuclei_viewer):
    widget = AnnotateWidget(nuclei_viewer)
    widget.image.value = "nuclei"
    widget.mode.value = [k for k, v in MODES.items() if v == "sparse"][0]
    widget.class_names.value = "nucleus"
    widget.start_from_threshold()
    data = nuclei_viewer.layers["nuclei annotations"].data
    assert set(np.unique(data)) == {0, 1, 2}
    assert session_for(nuclei_viewer).project.mode == "sparse"
    assert session_for(nuclei_viewer).project.class_names == ["background", "nucleus"]


def test_accept_prediction_copies_it(nuclei_viewer):
    widget = AnnotateWidget(nuclei_viewer)
    widget.image.value = "nuclei"
    widget.mode.value = INSTANCES
    truth = nuclei_viewer.layers["nuclei ground truth"].data
    nuclei_viewer.add_labels(truth, name="nuclei prediction", metadata={"task": "instances"})
    widget.accept_prediction()
    annotation = nuclei_viewer.layers["nuclei annotations"].data
    assert ((annotation > 0) == (truth > 0)).all()
    assert len(np.unique(annotation)) == len(np.unique(truth))


def test_autosave_and_project_roundtrip(nuclei_viewer, make_napari_viewer, tmp_path, plugin_home):
    widget = AnnotateWidget(nuclei_viewer)
    widget.image.value = "nuclei"
    widget.mode.value = INSTANCES
    labels = widget.attach()
    labels.paint((50, 60), 1, refresh=True)  # a real brush stroke fires the paint event
    session = session_for(nuclei_viewer)
    session.autosave()
    saved = Project.load(session.folder)
    assert str(session.folder).startswith(str(plugin_home))
    assert saved.samples["nuclei"].labels[50, 60] == 1

    widget.project_folder.value = tmp_path / "my project"
    widget.save_project()
    assert (tmp_path / "my project" / "project.json").is_file()

    other = make_napari_viewer()
    loader = AnnotateWidget(other)
    loader.project_folder.value = tmp_path / "my project"
    loader.load_project()
    assert "nuclei" in other.layers and "nuclei annotations" in other.layers
    assert other.layers["nuclei annotations"].data[50, 60] == 1
    assert session_for(other).project.names() == ["nuclei"]


def test_loading_a_non_project_folder_notifies(nuclei_viewer, tmp_path, notifications):
    widget = AnnotateWidget(nuclei_viewer)
    widget.project_folder.value = tmp_path
    widget.load_project()
    assert notifications and notifications[-1][0] == "error"
    assert "not a napari-unet project" in notifications[-1][1]


def test_stacks_train_on_their_annotated_slices(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    labels = np.zeros((5, 32, 32), np.uint32)
    labels[1, 4:10, 4:10] = 1
    labels[3, 20:30, 20:30] = 2
    image_layer = viewer.add_image(stack, name="stack")
    labels_layer = viewer.add_labels(labels, name="stack annotations")
    session = session_for(viewer)
    session.attach(image_layer, labels_layer)
    pairs, names = session.training_pairs()
    assert names == ["stack[1]", "stack[3]"]
    assert all(image.shape == (32, 32) and mask.shape == (32, 32) for image, mask in pairs)
