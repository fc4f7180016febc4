"""Partial instance annotations: 0 = not annotated, 1 = background, 2.. = objects."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.config import TrainConfig
from napari_unet.data.dataset import hold_out_objects, prepare_pairs, without_zones
from napari_unet.data.targets import IGNORE, partial_instance_classes
from napari_unet.events import run_to_end
from napari_unet.inference.predict import predict_image
from napari_unet.metrics import UNANNOTATED, drop_unannotated, evaluate_instances
from napari_unet.training.engine import Trainer
from napari_unet.workflows.classes import config_task, task_and_classes, user_task


def painted(gt: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` objects of ``gt`` painted with ids 2.. and a 4-px background ring around them:
    (partial mask, the same objects as a plain instance mask, the painted ids)."""
    ids = np.random.default_rng(seed).choice(np.unique(gt[gt > 0]), count, replace=False)
    partial = np.zeros(gt.shape, np.int64)
    partial[ndi.binary_dilation(np.isin(gt, ids), iterations=4) & (gt == 0)] = 1
    plain = np.zeros(gt.shape, np.int64)
    for k, i in enumerate(ids):
        partial[gt == i], plain[gt == i] = k + 2, k + 1
    return partial, plain, ids


def test_user_task_partial_is_instances_with_sparse_labels():
    assert user_task("instances", sparse=True) == user_task("partial") == "partial"
    assert config_task("partial") == config_task("instances") == "instances"
    assert config_task("sparse") == "semantic"
    decided = task_and_classes([np.array([[0, 1, 2, 3]])], "partial")
    assert (decided.task, decided.sparse, decided.n_classes) == ("instances", True, 2)


def test_partial_targets_ignore_unpainted_pixels_and_keep_each_rim():
    mask = np.zeros((12, 12), np.int64)
    mask[1:6, 1:6] = 2  # an object against unannotated pixels
    mask[6:11, 1:6] = 3  # touching a second object
    mask[:, 7:] = 1  # a background stroke
    classes, ids = partial_instance_classes(mask)
    assert (classes[mask == 0] == IGNORE).all()
    assert (classes[mask == 1] == 0).all()
    assert set(np.unique(ids)) == {0, 1, 2}
    assert classes[1, 3] == 2 and classes[3, 3] == 1  # rim (also where it meets unpainted pixels) / interior
    assert classes[5, 3] == 2 and classes[6, 3] == 2  # where the two objects touch


def test_metrics_ignore_predictions_on_unannotated_pixels():
    gt = np.full((10, 20), UNANNOTATED, np.int64)
    gt[:, :10] = 0
    gt[2:6, 2:6] = 1
    pred = np.zeros((10, 20), np.int64)
    pred[2:6, 2:6] = 1  # found
    pred[2:6, 12:16] = 2  # nobody said what is there: not a false positive
    pred[6:9, 6:12] = 3  # mostly on annotated background: a false positive
    dropped, truth = drop_unannotated(pred, gt)
    assert set(np.unique(dropped)) == {0, 1, 3} and truth.min() == 0
    row = evaluate_instances([(pred, gt)], thresholds=(0.5,))["per_image"][0]
    assert (row["tp50"], row["fp50"], row["fn50"]) == (1, 1, 0)
    merged = np.where(pred == 1, 1, 0)
    merged[2:6, 6:14] = 1  # the painted object merged with its unpainted neighbour: still a miss
    row = evaluate_instances([(merged, gt)], thresholds=(0.5,))["per_image"][0]
    assert (row["tp50"], row["fn50"]) == (0, 1)


def test_held_out_objects_are_validation_only(showcase):
    image, gt = showcase
    partial, _, _ = painted(gt, 10)
    pairs = prepare_pairs([(image, partial)], TrainConfig(sparse=True))
    train, val, zones = hold_out_objects(pairs, 0.2, seed=0)
    zone = zones[pairs[0].name]
    assert len(val) == 1 and zone.any()
    assert (train[0].target[zone] == IGNORE).all() and (train[0].weights[zone] == 0).all()
    assert (train[0].target[~zone] == pairs[0].target[~zone]).all()
    held = np.unique(val[0].truth[val[0].truth > 0])
    assert len(held) == 2  # 20 % of 10
    assert (val[0].truth[~zone] == UNANNOTATED).all()
    assert without_zones(pairs, zones)[0].target[zone].max() == IGNORE  # updated annotations: the same zones
    few = prepare_pairs([(image, painted(gt, 3)[0])], TrainConfig(sparse=True))
    assert hold_out_objects(few, 0.2, seed=0)[1] == []


@pytest.mark.parametrize("head", ["star", "flow"])
def test_map_heads_train_on_partial_annotations(showcase, head):
    image, gt = showcase
    partial, _, _ = painted(gt[:128, :128], 4)
    cfg = TrainConfig(sparse=True, instance_head=head, steps=2, time_limit=None, batch_size=2, patch_size=64,
                      validation_fraction=0, preview_every=0, threads=1)
    bundle = run_to_end(Trainer([(image[:128, :128], partial)], cfg).run())
    assert bundle.meta["training"]["steps"] == 2


def test_unpainted_objects_are_found_not_taught_as_background(showcase):
    """Eight painted nuclei: trained as a partial annotation the model finds the 149 unpainted ones;
    trained as a plain instance mask (unpainted = background) it finds none of them."""
    image, gt = showcase
    partial, plain, ids = painted(gt, 8)
    unpainted = np.where(np.isin(gt, ids), 0, gt)
    found = {}
    for name, mask, sparse in (("partial", partial, True), ("plain", plain, False)):
        cfg = TrainConfig(sparse=sparse, steps=60, time_limit=None, seed=0, preview_every=0, validation_fraction=0)
        labels = predict_image(run_to_end(Trainer([(image, mask)], cfg).run()), image).labels
        found[name] = evaluate_instances([(labels, unpainted)], thresholds=(0.5,))["tp"]
    assert found["partial"] >= 40 and found["plain"] <= 5, found


def test_held_out_objects_of_a_dense_uint16_mask_score_only_their_zones(showcase):
    """A plain instance mask (uint16 ids, every pixel annotated): the zones' truth is signed, -1 elsewhere."""
    image, gt = showcase
    assert gt.dtype == np.uint16
    _, val, zones = hold_out_objects(prepare_pairs([(image, gt)], TrainConfig()), 0.15, seed=0)
    truth = val[0].truth
    assert truth.dtype.kind == "i" and (truth[~next(iter(zones.values()))] == UNANNOTATED).all()
    row = evaluate_instances([(gt, truth)], thresholds=(0.5,))["per_image"][0]  # the true labels, whole image
    assert row["fp50"] == 0 and row["fn50"] == 0 and row["tp50"] == np.unique(truth[truth > 0]).size


def test_unannotated_pixels_pull_weakly_towards_background():
    """Partial instance masks: an unannotated pixel is a background target of weight
    ``unannotated_background``; scribbles, plain masks, held-out zones and padding get no pull."""
    import torch
    import torch.nn.functional as F

    from napari_unet.heads.losses import weighted_cross_entropy

    mask = np.zeros((24, 24), np.int64)
    mask[4:10, 4:10], mask[3, 3:11] = 2, 1  # one object, a background stroke, the rest unannotated
    cfg = TrainConfig(sparse=True)
    (pair,) = prepare_pairs([(np.random.default_rng(0).random((24, 24)), mask)], cfg)
    assert np.allclose(pair.weights[mask == 0], cfg.loss.unannotated_background) and (pair.weights[mask > 0] >= 1).all()
    off = TrainConfig(sparse=True, loss=replace(cfg.loss, unannotated_background=0.0))
    assert (prepare_pairs([(pair.image[0], mask)], off)[0].weights[mask == 0] == 0).all()
    scribbles = TrainConfig(task="semantic", n_classes=2, sparse=True)
    assert (prepare_pairs([(pair.image[0], np.clip(mask, 0, 2))], scribbles)[0].weights[mask == 0] == 0).all()

    torch.manual_seed(0)
    logits = torch.randn(1, 3, 24, 24)
    target, weights = torch.from_numpy(pair.target)[None], torch.from_numpy(pair.weights)[None]
    weights[:, 20:] = 0  # padding: unannotated with weight 0
    ce = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE)
    annotated = target != IGNORE
    assert torch.isclose(weighted_cross_entropy(logits, target, weights), (ce * weights).sum() / annotated.sum())
    pull = cfg.loss.unannotated_background
    prior = (~annotated & (weights > 0)).float() * pull
    to_background = F.cross_entropy(logits, torch.zeros_like(target), reduction="none")
    expected = ((ce * weights).sum() + (to_background * prior).sum()) / (annotated.sum() + prior.sum())
    assert torch.isclose(weighted_cross_entropy(logits, target, weights, pull), expected)
    padded = logits.clone()
    padded[..., 20:, :] += 5.0  # what the padding shows changes nothing
    assert torch.isclose(weighted_cross_entropy(padded, target, weights, pull), expected)
