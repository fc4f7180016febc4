"""Streaming prediction to Zarr and seam-free block-wise instance labelling."""

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.data.targets import instance_classes
from napari_unet.events import Finished, Progress
from napari_unet.files.omezarr import open_ome_zarr
from napari_unet.heads.blockwise import instances_blockwise, merge_seeds
from napari_unet.heads.watershed import instances_from_probabilities
from napari_unet.inference.large import predict_large
from napari_unet.inference.predict import predict_probabilities
from napari_unet.models.bundle import ModelBundle, build_network

torch.set_num_threads(2)


def _probabilities_like(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Smooth, noisy (3, H, W) probabilities whose argmax is the mask's instance classes."""
    onehot = np.eye(3, dtype=np.float32)[instance_classes(mask)].transpose(2, 0, 1)
    noise = np.random.default_rng(seed).normal(0, 0.05, onehot.shape).astype(np.float32)
    p = np.stack([ndi.gaussian_filter(c, 1.0) for c in onehot]) + noise
    p = np.clip(p, 1e-3, None)
    return p / p.sum(0, keepdims=True)


def _same_partition(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of foreground pixels whose label pair is the majority pairing of their object."""
    fg = (a > 0) | (b > 0)
    pairs = a[fg].astype(np.int64) * (int(b.max()) + 1) + b[fg]
    values, counts = np.unique(pairs, return_counts=True)
    best = {}
    for v, c in zip(values, counts):
        best[v // (int(b.max()) + 1)] = max(best.get(v // (int(b.max()) + 1), 0), c)
    return sum(best.values()) / fg.sum()


def test_blockwise_instances_match_whole_image(nuclei_pairs):
    mask = nuclei_pairs[2][1]  # real nuclei, many crossing 64-px block seams
    probs = _probabilities_like(mask)
    whole = instances_from_probabilities(probs, min_size=10)
    labels = np.zeros(mask.shape, np.uint32)
    scratch = np.zeros(mask.shape, np.uint32)
    run = instances_blockwise(probs, labels, scratch, block=64, halo=32, min_size=10)
    events = []
    try:
        while True:
            events.append(next(run))
    except StopIteration as stop:
        n = stop.value
    assert all(isinstance(e, Progress) for e in events) and events
    assert n == whole.max() == labels.max() > 20
    assert set(np.unique(labels)) == set(range(n + 1))  # consecutive ids
    assert _same_partition(whole, labels) > 0.999 and _same_partition(labels, whole) > 0.999
    crossing = [i for i in range(1, n + 1) if np.ptp(np.argwhere(labels == i)[:, 0] // 64) > 0]
    assert len(crossing) > 5  # objects spanning block seams keep one id


def test_blockwise_honours_seed_and_foreground_thresholds(nuclei_pairs):
    probs = _probabilities_like(nuclei_pairs[2][1], seed=1)
    whole = instances_from_probabilities(probs, 10, fg_threshold=0.6, seed_threshold=0.8)
    labels, scratch = np.zeros(whole.shape, np.uint32), np.zeros(whole.shape, np.uint32)
    run = instances_blockwise(probs, labels, scratch, 64, 32, 10, fg_threshold=0.6, seed_threshold=0.8)
    for _ in run:
        pass
    assert labels.max() == whole.max() and _same_partition(whole, labels) > 0.999


def test_blockwise_split_markers_match_whole_image(nuclei_pairs):
    mask = nuclei_pairs[2][1]
    probs = _probabilities_like(mask, seed=2)
    probs[2] *= 0.3  # a faint boundary class: interiors of touching nuclei join
    probs /= probs.sum(0, keepdims=True)
    joined = instances_from_probabilities(probs, 10, seed_threshold=0.5)
    whole = instances_from_probabilities(probs, 10, seed_threshold=0.5, split_height=1.0)
    assert whole.max() > joined.max()  # splitting recovers objects the joined interiors merged
    labels, scratch = np.zeros(whole.shape, np.uint32), np.zeros(whole.shape, np.uint32)
    # markers are regional (h-maxima): the halo must cover joined interiors, as the default 64 px does
    for _ in instances_blockwise(probs, labels, scratch, 64, 64, 10, seed_threshold=0.5, split_height=1.0):
        pass
    assert labels.max() == whole.max() and _same_partition(whole, labels) > 0.999


def test_merge_seeds_unions_across_seams_and_drops_small():
    counts = np.array([0, 5, 3, 1, 4])
    pairs = [np.array([[1, 2], [2, 4], [0, 3]])]
    final = merge_seeds(pairs, counts, min_size=2)
    assert final[0] == 0 and final[1] == final[2] == final[4] == 1 and final[3] == 0


def _bundle(task: str = "instances") -> ModelBundle:
    torch.manual_seed(0)
    cfg = TrainConfig(task=task, model=UNetConfig(depth=2, base_width=4))
    return ModelBundle(build_network(cfg).eval(), cfg)


def test_predict_large_streams_to_ome_zarr(tmp_path, nuclei_pairs):
    bundle = _bundle()
    image = nuclei_pairs[2][0][:200, :250]  # RGB in memory, predicted in 64-px tiles / chunks
    out = tmp_path / "big.ome.zarr"
    run = predict_large(bundle, image, out, PredictConfig(), probabilities=True, chunk=64, tile=64, halo=16)
    events = []
    try:
        while True:
            events.append(next(run))
    except StopIteration as stop:
        result = stop.value
    tiles = [e for e in events if isinstance(e, Progress) and e.message == "tiles"]
    assert tiles[-1].done == tiles[-1].total >= 12 and isinstance(events[-1], Finished)
    probs = np.asarray(open_ome_zarr(result.probabilities), dtype=np.float32)
    ref = predict_probabilities(bundle, image, PredictConfig(tile_size=2048))
    assert probs.shape == ref.shape and np.abs(probs - ref).max() < 2e-3  # float16 storage
    labels = np.asarray(open_ome_zarr(out))
    assert labels.shape == image.shape[:2] and labels.max() == result.objects
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # scratch removed
