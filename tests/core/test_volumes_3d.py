"""3D rules: anisotropic patches, elastic warps and border weights; what a 3D model refuses."""

import numpy as np
import pytest
import torch
from helpers import drain, tiny_bundle

from napari_unet.arrays.layout import array_layout, is_volume
from napari_unet.arrays.normalize import to_channels_first
from napari_unet.arrays.volumes import annotated_z_range, patch_shape, preview_slab, z_scale_of
from napari_unet.config import AugmentConfig, TrainConfig, UNetConfig
from napari_unet.data.augment import augment_batch
from napari_unet.data.dataset import prepare_pairs
from napari_unet.data.samples import ball_volume
from napari_unet.errors import UserError
from napari_unet.inference.predict import predict_image
from napari_unet.training.engine import Trainer

VOLUME = UNetConfig(dims=3, depth=2, base_width=4)


def test_patches_hold_fewer_planes_when_voxels_are_deep():
    assert patch_shape(TrainConfig(patch_size=32)) == (32, 32)
    assert patch_shape(TrainConfig(model=VOLUME, patch_size=32)) == (32, 32, 32)
    assert patch_shape(TrainConfig(model=VOLUME, patch_size=32, z_scale=2.0)) == (16, 32, 32)
    assert patch_shape(TrainConfig(model=VOLUME, patch_size=32, z_scale=100.0))[0] == 4  # never a sliver


def test_elastic_displacements_are_physical_across_deep_planes():
    shape = (16, 32, 32)
    ramps = torch.from_numpy(np.indices(shape).astype(np.float32))  # (3, D, H, W): z, y, x coordinates
    images = ramps[None].repeat(8, 1, 1, 1, 1)  # (8, 3, D, H, W)
    labels = torch.zeros((8, *shape), dtype=torch.int64)
    cfg = AugmentConfig(flip=False, rot90=False, zoom=1.0, intensity_scale=0, intensity_shift=0, gamma=0, noise=0,
                        elastic_sigma=2.0)
    moved = {}
    for z_scale in (1.0, 4.0):
        out, _, _ = augment_batch(images, labels, None, cfg, torch.Generator().manual_seed(0), (z_scale, 1.0, 1.0))
        inner = (slice(None), slice(None), slice(4, -4), slice(8, -8), slice(8, -8))  # away from mirrored borders
        shift = (out - images)[inner].abs().mean(dim=(0, 2, 3, 4))  # (3,) mean displacement per axis, pixels
        moved[z_scale] = (shift[0] / shift[1]).item()
    assert 0.7 < moved[1.0] < 1.4  # isotropic: z moves like y
    assert 0.15 < moved[4.0] < 0.35  # 4x deeper voxels: a quarter of the pixels along z


def test_border_weights_measure_physical_distances():
    mask = np.zeros((9, 20, 20), np.uint16)
    mask[1:4, 5:15, 5:15], mask[6:9, 5:15, 5:15] = 1, 2  # two slabs two planes apart along z
    image = mask.astype(np.float32) + 0.1
    weight = {s: prepare_pairs([(image, mask)], TrainConfig(model=VOLUME, z_scale=s))[0].weights[4, 10, 10]
              for s in (1.0, 3.0)}
    assert weight[3.0] < weight[1.0] - 1.0  # the gap is 3x wider in tissue, so its border weight is lower


def test_star_head_and_bad_z_scale_are_refused_for_volumes():
    pair = ball_volume(np.random.default_rng(0), shape=(8, 24, 24), n=2)
    with pytest.raises(UserError, match="2D only"):
        drain(Trainer([pair], TrainConfig(model=VOLUME, instance_head="star", steps=1)).run())
    with pytest.raises(UserError, match="z-scale"):
        drain(Trainer([pair], TrainConfig(model=VOLUME, z_scale=0.0, steps=1)).run())


def test_a_3d_model_refuses_2d_images_and_reads_zcyx():
    bundle = tiny_bundle(dims=3)
    for image in (np.zeros((32, 32), np.float32), np.zeros((32, 32, 3), np.float32)):
        with pytest.raises(UserError, match="3D model needs"):
            predict_image(bundle, image)
    assert to_channels_first(np.zeros((10, 2, 16, 18)), 2, dims=3).shape == (2, 10, 16, 18)


def test_volume_helpers():
    assert is_volume((10, 32, 32)) and is_volume((10, 32, 32, 2)) and not is_volume((32, 32, 3))
    assert not is_volume((3, 32, 32)) and not is_volume((32, 32, 3), rgb=True)
    assert z_scale_of((2.0, 0.5, 0.5)) == 4.0 and z_scale_of((1.0, 1.0)) == 1.0
    assert array_layout((10, 2, 16, 18), False, 2, dims=3).spatial_axes == (0, 2, 3)  # (Z, C, Y, X)
    assert array_layout((5, 32, 32, 3), rgb=True).spatial_axes == (1, 2)  # a stack of colour images
    assert array_layout((10, 32, 32)).spatial_axes == (1, 2)  # a stack of grey images
    labels = np.zeros((10, 4, 4), np.uint8)
    labels[3, 1, 1], labels[6, 2, 2] = 1, 2
    assert annotated_z_range(labels) == slice(3, 7)
    with pytest.raises(UserError):
        annotated_z_range(np.zeros((4, 4, 4), np.uint8))
    slab, z = preview_slab(np.arange(20)[:, None], 2, half=3)
    assert slab[:, 0].tolist() == [0, 1, 2, 3, 4, 5] and z == 2


def test_bf16_3d_convolutions_of_two_planes_get_true_weight_gradients():
    """The CPU's bf16 kernel gets the weight gradient of a 3x3x3 convolution of a 2-plane input
    wrong (garbage, inf or NaN); ``models.blocks.Conv3d`` computes that case in float32."""
    from napari_unet.models.blocks import conv

    torch.manual_seed(0)
    layer = conv(3, 32, 64, 3, padding=1, bias=False)
    x = torch.randn(1, 32, 2, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    low = layer.weight.grad.clone()
    layer.zero_grad()
    layer(x).sum().backward()
    assert torch.allclose(low, layer.weight.grad, rtol=0.05, atol=0.05 * float(layer.weight.grad.abs().max()))


def test_per_axis_patch_sizes():
    assert patch_shape(TrainConfig(model=VOLUME, patch_size=(8, 32, 48))) == (8, 32, 48)
    assert patch_shape(TrainConfig(patch_size=(32, 48))) == (32, 48)
    with pytest.raises(UserError, match="3 patch extents"):
        patch_shape(TrainConfig(model=VOLUME, patch_size=(32, 32)))


def test_nuclei_stacked_in_an_anisotropic_volume_split_at_physical_saddles():
    """Two round nuclei (radius 9 pixel widths) on top of each other in planes 3 widths deep, their
    interiors joined by a neck: counted in planes, the distance map peaks at the neck (one seed);
    in pixel widths, at the two centres. A 3D model's labels use its z-scale."""
    from dataclasses import replace

    from napari_unet.heads.watershed import instances_from_probabilities
    from napari_unet.inference.labels import labels_for
    from napari_unet.models.bundle import ModelBundle

    z_scale = 3.0
    zz, yy, xx = np.indices((16, 32, 32)).astype(float)
    ball = lambda cz: (((zz - cz) * z_scale) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2) < 81  # noqa: E731
    interior = ball(5) | ball(10)  # centres 15 widths apart
    probs = np.stack([1.0 - interior, 0.9 * interior, 0.1 * interior]).astype(np.float32)
    rule = {"seed_threshold": 0.5, "split_height": 1.0}
    assert instances_from_probabilities(probs, **rule).max() == 1
    assert instances_from_probabilities(probs, spacing=(z_scale, 1.0, 1.0), **rule).max() == 2
    bundle = tiny_bundle(dims=3)
    bundle = ModelBundle(bundle.net, replace(bundle.config, z_scale=z_scale), {"postprocess": rule})
    assert labels_for(bundle, probs).max() == 2
