"""The Qt-free annotation helpers, with the partial instance convention (0 unannotated, 1 background, 2.. objects)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.errors import UserError
from napari_unet.workflows import annotation


def two_blobs() -> np.ndarray:
    """A 20x20 instance prediction: object 1 at the top left, object 2 at the bottom right."""
    prediction = np.zeros((20, 20), np.uint32)
    prediction[2:6, 2:6] = 1
    prediction[12:18, 12:18] = 2
    return prediction


def test_next_free_id_starts_at_two_where_one_is_background():
    empty = np.zeros((4, 4), np.uint32)
    assert annotation.next_free_id(empty, "instances") == 1
    assert annotation.next_free_id(empty, "partial") == 2
    assert annotation.next_free_id(np.ones((4, 4), np.uint32), "partial") == 2  # background only
    painted = np.array([[0, 1, 2], [5, 1, 0]], np.uint32)
    assert annotation.next_free_id(painted, "partial") == 6


def test_partial_stats_count_objects_and_background():
    labels = np.zeros((10, 10), np.uint32)
    labels[0, :] = 1  # a background stroke: 10 px
    labels[2:4, 2:4] = 2
    labels[6:8, 6:8] = 3
    labels[6, 2] = 3  # an id in two pieces is still one object
    stats = annotation.annotation_stats(labels, "partial")
    assert stats.objects == 2
    assert stats.background_pixels == 10
    assert stats.annotated_pixels == 10 + 4 + 5
    assert annotation.annotation_stats(labels, "instances").background_pixels == 0


def test_prediction_to_partial_annotation_marks_every_pixel():
    prediction = two_blobs()
    labels = annotation.prediction_to_annotation(prediction, "partial", "instances")
    assert labels[0, 0] == 1 and labels[3, 3] == 2 and labels[15, 15] == 3
    assert (labels > 0).all()
    classes = np.where(prediction > 0, 1, 0)  # a class prediction: its blobs become objects
    from_classes = annotation.prediction_to_annotation(classes, "partial", "semantic")
    assert set(np.unique(from_classes)) == {1, 2, 3}


def test_threshold_start_in_partial_mode_leaves_a_gap(showcase):
    image, _ = showcase
    labels = annotation.threshold_start(image[:128, :128], "partial")
    assert labels.dtype == np.uint32
    assert 0 in labels and 1 in labels and labels.max() > 3  # gap, background, several objects
    assert not (np.isin(labels, [1]) & (image[:128, :128] > np.percentile(image, 99.5))).any()


def test_mark_fully_annotated_fills_only_unpainted_pixels_inside():
    labels = np.zeros((10, 10), np.uint8)
    labels[3:5, 3:5] = 4
    region = np.zeros((10, 10), bool)
    region[2:8, 2:8] = True
    out = annotation.mark_fully_annotated(labels, region)
    assert out.dtype == labels.dtype and labels.max() == 4  # the input stays as it was
    assert (out[3:5, 3:5] == 4).all()
    inside = region & (labels == 0)
    assert (out[inside] == 1).all() and (out[~region] == 0).all()
    with pytest.raises(UserError):
        annotation.mark_fully_annotated(labels, region[:5])


def test_accept_object_adds_a_new_id_without_overwriting_objects():
    prediction = two_blobs()
    labels = np.zeros((20, 20), np.uint32)
    labels[0, :] = 1  # background elsewhere
    labels[12:14, 12:14] = 2  # part of the lower object is already painted
    labels[16, 16] = 1  # background painted inside the predicted object (the user accepts: it becomes object)
    out = annotation.accept_object(labels, prediction, 15, 15, "partial")
    new = out == 3
    assert new.sum() == 36 - 4 and out[16, 16] == 3
    assert (out[12:14, 12:14] == 2).all()
    assert (out[(prediction == 0)] == labels[prediction == 0]).all()  # the surroundings are untouched
    instances = annotation.accept_object(np.zeros((20, 20), np.uint32), prediction, 3, 3, "instances")
    assert (instances == 1).sum() == 16 and instances.max() == 1


def test_accept_object_refuses_background_clicks_and_accepted_objects():
    prediction = two_blobs()
    labels = np.zeros((20, 20), np.uint32)
    with pytest.raises(UserError, match="click on an object"):
        annotation.accept_object(labels, prediction, 0, 0, "partial")
    with pytest.raises(UserError, match="click on an object"):
        annotation.accept_object(labels, prediction, 40, 3, "partial")
    once = annotation.accept_object(labels, prediction, 3, 3, "partial")
    with pytest.raises(UserError, match="already annotated"):
        annotation.accept_object(once, prediction, 3, 3, "partial")
    with pytest.raises(UserError, match="instances or partial"):
        annotation.accept_object(labels, prediction, 3, 3, "sparse")


def test_remove_object_erases_one_id():
    labels = np.ones((10, 10), np.uint32)
    labels[1:3, 1:3] = 2
    labels[5:8, 5:8] = 3
    out = annotation.remove_object(labels, 6, 6, "partial")
    assert (out[5:8, 5:8] == 0).all()  # unannotated, not background
    assert (out[1:3, 1:3] == 2).all() and out[0, 0] == 1
    with pytest.raises(UserError, match="annotated object"):
        annotation.remove_object(labels, 0, 0, "partial")  # background is no object
    instances = np.zeros((10, 10), np.uint32)
    instances[2:4, 2:4] = 1
    assert annotation.remove_object(instances, 2, 2, "instances").max() == 0
    with pytest.raises(UserError):
        annotation.remove_object(instances, 9, 9, "instances")


def test_fill_holes_leaves_background_rings_alone_in_partial_mode():
    labels = np.zeros((9, 9), np.uint32)
    labels[1:8, 1:8] = 1
    labels[3:6, 3:6] = 0  # an unannotated hole inside a background ring
    assert (annotation.fill_holes(labels, min_value=2)[3:6, 3:6] == 0).all()
    assert (annotation.fill_holes(labels)[3:6, 3:6] == 1).all()
