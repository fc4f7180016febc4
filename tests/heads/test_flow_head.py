"""The flow (Cellpose-style) instance head: targets, dynamics, training, streaming.

Fine-tuning, tiles, MC-dropout, export and the CLI run for both map heads in ``test_star_head.py``."""

from __future__ import annotations

import numpy as np

from helpers import drain
from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.data.targets import instance_classes, relabel_sequential
from napari_unet.heads.flow import flow_errors, instances_from_flows
from napari_unet.heads.flow_targets import flow_field, flow_targets
from napari_unet.heads.star import instances_from_star
from napari_unet.inference.labels import labels_for
from napari_unet.inference.predict import predict_image
from napari_unet.metrics import evaluate_instances
from napari_unet.models.bundle import load_bundle, save_bundle
from napari_unet.training.engine import Trainer

TINY = UNetConfig(depth=2, base_width=8)


def ideal_flow_maps(ids: np.ndarray) -> np.ndarray:
    """The maps a perfect flow model would output for ``ids``: (3 + 1 + 2, H, W)."""
    classes = np.eye(3, dtype=np.float32)[instance_classes(ids)].transpose(2, 0, 1)
    prob, flows = flow_targets(ids[None])
    return np.concatenate([classes, prob, flows[0]]).astype(np.float32)


def c_shapes(shape=(160, 200), seed=0) -> np.ndarray:
    """Instance ids of thick C-shaped arcs (rings with a gap, random orientation): not star-convex."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    ids = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate([(40, 50), (40, 150), (120, 50), (120, 150)], start=1):
        r = np.hypot(yy - cy, xx - cx)
        angle = np.arctan2(yy - cy, xx - cx) - rng.uniform(0, 2 * np.pi)
        gap = np.cos(angle) > 0.75  # a gap of about 80 degrees
        ids[(r >= 18) & (r <= 30) & ~gap] = i
    return ids


def test_disk_flows_point_to_its_centre():
    yy, xx = np.mgrid[:64, :64]
    ids = (((yy - 30) ** 2 + (xx - 34) ** 2) <= 15 ** 2).astype(np.int32)
    flows = flow_field(ids).numpy()  # (2, H, W)
    towards = np.stack([30 - yy, 34 - xx]).astype(np.float64)
    dist = np.linalg.norm(towards, axis=0)
    cosine = (flows * towards).sum(axis=0) / np.maximum(dist, 1e-9)
    ring = (ids > 0) & (dist > 2)
    assert cosine[ring].mean() > 0.99 and cosine[ring].min() > 0.85
    assert np.allclose(np.linalg.norm(flows, axis=0)[ring], 1, atol=1e-5)
    assert (flows[:, ids == 0] == 0).all()


def test_batched_targets_equal_per_image_targets(nuclei_pairs):
    ids = np.stack([m[:96, :96].astype(np.int64) for _, m in nuclei_pairs[:3]])
    prob, flows = flow_targets(ids)
    assert prob.shape == (3, 96, 96) and flows.shape == (3, 2, 96, 96)
    for b in range(3):  # the same ids repeat across images: objects stay apart per image
        np.testing.assert_allclose(flows[b], flow_field(ids[b]).numpy(), atol=1e-6)


def test_float32_diffusion_matches_float64(nuclei_pairs, monkeypatch):
    """The float32 heat (with its float64 redo for underflowing crops) gives the float64 flows:
    real nuclei, a long thin arc whose far end underflows float32, and a cut-off piece."""
    import napari_unet.heads.flow_targets as targets

    yy, xx = np.mgrid[:300, :300]
    r, angle = np.hypot(yy - 150, xx - 150), np.arctan2(yy - 150, xx - 150)
    arc = ((r > 100) & (r < 110) & (np.abs(angle) < 3.0)).astype(np.int32)  # about 620 px long
    ring = arc > 0
    arc[10:20, 10:20] = 1  # a piece of the same object cut off from its source: zero flow either way
    nuclei = nuclei_pairs[0][1][:128, :128].astype(np.int32)
    fast = [flow_field(ids).numpy() for ids in (nuclei, arc)]
    monkeypatch.setattr(targets, "UNDERFLOW", np.inf)  # every crop redone in float64
    exact = [flow_field(ids).numpy() for ids in (nuclei, arc)]
    for ids, f, e in zip((nuclei, arc), fast, exact):
        off = np.abs(f - e).max(axis=0) > 0.01  # at most a handful of source pixels (flow about 0)
        assert off.sum() <= max(3, ids.max() // 10), off.sum()
    assert (np.abs(fast[1]).sum(axis=0)[ring] > 0.99).mean() > 0.99  # the arc's far end still flows
    assert (fast[1][:, 10:20, 10:20] == 0).all()


def test_dynamics_on_ideal_flows_recover_real_nuclei(nuclei_pairs):
    crops = [relabel_sequential(m[:256, :256]).astype(np.int32) for _, m in nuclei_pairs]
    pairs = [(instances_from_flows(ideal_flow_maps(m)), m) for m in crops]
    scores = evaluate_instances(pairs)
    assert scores["ap50"] > 0.93, scores["ap50"]


def test_flows_segment_c_shapes_where_star_polygons_cannot():
    from stardist import edt_prob
    from stardist.geometry import star_dist

    ids = c_shapes()
    flow_labels = instances_from_flows(ideal_flow_maps(ids))
    classes = np.eye(3, dtype=np.float32)[instance_classes(ids)].transpose(2, 0, 1)
    star_maps = np.concatenate([classes, edt_prob(ids)[None], np.moveaxis(star_dist(ids, 32), -1, 0)])
    star_labels = instances_from_star(star_maps.astype(np.float32), 10, 0.5, 0.4)
    flow_scores, star_scores = evaluate_instances([(flow_labels, ids)]), evaluate_instances([(star_labels, ids)])
    assert flow_scores["ap75"] == 1.0 and flow_labels.max() == 4
    assert star_scores["ap75"] < 1.0  # a star polygon cannot follow the arc around its gap


def test_consistency_check_drops_a_mask_whose_flows_do_not_converge():
    yy, xx = np.mgrid[:96, :96]
    ids = np.zeros((96, 96), np.int32)
    ids[((yy - 30) ** 2 + (xx - 30) ** 2) <= 12 ** 2] = 1
    ids[((yy - 66) ** 2 + (xx - 66) ** 2) <= 12 ** 2] = 2
    maps = ideal_flow_maps(ids)
    assert flow_errors(ids, maps[4:])[1:].max() < 1e-6  # ideal flows: no error
    second = ids == 2
    maps[4][second], maps[5][second] = 0.0, 1.0  # object 2's flows all point right: it drifts to its edge
    assert instances_from_flows(maps, flow_threshold=0.0).max() == 2  # without the check both are kept
    labels = instances_from_flows(maps, flow_threshold=0.4)
    assert labels.max() == 1 and (labels[ids == 1] == 1).mean() > 0.95


def test_flow_model_trains_on_real_nuclei_and_roundtrips(small_pairs, tmp_path):
    cfg = TrainConfig(instance_head="flow", model=TINY, steps=150, time_limit=None, patch_size=128, batch_size=4,
                      validate_every=1e9, low_precision=False)
    bundle = drain(Trainer(small_pairs[:3], cfg, validation=small_pairs[3:]).run())
    assert set(bundle.postprocess) == {"prob_threshold", "flow_threshold"}
    results = [predict_image(bundle, im) for im, _ in small_pairs]
    assert results[0].probabilities.shape == (6, 128, 128)
    flows = results[0].probabilities[4:]
    assert -1 <= flows.min() and flows.max() <= 1
    scores = evaluate_instances([(labels_for(bundle, r.probabilities), m) for r, (_, m) in zip(results, small_pairs)])
    print(f"flow head, tiny net, 150 steps: AP@0.5 {scores['ap50']:.3f}")
    assert scores["ap50"] > 0.2, scores["ap50"]  # tiny net, 150 steps: objects found, far from done
    again = load_bundle(save_bundle(bundle, tmp_path / "flow"))
    assert again.config.instance_head == "flow" and again.postprocess == bundle.postprocess
    image = small_pairs[0][0]
    np.testing.assert_allclose(predict_image(again, image).probabilities, results[0].probabilities, atol=1e-4)


def test_streamed_flow_instances_are_seam_free(nuclei_pairs):
    from napari_unet.heads.flow import flows_blockwise

    ids = relabel_sequential(nuclei_pairs[0][1][:200, :240]).astype(np.int32)
    maps = ideal_flow_maps(ids)
    whole = instances_from_flows(maps)
    labels = np.zeros(ids.shape, np.uint32)
    n = drain(flows_blockwise(maps, labels, block=64, halo=48, min_size=10))
    assert n == len(np.unique(labels)) - 1 == whole.max()
    assert evaluate_instances([(labels, whole)])["ap50"] > 0.99  # the same objects as the whole image
    crossing = [g for g in np.unique(whole[:, 63:65]) if g]  # objects on the first vertical seam
    assert crossing
    for g in crossing:  # each keeps one id, not two halves
        assert len(np.unique(labels[whole == g])) == 1


def test_predict_large_streams_flow_instances(tmp_path, nuclei_pairs):
    import torch

    from napari_unet.config import PredictConfig
    from napari_unet.inference.large import predict_large
    from napari_unet.files.omezarr import open_ome_zarr
    from napari_unet.models.bundle import ModelBundle, build_network

    torch.manual_seed(0)
    cfg = TrainConfig(instance_head="flow", model=UNetConfig(depth=2, base_width=4))
    bundle = ModelBundle(build_network(cfg).eval(), cfg, {"postprocess": {"prob_threshold": 0.5, "flow_threshold": 0.4}})
    result = drain(predict_large(bundle, nuclei_pairs[2][0][:200, :250], tmp_path / "big.ome.zarr", PredictConfig(),
                                 probabilities=True, chunk=64, tile=64, halo=16))
    labels = np.asarray(open_ome_zarr(result.labels))
    assert labels.shape == (200, 250) and labels.max() == result.objects == len(np.unique(labels)) - 1
    assert np.asarray(open_ome_zarr(result.probabilities)).shape == (6, 200, 250)
    mc = drain(predict_large(bundle, nuclei_pairs[2][0][:200, :250], tmp_path / "mc.ome.zarr",
                             PredictConfig(mc_samples=2), chunk=64, tile=64, halo=16))
    maps = np.asarray(open_ome_zarr(mc.uncertainty))  # total, aleatoric, epistemic, shape (the flows' spread)
    assert maps.shape == (4, 200, 250) and np.isfinite(maps).all() and maps[3].max() > 0
