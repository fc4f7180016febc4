"""Tests of napari_unet.data.augment (batched torch augmentation)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unet.config import AugmentConfig
from napari_unet.data.augment import (
    _dihedral_matrices,
    augment_batch,
    elastic_deform,
    elastic_grid,
    random_displacement,
)

NO_INTENSITY = dict(intensity_scale=0.0, intensity_shift=0.0, gamma=0.0, noise=0.0)
GEOMETRY_ONLY = AugmentConfig(elastic_sigma=8.0, **NO_INTENSITY)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blob_labels(b: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """(B, *S) int64 labels: large blobs with values 0..4 and an ignore (-1) region."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(b):
        seeds = rng.random(shape) < 6.0 / np.prod(shape)  # about 6 cells
        seeds.flat[0] = True
        markers, n = ndi.label(seeds)
        _, idx = ndi.distance_transform_edt(markers == 0, return_indices=True)
        regions = markers[tuple(idx)]  # Voronoi cells
        values = rng.integers(0, 5, n + 1)
        lab = values[regions]
        lab[(slice(None),) * (len(shape) - 1) + (slice(0, shape[-1] // 6),)] = -1
        out.append(lab)
    return torch.from_numpy(np.stack(out)).long()


def _dihedral_2d(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of x over its last two dims."""
    outs = []
    for flip in (False, True):
        y = torch.flip(x, (-1,)) if flip else x
        outs += [torch.rot90(y, k, dims=(-2, -1)) for k in range(4)]
    return outs


@pytest.mark.parametrize("shape", [(48, 48), (40, 56), (12, 24, 24)])
@pytest.mark.parametrize("with_weights", [True, False])
def test_shapes_and_dtypes(shape: tuple[int, ...], with_weights: bool) -> None:
    image = torch.rand((3, 2) + shape)
    labels = _blob_labels(3, shape)
    weights = torch.rand((3,) + shape) if with_weights else None
    img, lab, w = augment_batch(image, labels, weights, AugmentConfig(), _gen())
    assert img.shape == image.shape and img.dtype == image.dtype
    assert lab.shape == labels.shape and lab.dtype == torch.int64
    if with_weights:
        assert w is not None and w.shape == weights.shape and w.dtype == weights.dtype
    else:
        assert w is None


@pytest.mark.parametrize("shape", [(64, 64), (10, 32, 32)])
def test_label_values_preserved(shape: tuple[int, ...]) -> None:
    labels = _blob_labels(4, shape)
    image = torch.rand((4, 1) + shape)
    cfg = AugmentConfig(elastic_sigma=15.0, elastic_grid=4)
    _, lab, _ = augment_batch(image, labels, None, cfg, _gen(3))
    assert set(lab.unique().tolist()) <= set(labels.unique().tolist())
    assert (lab == -1).any()
    assert not torch.equal(lab, labels)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (12, 32, 32)])
@pytest.mark.parametrize("sigma", [3.0, 12.0])
def test_image_and_labels_stay_aligned(shape: tuple[int, ...], sigma: float) -> None:
    """Image channels = coordinate ramps, labels = pixel ids: both must decode to one place.

    Bilinear sampling of a linear ramp returns the sampling position exactly (also after
    reflection at the border), nearest sampling of the id image returns the rounded
    position, so the two may differ by at most half a pixel per axis everywhere.
    """
    b, nd = 3, len(shape)
    ramps = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    image = ramps.expand((b,) + ramps.shape).clone()  # (B, nd, *S)
    ids = torch.arange(int(np.prod(shape))).reshape(shape) - 1  # -1 .. N-2
    labels = ids.expand((b,) + shape).clone()  # (B, *S)
    weights = image[:, -1].clone()  # (B, *S) = last-axis ramp
    cfg = dataclasses.replace(GEOMETRY_ONLY, elastic_sigma=sigma)
    img, lab, w = augment_batch(image, labels, weights, cfg, _gen(int(sigma)))
    assert w is not None and not torch.equal(lab, labels)
    decoded = torch.stack(torch.unravel_index(lab + 1, shape), dim=1).float()  # (B, nd, *S)
    assert (img - decoded).abs().max() <= 0.5 + 1e-3
    assert (img - image).abs().max() > 1.0  # it did move
    assert torch.allclose(w, img[:, -1], atol=1e-6)  # weights follow the same grid


def test_deterministic_with_generator() -> None:
    image, labels, weights = torch.rand(2, 1, 40, 40), _blob_labels(2, (40, 40)), torch.rand(2, 40, 40)
    a = augment_batch(image, labels, weights, AugmentConfig(), _gen(7))
    b = augment_batch(image, labels, weights, AugmentConfig(), _gen(7))
    c = augment_batch(image, labels, weights, AugmentConfig(), _gen(8))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


def test_identity_when_disabled() -> None:
    image, labels, weights = torch.rand(3, 2, 32, 32), _blob_labels(3, (32, 32)), torch.rand(3, 32, 32)
    for cfg in (
        AugmentConfig(elastic_sigma=0.0, flip=False, rot90=False, zoom=1.0, **NO_INTENSITY),
        AugmentConfig(elastic=False, flip=False, rot90=False, zoom=1.0, **NO_INTENSITY),
        AugmentConfig(probability=0.0),
    ):
        img, lab, w = augment_batch(image, labels, weights, cfg, _gen())
        assert torch.equal(img, image) and torch.equal(lab, labels) and torch.equal(w, weights)


def _unique_labels(b: int, side: int) -> torch.Tensor:
    """(B, side, side) int64 with all-distinct values (so any flip/rotation is identifiable)."""
    return torch.arange(b * side * side).reshape(b, side, side) - 1


def test_flips_are_exact_without_elastic() -> None:
    image = torch.rand(8, 1, 24, 24)
    labels = _unique_labels(8, 24)
    cfg = AugmentConfig(elastic=False, zoom=1.0, **NO_INTENSITY)
    img, lab, w = augment_batch(image, labels, labels.float(), cfg, _gen(1))
    assert w is not None
    seen = set()
    for i in range(8):
        cands = _dihedral_2d(labels[i])
        k = next(j for j, c in enumerate(cands) if torch.equal(c, lab[i]))
        seen.add(k)
        assert torch.equal(_dihedral_2d(image[i])[k], img[i])
        assert torch.equal(w[i], lab[i].float())
    assert len(seen) > 1


def test_flips_folded_into_elastic_grid() -> None:
    """With a negligible displacement the combined grid is a pure dihedral transform."""
    image = torch.rand(8, 1, 24, 24)
    labels = _unique_labels(8, 24)
    cfg = AugmentConfig(zoom=1.0, elastic_sigma=1e-4, **NO_INTENSITY)
    img, lab, _ = augment_batch(image, labels, None, cfg, _gen(2))
    seen = set()
    for i in range(8):
        hits = [j for j, c in enumerate(_dihedral_2d(image[i])) if torch.allclose(c, img[i], atol=1e-3)]
        assert hits, "not a flip/rotation"
        seen.add(hits[0])
        assert torch.equal(_dihedral_2d(labels[i])[hits[0]], lab[i])
    assert len(seen) > 1


def test_non_square_skips_rot90() -> None:
    image = torch.rand(6, 1, 16, 32)
    labels = _blob_labels(6, (16, 32))
    cfg = AugmentConfig(elastic=False, zoom=1.0, **NO_INTENSITY)
    img, lab, _ = augment_batch(image, labels, None, cfg, _gen(4))
    for i in range(6):
        cands = [labels[i], labels[i].flip(-1), labels[i].flip(-2), labels[i].flip(-1, -2)]
        assert any(torch.equal(c, lab[i]) for c in cands)


def test_probability_selects_samples() -> None:
    image, labels = torch.rand(16, 1, 24, 24), _blob_labels(16, (24, 24))
    img, lab, _ = augment_batch(image, labels, None, AugmentConfig(probability=0.5), _gen(0))
    same = [torch.equal(img[i], image[i]) and torch.equal(lab[i], labels[i]) for i in range(16)]
    assert 0 < sum(same) < 16


def test_intensity_only_touches_image() -> None:
    image, labels, weights = torch.rand(4, 1, 32, 32), _blob_labels(4, (32, 32)), torch.rand(4, 32, 32)
    cfg = AugmentConfig(zoom=1.0, elastic=False, flip=False, rot90=False)
    img, lab, w = augment_batch(image, labels, weights, cfg, _gen())
    assert torch.equal(lab, labels) and torch.equal(w, weights)
    assert not torch.allclose(img, image) and torch.isfinite(img).all()
    gamma_only = AugmentConfig(zoom=1.0, elastic=False, flip=False, rot90=False, gamma=0.5, intensity_scale=0.0,
                               intensity_shift=0.0, noise=0.0)
    img, _, _ = augment_batch(image, labels, None, gamma_only, _gen())
    lo, hi = image.amin((1, 2, 3)), image.amax((1, 2, 3))
    assert (img.amin((1, 2, 3)) >= lo - 1e-6).all() and (img.amax((1, 2, 3)) <= hi + 1e-6).all()


def test_elastic_deform_standalone() -> None:
    image = torch.rand(2, 1, 32, 32)
    labels = _blob_labels(2, (32, 32))
    img, lab, w = elastic_deform(image, labels, None, grid=3, sigma=5.0, generator=_gen())
    assert img.shape == image.shape and lab is not None and w is None
    assert set(lab.unique().tolist()) <= set(labels.unique().tolist())
    disp = random_displacement(2, (32, 48), 3, 5.0, _gen())
    assert disp.shape == (2, 2, 32, 48)
    # corners of the dense field are the corner control points (corner-aligned grid)
    coarse = torch.randn((2, 2, 3, 3), generator=_gen()) * 5.0
    assert torch.allclose(disp[..., 0, 0], coarse[..., 0, 0], atol=1e-5)
    assert torch.allclose(disp[..., -1, -1], coarse[..., -1, -1], atol=1e-5)


def test_config_fields_used() -> None:
    """Every AugmentConfig field name is the one this module reads."""
    names = {f.name for f in dataclasses.fields(AugmentConfig)}
    assert {"elastic", "elastic_grid", "elastic_sigma", "flip", "rot90", "zoom", "zoom_3d", "intensity_scale",
            "intensity_shift", "gamma", "noise", "probability"} == names


@pytest.mark.parametrize("shape", [(20, 28), (6, 10, 14)])
def test_elastic_grid_matches_dense_construction(shape: tuple[int, ...]) -> None:
    """The one-matmul grid equals transform @ identity + normalised dense displacement."""
    b, nd = 4, len(shape)
    disp = random_displacement(b, shape, 3, 4.0, _gen(9))  # (B, nd, *S) px, axis order
    coarse = torch.randn((b, nd) + (3,) * nd, generator=_gen(9)) * 4.0
    flips = torch.rand(b, nd, generator=_gen(1)) < 0.5
    k = torch.arange(b) % 4 if shape[-1] == shape[-2] else torch.zeros(b, dtype=torch.long)
    mat = _dihedral_matrices(flips, k)  # (B, nd, nd)
    axes = [torch.linspace(-1, 1, n) for n in shape]
    ident = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)  # (*S, nd) x-first
    scale = torch.tensor([2.0 / (n - 1) for n in shape[::-1]])
    expected = torch.einsum("bij,...j->b...i", mat, ident) + torch.movedim(disp.flip(1), 1, -1) * scale
    assert torch.allclose(elastic_grid(coarse, shape, mat), expected, atol=1e-5)
    assert torch.allclose(elastic_grid(coarse * 0, shape), ident.expand_as(expected), atol=1e-6)


def test_bfloat16_image_uses_float32_geometry() -> None:
    image, labels = torch.rand(2, 1, 48, 48), _blob_labels(2, (48, 48))
    a = augment_batch(image, labels, None, AugmentConfig(), _gen(11))
    b = augment_batch(image.bfloat16(), labels, None, AugmentConfig(), _gen(11))
    assert b[0].dtype == torch.bfloat16 and torch.equal(a[1], b[1])
    assert (a[0] - b[0].float()).abs().max() < 0.05


def test_zoom_magnifies_and_shrinks_objects_within_its_range() -> None:
    """A disc of radius 8 comes out between half and twice its size; labels stay copies; the image follows."""
    yy, xx = np.mgrid[:96, :96]
    disc = torch.from_numpy((((yy - 48) ** 2 + (xx - 48) ** 2) < 64).astype(np.int64)).expand(64, 96, 96)
    image = disc[:, None].float()
    cfg = AugmentConfig(elastic=False, flip=False, rot90=False, zoom=2.0, **NO_INTENSITY)
    out_img, out_lab, _ = augment_batch(image, disc.clone(), None, cfg, _gen(3))
    scale = (out_lab.sum(dim=(1, 2)).float() / disc[0].sum()).sqrt()  # (B,) linear magnification
    assert set(out_lab.unique().tolist()) <= {0, 1}
    assert 0.45 < scale.min() < 0.7 and 1.4 < scale.max() < 2.1
    assert ((out_img[:, 0] > 0.5) == (out_lab == 1)).float().mean() > 0.99
    assert torch.equal(augment_batch(image, disc.clone(), None, dataclasses.replace(cfg, zoom=1.0), _gen(3))[1], disc)


def test_3d_patches_zoom_by_their_own_factor() -> None:
    """``zoom`` is for 2D batches; 3D batches follow ``zoom_3d`` (off by default)."""
    zz, yy, xx = np.mgrid[:16, :32, :32]
    ball = torch.from_numpy((((zz - 8) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2) < 25).astype(np.int64)).expand(8, 16, 32, 32)
    cfg = AugmentConfig(elastic=False, flip=False, rot90=False, zoom=2.0, **NO_INTENSITY)
    assert cfg.zoom_3d == 1.0
    assert torch.equal(augment_batch(ball[:, None].float(), ball.clone(), None, cfg, _gen(3))[1], ball)
    zoomed = augment_batch(ball[:, None].float(), ball.clone(), None, dataclasses.replace(cfg, zoom_3d=2.0), _gen(3))[1]
    sizes = zoomed.sum(dim=(1, 2, 3)).float() / ball[0].sum()
    assert sizes.min() < 0.6 and sizes.max() > 1.7
