"""Streaming 3D models: volumes to OME-Zarr in 3D tiles, seam-free instances across blocks in z, y and x."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from helpers import drain, tiny_bundle
from scipy import ndimage as ndi

from napari_unet.cli import main
from napari_unet.config import VOLUME_HALO_CONTEXT, PredictConfig, TrainConfig, UNetConfig
from napari_unet.data.targets import instance_classes
from napari_unet.errors import UserError
from napari_unet.heads.blockwise import instances_blockwise
from napari_unet.inference.large import predict_large
from napari_unet.metrics import majority_cover
from napari_unet.heads.watershed import instances_from_probabilities
from napari_unet.inference.predict import network_forward, predict_image, predict_probabilities, tile_geometry
from napari_unet.files.io import write_image
from napari_unet.models.bundle import ModelBundle, build_network, save_bundle
from napari_unet.runtime.device import low_precision_dtype
from napari_unet.runtime.sizes import forward_bytes_per_voxel, volume_forward_budget, volume_tile
from napari_unet.files.omezarr import open_ome_zarr
from napari_unet.data.samples import ball_volume
from napari_unet.training.engine import Trainer

torch.set_num_threads(1)
Z_SCALE = 2.0
RULE = {"seed_threshold": 0.5, "split_height": 1.0}  # split markers: the physical distance map matters


class BallNet(torch.nn.Module):
    """A stand-in for a trained 3D model of bright balls: class logits from the 3x3x3 mean of the
    normalised image (background where dark, interior where bright, boundary in between).
    Its receptive radius (1 voxel) is far below the tiling halo of the 3D U-Net it poses as."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = UNetConfig(dims=3, depth=2, base_width=4)  # the tile geometry of a depth-2 3D U-Net
        self.register_buffer("kernel", torch.ones(1, 1, 3, 3, 3) / 27)
        self.gain = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.conv3d(x.float(), self.kernel, padding=1)
        return torch.cat([10 * (0.3 - s), 10 * (s - 0.55), 2 - 20 * (s - 0.42).abs()], 1) * self.gain


def _ball_bundle() -> ModelBundle:
    cfg = TrainConfig(model=UNetConfig(dims=3, depth=2, base_width=4), z_scale=Z_SCALE)
    return ModelBundle(BallNet().eval(), cfg, {"postprocess": dict(RULE)})


def _match(reference: np.ndarray, labels: np.ndarray) -> tuple[int, float, float]:
    """(matched objects, their lowest IoU, the largest share of a reference object's voxels that
    fall on a second label: > 0 where an object was split), matching each object of
    ``reference`` to the label covering most of it."""
    cover = majority_cover(reference, labels)
    matched = cover["iou"] > 0
    worst = float(cover["iou"][matched].min()) if matched.any() else 1.0
    return int(matched.sum()), worst, float((cover["second"] / cover["size"]).max(initial=0.0))


def _crossing(labels: np.ndarray, block: tuple[int, int, int]) -> list[int]:
    """Per axis, how many objects span a block seam along it."""
    counts = [0, 0, 0]
    for box in ndi.find_objects(labels):
        if box is not None:
            for a, (s, b) in enumerate(zip(box, block)):
                counts[a] += s.start // b != (s.stop - 1) // b
    return counts


def _volume_probabilities(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    onehot = np.eye(3, dtype=np.float32)[instance_classes(mask)]
    onehot = np.moveaxis(onehot, -1, 0)
    noise = np.random.default_rng(seed).normal(0, 0.05, onehot.shape).astype(np.float32)
    p = np.clip(np.stack([ndi.gaussian_filter(c, 1.0) for c in onehot]) + noise, 1e-3, None)
    return p / p.sum(0, keepdims=True)


def test_blockwise_3d_instances_match_the_whole_volume():
    """Synthetic anisotropic probabilities in 8 x 16 x 16 blocks: every object keeps one id
    across the seams of z, y and x, with the split at saddles measured in physical units."""
    _, mask = ball_volume(np.random.default_rng(1), shape=(24, 64, 64), n=20, z_scale=Z_SCALE)
    probs = _volume_probabilities(mask)
    spacing = (Z_SCALE, 1.0, 1.0)
    whole = instances_from_probabilities(probs, 10, spacing=spacing, **RULE)
    labels, scratch = np.zeros(mask.shape, np.uint32), np.zeros(mask.shape, np.uint32)
    block = (8, 16, 16)
    n = drain(instances_blockwise(probs, labels, scratch, block, 16, 10, spacing=spacing, **RULE))
    assert n == whole.max() == labels.max() >= 10
    assert instances_from_probabilities(probs, 10, **RULE).max() < n  # counted in planes, saddles merge objects
    assert set(np.unique(labels)) == set(range(n + 1))
    matched, worst, split = _match(whole, labels)
    assert matched == n and worst > 0.99 and split == 0.0
    assert min(_crossing(labels, block)) >= 3  # objects crossing seams along every axis keep one id


def test_streamed_volume_matches_whole_volume_prediction(tmp_path):
    """A (Z, Y, X) Zarr volume streamed in 16-voxel blocks (and 3D tiles) gives the instances of
    the whole-volume prediction: same objects (IoU matched), none split at a seam; the OME-Zarr
    outputs carry the voxel size."""
    bundle = _ball_bundle()
    image, _ = ball_volume(np.random.default_rng(0), shape=(32, 96, 96), n=20, z_scale=Z_SCALE)
    source = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=image.shape, chunks=(8, 32, 32),
                             dtype=np.float32, zarr_format=2)
    source[:] = image
    whole = predict_image(bundle, image, PredictConfig())
    cfg = PredictConfig(volume_tile_size=16, overlap=4)  # rows of 3D tiles along every axis
    result = drain(predict_large(bundle, source, tmp_path / "v.ome.zarr", cfg, probabilities=True, chunk=16, halo=16))
    labels = np.asarray(open_ome_zarr(result.labels))
    assert labels.shape == image.shape and result.shape == image.shape
    probs = np.asarray(open_ome_zarr(result.probabilities), np.float32)
    assert np.abs(probs - whole.probabilities).max() < 2e-3  # float16 storage
    n = int(whole.labels.max())
    assert result.objects == labels.max() == n >= 10
    matched, worst, split = _match(whole.labels, labels)
    assert matched == n and worst > 0.98 and split < 0.01
    assert min(_crossing(labels, (16, 16, 16))) >= 1
    attrs = json.loads((result.labels / ".zattrs").read_text())
    assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [Z_SCALE, 1.0, 1.0]
    attrs = json.loads((result.probabilities / ".zattrs").read_text())
    assert [a["name"] for a in attrs["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, Z_SCALE, 1.0, 1.0]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # scratch removed


def test_streamed_3d_unet_probabilities_equal_the_whole_volume(tmp_path):
    """A real 3D U-Net in 16-voxel tiles: the streamed maps equal the whole-volume ones."""
    bundle = tiny_bundle(dims=3)
    image, _ = ball_volume(np.random.default_rng(2), shape=(20, 40, 40), n=4)
    result = drain(predict_large(bundle, image, tmp_path / "u.ome.zarr", PredictConfig(volume_tile_size=16, overlap=4),
                                 probabilities=True, chunk=16))
    probs = np.asarray(open_ome_zarr(result.probabilities), np.float32)
    ref = predict_probabilities(bundle, image, PredictConfig())
    assert probs.shape == ref.shape == (3, 20, 40, 40) and np.abs(probs - ref).max() < 2e-3


def _default_3d_bundle() -> ModelBundle:
    """The default 3D network (depth 4, width 8: receptive radius 96 voxels) trained briefly on balls."""
    rng = np.random.default_rng(4)
    pairs = [ball_volume(rng, shape=(32, 64, 64), n=8, z_scale=Z_SCALE) for _ in range(3)]
    cfg = TrainConfig(model=UNetConfig(dims=3), z_scale=Z_SCALE, patch_size=(16, 48, 48), batch_size=2, steps=60,
                      time_limit=None, validation_fraction=0.34, validate_every=1e9, preview_every=0, seed=0)
    return drain(Trainer(pairs, cfg).run())


def test_3d_tiles_are_sized_by_memory_with_the_measured_halo():
    """The default 3D network's tiles read ``VOLUME_HALO_CONTEXT`` voxels (not its receptive radius)
    and are sized by the CPU budget (one rule for streamed and in-memory prediction); a tile input
    of that size runs within the budget; 2D networks keep the receptive-radius halo."""
    torch.manual_seed(0)
    net = build_network(TrainConfig(model=UNetConfig(dims=3))).eval()
    dtype = low_precision_dtype(torch.device("cpu"), None)
    per_voxel = forward_bytes_per_voxel(8, dtype is not None)
    big = (256, 1024, 1024)
    spec, _ = tile_geometry(net, PredictConfig(), big)
    assert spec.context == VOLUME_HALO_CONTEXT == 32
    # bf16 CPUs fit tiles of 96 or more in the budget; float32 ones (no native bf16) tiles of 64
    assert spec.tile == volume_tile(volume_forward_budget("cpu"), per_voxel, 32, 16, big) >= (96 if dtype else 64)
    assert tile_geometry(net, PredictConfig(volume_tile_size=48), big)[0].tile == 48
    assert tile_geometry(net, PredictConfig(volume_context=1000), big)[0].context == 96  # the receptive radius
    assert tile_geometry(net, PredictConfig(), (32, 96, 96))[0].tile >= 96  # the volume in one tile
    net2d = build_network(TrainConfig(model=UNetConfig())).eval()
    spec2d, _ = tile_geometry(net2d, PredictConfig())
    assert spec2d.context == 96 and spec2d.tile == 1024  # 2D: unchanged

    budget = 256 * 2**20  # a small budget, so the test stays quick: its tile's forward must fit it
    side = volume_tile(budget, per_voxel, 32, 16) + 64
    network_forward(net, np.zeros((1, 1, 16, 32, 32), np.float32), dtype)  # warm up
    x = np.random.default_rng(0).random((1, 1, side, side, side)).astype(np.float32)

    def kib(key: str) -> int:
        return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(key)))

    base = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark
    network_forward(net, x, dtype)
    peak = (kib("VmHWM") - base) * 1024
    assert peak <= budget and peak <= 1.1 * side**3 * per_voxel  # the per-voxel estimate holds


def test_streamed_volume_matches_whole_volume_at_the_default_halo(tmp_path):
    """A trained default 3D network streamed in tiles far smaller than the volume, each reading a
    32-voxel halo (a third of its receptive radius): the instances of the whole-volume prediction."""
    bundle = _default_3d_bundle()
    image, _ = ball_volume(np.random.default_rng(5), shape=(64, 96, 96), n=12, z_scale=Z_SCALE)
    whole = predict_image(bundle, image, PredictConfig())
    assert int(whole.labels.max()) >= 8
    assert tile_geometry(bundle.net, PredictConfig(), image.shape)[0].tile >= 96  # whole: one tile
    cfg = PredictConfig(volume_tile_size=48, overlap=16)  # 2 x 3 x 3 tiles: seams along every axis
    assert tile_geometry(bundle.net, cfg, image.shape)[0].context == 32  # not the receptive radius, 96
    result = drain(predict_large(bundle, image, tmp_path / "d.ome.zarr", cfg, probabilities=True, chunk=48))
    labels = np.asarray(open_ome_zarr(result.labels))
    probs = np.asarray(open_ome_zarr(result.probabilities), np.float32)
    diff = np.abs(probs - whole.probabilities)
    assert diff.mean() < 2e-3 and diff.max() < 0.1
    matched, worst, split = _match(whole.labels, labels)
    assert labels.max() == whole.labels.max() == matched and worst > 0.95 and split < 0.01


def test_bad_volumes_and_models_get_one_line_errors(tmp_path):
    volume = np.zeros((12, 40, 40), np.float32)
    with pytest.raises(UserError, match="needs a 3D model") as err:
        drain(predict_large(tiny_bundle(), volume, tmp_path / "a.ome.zarr"))
    assert "\n" not in str(err.value)
    for image, match in ((np.zeros((40, 40), np.float32), "3D model streams"),
                         (np.zeros((40, 40, 3), np.float32), "3D model needs"),
                         (np.zeros((2, 40, 40), np.float32), "at least 4 z-planes")):
        with pytest.raises(UserError, match=match) as err:
            drain(predict_large(tiny_bundle(dims=3), image, tmp_path / "b.ome.zarr"))
        assert "\n" not in str(err.value)


def test_cli_streams_a_zarr_volume_with_a_3d_model(tmp_path, capsys):
    """``napari-unet predict`` streams a Zarr volume given a 3D model (and a TIFF volume above the
    streaming threshold through the batch), with the z-scale in the outputs' metadata."""
    from dataclasses import replace

    from napari_unet.workflows.batch import BatchConfig, collect_inputs, predict_batch

    bundle = tiny_bundle(dims=3)
    bundle = ModelBundle(bundle.net, replace(bundle.config, z_scale=Z_SCALE))
    save_bundle(bundle, tmp_path / "model")
    image, _ = ball_volume(np.random.default_rng(3), shape=(12, 48, 48), n=4, z_scale=Z_SCALE)
    source = zarr.open_array(str(tmp_path / "vol.zarr"), mode="w", shape=image.shape, chunks=(4, 48, 48),
                             dtype=np.float32, zarr_format=2)
    source[:] = image
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "vol.zarr"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    labels = tmp_path / "o" / "vol.ome.zarr"
    assert np.asarray(open_ome_zarr(labels)).shape == image.shape
    scale = json.loads((labels / ".zattrs").read_text())["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale[0]["scale"] == [Z_SCALE, 1.0, 1.0]

    write_image(tmp_path / "vol.tif", image)
    rows = drain(predict_batch(str(tmp_path / "model"), collect_inputs([tmp_path / "vol.tif"]), tmp_path / "t",
                               PredictConfig(), BatchConfig(large_pixels=1000)))
    assert rows[0]["status"] == "ok" and rows[0]["output"].endswith("vol.ome.zarr")
    assert np.asarray(open_ome_zarr(tmp_path / "t" / "vol.ome.zarr")).shape == image.shape


def test_a_model_at_a_volume_scale_streams_like_its_in_memory_prediction(tmp_path):
    """A model that works on volumes scaled x0.5 along y/x (planes kept, voxels 2 deep become cubes):
    the streamed labels and probabilities come back on the volume's grid and match the in-memory
    prediction (which scales the whole volume); the metadata carries the volume's z-scale."""
    from dataclasses import replace

    bundle = _ball_bundle()
    bundle = ModelBundle(bundle.net, replace(bundle.config, volume_scale=(1.0, 0.5, 0.5), z_scale=1.0), bundle.meta)
    image, _ = ball_volume(np.random.default_rng(0), shape=(24, 128, 128), n=24, z_scale=Z_SCALE)
    image = ndi.zoom(image, (1, 2, 2), order=1)[:, :150, :140]  # balls twice as wide in y/x
    whole = predict_image(bundle, image, PredictConfig())
    assert whole.labels.shape == image.shape and whole.labels.max() >= 5
    cfg = PredictConfig(volume_tile_size=16, overlap=4)
    result = drain(predict_large(bundle, image, tmp_path / "v.ome.zarr", cfg, probabilities=True, chunk=32, halo=16))
    labels = np.asarray(open_ome_zarr(result.labels))
    assert labels.shape == image.shape == result.shape
    probs = np.asarray(open_ome_zarr(result.probabilities), np.float32)
    assert probs.shape[1:] == image.shape and np.abs(probs - whole.probabilities).max() < 5e-3
    n = int(whole.labels.max())
    assert result.objects == labels.max() == n
    matched, worst, split = _match(whole.labels, labels)
    assert matched == n and worst > 0.98 and split < 0.01
    attrs = json.loads((result.labels / ".zattrs").read_text())
    assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [Z_SCALE, 1.0, 1.0]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # scratch removed
