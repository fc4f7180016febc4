"""The star-convex instance head: targets, NMS, training, streaming, uncertainty; export and CLI
of both map heads (star and flow)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from stardist import edt_prob
from stardist.geometry import star_dist

from helpers import drain, write_pairs
from napari_unet import heads
from napari_unet.config import AugmentConfig, PredictConfig, TrainConfig, UNetConfig
from napari_unet.data.augment import augment_batch
from napari_unet.data.targets import instance_classes, pack, unpack
from napari_unet.heads.star import GRID, instances_from_star, star_blockwise, star_targets
from napari_unet.inference.arrays import predict_array
from napari_unet.inference.predict import network_forward, predict_image
from napari_unet.inference.uncertainty import mc_uncertainty
from napari_unet.metrics import evaluate_instances
from napari_unet.models.bundle import build_network, load_bundle, save_bundle
from napari_unet.training.engine import Trainer

TINY = UNetConfig(depth=2, base_width=8)


def touching_disks(shape=(192, 256), n=40, seed=0) -> np.ndarray:
    """Instance ids of random disks (radius 5-12) that may touch; later disks overwrite earlier ones."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    ids = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(5, 12)
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    from napari_unet.data.targets import relabel_sequential

    return relabel_sequential(ids).astype(np.int32)


def ideal_maps(ids: np.ndarray, n_rays: int = 32) -> np.ndarray:
    """The maps a perfect star model would output for ``ids``: (3 + 1 + R, H, W)."""
    classes = np.eye(3, dtype=np.float32)[instance_classes(ids)].transpose(2, 0, 1)
    rays = np.moveaxis(star_dist(ids, n_rays), -1, 0)
    return np.concatenate([classes, edt_prob(ids)[None], rays]).astype(np.float32)


def test_pack_unpack_roundtrip():
    targets = torch.randint(-1, 3, (2, 16, 16))
    ids = torch.randint(0, 5000, (2, 16, 16))
    back_targets, back_ids = unpack(pack(targets, ids))
    assert torch.equal(back_targets, targets) and torch.equal(back_ids, ids)


def test_classes_and_ids_warp_together():
    """After the elastic warp the class targets and the ids still come from one source pixel each."""
    ids = np.stack([touching_disks((128, 128), 25, seed) for seed in (1, 2)])
    targets = np.stack([instance_classes(i) for i in ids])
    image = torch.from_numpy(ids[:, None].astype(np.float32))
    _, codes, _ = augment_batch(image, pack(torch.from_numpy(targets), torch.from_numpy(ids)), None,
                                AugmentConfig(elastic_sigma=8.0), torch.Generator().manual_seed(0))
    warped_targets, warped_ids = (t.numpy() for t in unpack(codes))
    assert not np.array_equal(warped_ids, ids)  # it did deform
    assert np.array_equal(warped_targets > 0, warped_ids > 0)
    prob, dist = star_targets(warped_ids, 32)
    assert prob.shape == ids.shape and dist.shape == (2, 32, 64, 64)
    assert np.array_equal(dist[0], np.moveaxis(star_dist(warped_ids[0].astype(np.int32), 32, grid=(GRID, GRID)), -1, 0))
    assert ((prob > 0) == (warped_ids > 0)).all() and prob.max() == pytest.approx(1.0)


def test_rays_of_rotated_labels_are_the_rays_shifted_by_a_quarter_turn():
    """Targets from the rotated labels equal the original rays, cyclically shifted by n/4: the
    reason rays are made after augmentation rather than carried through it."""
    ids = touching_disks((96, 96), 12, 3)
    rays = star_dist(ids, 32)  # (H, W, R)
    rotated = star_dist(np.ascontiguousarray(np.rot90(ids)), 32)
    shifted = np.rot90(np.roll(rays, -8, axis=-1))
    inside = np.rot90(ids) > 0
    assert np.abs(rotated - shifted)[inside].mean() < 0.05


def test_nms_recovers_every_object_from_ideal_maps():
    ids = touching_disks()
    labels = instances_from_star(ideal_maps(ids), 10, 0.5, 0.4)
    scores = evaluate_instances([(labels, ids)])
    assert scores["ap50"] > 0.95, scores["ap50"]
    assert labels.max() == pytest.approx(ids.max(), abs=2)


def test_nms_agrees_with_stardist_on_ideal_maps():
    from stardist.geometry import polygons_to_label
    from stardist.nms import non_maximum_suppression

    ids = touching_disks(seed=4)
    maps = ideal_maps(ids)
    prob, dist = maps[3, ::GRID, ::GRID], np.moveaxis(maps[4:, ::GRID, ::GRID], 0, -1)
    points, probi, disti = non_maximum_suppression(np.ascontiguousarray(dist), np.ascontiguousarray(prob),
                                                   grid=(GRID, GRID), b=0, nms_thresh=0.4, prob_thresh=0.5)
    theirs = polygons_to_label(disti, points, ids.shape, prob=probi)
    ours = instances_from_star(maps, 1, 0.5, 0.4)
    assert abs(evaluate_instances([(ours, ids)])["ap50"] - evaluate_instances([(theirs, ids)])["ap50"]) < 0.03


def test_an_unsure_model_is_post_processed_quickly():
    """Every pixel a candidate with long rays (an untrained model) must not stall the NMS."""
    import time

    rng = np.random.default_rng(0)
    maps = np.concatenate([np.full((3, 520, 696), 1 / 3, np.float32), rng.uniform(0.5, 0.6, (1, 520, 696)),
                           rng.uniform(10, 40, (32, 520, 696))]).astype(np.float32)
    start = time.perf_counter()
    labels = instances_from_star(maps)
    assert time.perf_counter() - start < 20 and labels.max() > 0


def test_streamed_star_instances_are_seam_free():
    ids = touching_disks((300, 340), 90, 5)
    maps = ideal_maps(ids)
    whole = instances_from_star(maps, 10, 0.5, 0.4)
    labels = np.zeros(ids.shape, np.uint32)
    n = drain(star_blockwise(maps, labels, block=64, halo=32, min_size=10))
    assert n == len(np.unique(labels)) - 1
    # every object crossing a block seam keeps one id: each true object is one predicted object
    assert evaluate_instances([(labels, ids)])["ap50"] > 0.95
    assert evaluate_instances([(labels, whole)])["ap50"] > 0.97
    crossing = [g for g in np.unique(ids[:, 63:65]) if g]  # objects on the first vertical seam
    assert crossing
    for g in crossing:  # one label covers (nearly) all of it, not two halves
        _, counts = np.unique(labels[ids == g], return_counts=True)
        assert counts.max() >= 0.8 * (ids == g).sum()


def test_star_model_trains_on_real_nuclei_and_roundtrips(small_pairs, tmp_path):
    cfg = TrainConfig(instance_head="star", model=TINY, steps=250, time_limit=None, patch_size=128, batch_size=4,
                      validate_every=1e9, low_precision=False)
    bundle = drain(Trainer(small_pairs[:3], cfg, validation=small_pairs[3:]).run())
    assert set(bundle.postprocess) == {"prob_threshold", "nms_threshold"}
    scores = evaluate_instances([(predict_image(bundle, im).labels, m) for im, m in small_pairs])
    print(f"star head, tiny net, 250 steps: AP@0.5 {scores['ap50']:.3f}")
    assert scores["ap50"] > 0.3, scores["ap50"]  # tiny net, 250 steps: objects found, far from done
    again = load_bundle(save_bundle(bundle, tmp_path / "star"))
    assert again.config.instance_head == "star" and again.postprocess == bundle.postprocess
    image = small_pairs[0][0]
    np.testing.assert_allclose(predict_image(again, image).probabilities, predict_image(bundle, image).probabilities,
                               atol=1e-4)


@pytest.mark.parametrize("before, after", [("3class", "star"), ("3class", "flow"), ("star", "flow")])
def test_fine_tuning_into_another_head_keeps_the_backbone(small_pairs, before, after):
    torch.manual_seed(0)
    start = TrainConfig(instance_head=before, model=TINY)
    from napari_unet.models.bundle import ModelBundle

    init = ModelBundle(build_network(start), start)
    cfg = TrainConfig(instance_head=after, model=TINY, steps=1, time_limit=None, patch_size=64, batch_size=2,
                      validate_every=1e9, low_precision=False)
    trainer = Trainer(small_pairs[:3], cfg, init=init)
    net, fresh = trainer._build(torch.device("cpu"), False)
    assert fresh and all(k.startswith(("head.", "side.")) for k in fresh)
    kept, start_state = net.state_dict(), init.net.state_dict()
    assert all(torch.equal(kept[k], start_state[k]) for k in kept if k not in fresh)


def test_mc_dropout_uncertainty_covers_probability_and_rays():
    rng = np.random.default_rng(0)
    classes = rng.dirichlet(np.ones(3), (4, 8, 8)).transpose(0, 3, 1, 2)  # (T, 3, H, W)
    prob = rng.uniform(0, 1, (4, 1, 8, 8))
    rays = rng.uniform(0, 20, (4, 32, 8, 8))
    maps = mc_uncertainty(np.concatenate([classes, prob, rays], axis=1), heads.get("star"))
    assert maps["probabilities"].shape == (36, 8, 8)
    assert {"total", "aleatoric", "epistemic", "shape"} <= set(maps) and (maps["shape"] > 0).all()
    same = mc_uncertainty(np.repeat(np.concatenate([classes, prob, rays], axis=1)[:1], 4, axis=0), heads.get("star"))
    assert np.allclose(same["epistemic"], 0, atol=1e-5) and np.allclose(same["shape"], 0)


@pytest.mark.parametrize("head, channels", [("star", 36), ("flow", 6)])
def test_map_head_predictions_with_mc_dropout_and_tiles(small_pairs, head, channels):
    cfg = TrainConfig(instance_head=head, model=TINY)
    torch.manual_seed(0)
    from napari_unet.models.bundle import ModelBundle

    bundle = ModelBundle(build_network(cfg).eval(), cfg)
    image = np.tile(small_pairs[0][0], (2, 2))  # 256²
    whole = predict_image(bundle, image, PredictConfig(tile_size=1024))
    tiled = predict_image(bundle, image, PredictConfig(tile_size=128, overlap=32))
    assert whole.probabilities.shape == (channels, 256, 256)
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=2e-2)
    mc = predict_image(bundle, image, PredictConfig(mc_samples=2))
    assert mc.uncertainty["epistemic"].shape == (256, 256)
    assert mc.uncertainty["shape"].max() > 0  # the spread of the rays / flows over the samples
    shape = drain(predict_array(bundle, image, PredictConfig(mc_samples=2), uncertainty="shape"))
    assert set(shape.uncertainty) == {"shape"} and shape.uncertainty["shape"].shape == (256, 256)


def test_shape_uncertainty_needs_a_map_head(small_pairs):
    from helpers import tiny_bundle
    from napari_unet.errors import UserError

    bundle, image = tiny_bundle(), small_pairs[0][0]
    with pytest.raises(UserError, match="star or flow"):
        drain(predict_array(bundle, image, PredictConfig(mc_samples=2), uncertainty="shape"))
    assert drain(predict_array(bundle, image, PredictConfig(mc_samples=0), uncertainty="shape")).uncertainty == {}


@pytest.mark.parametrize("head, channels", [("star", 36), ("flow", 6)])
def test_map_head_network_exports_its_maps(tmp_path, head, channels):
    from napari_unet.workflows.export import export_model, run_exported
    from napari_unet.models.bundle import ModelBundle

    cfg = TrainConfig(instance_head=head, model=TINY)
    torch.manual_seed(0)
    bundle = ModelBundle(build_network(cfg).eval(), cfg)
    path = drain(export_model(bundle, tmp_path / f"{head}.pt"))
    x = np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32)
    out = run_exported(path, x)
    assert out.shape == (1, channels, 64, 64)
    np.testing.assert_allclose(out, network_forward(bundle.net, x), atol=1e-4)


@pytest.mark.parametrize("head", ["star", "flow"])
def test_cli_trains_and_predicts_with_a_map_head(tmp_path, small_pairs, head):
    from napari_unet.cli import main
    from napari_unet.files.io import read_mask

    images, masks = write_pairs(tmp_path, small_pairs)
    model = tmp_path / "model"
    assert main(["train", str(images), str(masks), "--out", str(model), "--steps", "20", "--init", "none",
                 "--depth", "2", "--instance-head", head, "--batch-size", "2", "--patch-size", "64"]) == 0
    assert load_bundle(model).config.instance_head == head
    assert main(["predict", str(model), str(images), "--out", str(tmp_path / "out"), "--quiet",
                 "--uncertainty", "--mc-samples", "2"]) == 0
    assert read_mask(tmp_path / "out" / "n0.tif").shape == small_pairs[0][1].shape
    maps = tifffile.imread(tmp_path / "out" / "n0_uncertainty.tif")  # total, aleatoric, epistemic, shape
    assert maps.shape == (4, *small_pairs[0][1].shape) and np.isfinite(maps).all()
