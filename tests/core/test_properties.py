"""Property-based tests (hypothesis): tiling, the weight map, augmentation and instance post-processing."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from napari_unet.config import AugmentConfig
from napari_unet.data.augment import augment_batch
from napari_unet.data.weights import border_weight_map, border_weight_map_bruteforce, class_weight_map
from napari_unet.heads.watershed import instances_from_probabilities
from napari_unet.inference.tiling import blend_window, predict_tiled

FAST = settings(max_examples=25, deadline=None)
torch.set_num_threads(1)


def _pointwise(batch: np.ndarray) -> np.ndarray:
    """(B, C, h, w) -> (B, 2, h, w): a per-pixel function, so tiles cannot change it."""
    x = batch.sum(axis=1)
    return np.stack([np.sin(x), x * x], axis=1)


def _box3(batch: np.ndarray) -> np.ndarray:
    """(B, 1, h, w) -> (B, 1, h, w): 3x3 mean with zero padding (a one-pixel receptive radius)."""
    return np.stack([ndi.uniform_filter(b[0], 3, mode="constant")[None] for b in batch])


@FAST
@given(h=st.integers(1, 70), w=st.integers(1, 70), tile=st.sampled_from([8, 16, 32]),
       overlap=st.integers(0, 8), margin=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_tiled_equals_whole_for_a_pointwise_function(h, w, tile, overlap, margin, seed):
    image = np.random.default_rng(seed).normal(size=(1, h, w)).astype(np.float32)  # (C, H, W)

    def valid_fn(batch):  # a valid network consumes ``margin`` pixels per side
        return _pointwise(batch[:, :, margin:batch.shape[2] - margin, margin:batch.shape[3] - margin])

    tiled = predict_tiled(valid_fn, image, 2, tile, overlap, margin=margin)
    assert tiled.shape == (2, h, w)
    np.testing.assert_allclose(tiled, _pointwise(image[None])[0], atol=1e-5)


@FAST
@given(h=st.integers(1, 60), w=st.integers(1, 60), tile=st.sampled_from([8, 16]), overlap=st.integers(0, 6),
       seed=st.integers(0, 2**16))
def test_tiled_equals_whole_for_a_neighbourhood_function_with_a_halo(h, w, tile, overlap, seed):
    image = np.random.default_rng(seed).normal(size=(1, h, w)).astype(np.float32)
    tiled = predict_tiled(_box3, image, 1, tile, overlap, context=1)
    np.testing.assert_allclose(tiled, _box3(image[None])[0], atol=1e-5)


@FAST
@given(h=st.integers(1, 70), w=st.integers(1, 70), tile=st.sampled_from([8, 16, 32]), overlap=st.integers(0, 12))
def test_blend_weights_are_positive_and_normalise_to_one(h, w, tile, overlap):
    window = blend_window((min(tile, h), min(tile, w)), overlap)
    assert (window > 0).all() and (window <= 1).all()
    ones = predict_tiled(lambda b: np.ones((b.shape[0], 1, *b.shape[2:]), np.float32),
                         np.zeros((1, h, w), np.float32), 1, tile, overlap)
    np.testing.assert_allclose(ones, 1.0, atol=1e-6)  # the blend weights sum to 1 everywhere


@st.composite
def instance_images(draw, max_side: int = 14, max_objects: int = 4) -> np.ndarray:
    """Small (H, W) instance images of rectangles (possibly overlapping, touching or empty)."""
    h, w = draw(st.integers(3, max_side)), draw(st.integers(3, max_side))
    img = np.zeros((h, w), np.int32)
    for i in range(draw(st.integers(0, max_objects))):
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        img[y:y + draw(st.integers(1, 5)), x:x + draw(st.integers(1, 5))] = i + 1
    return img


@FAST
@given(inst=instance_images(), w0=st.floats(0.5, 20), sigma=st.floats(1, 8))
def test_weight_map_matches_brute_force_and_is_at_least_wc(inst, w0, sigma):
    fast = border_weight_map(inst, w0=w0, sigma=sigma)
    brute = border_weight_map_bruteforce(inst, w0=w0, sigma=sigma)
    assert fast.shape == inst.shape and fast.dtype == np.float32 and np.isfinite(fast).all()
    assert (fast >= class_weight_map(inst) - 1e-6).all()
    np.testing.assert_allclose(fast, brute, atol=1e-3)  # the window error bound (tol = 1e-3)


@st.composite
def blocky_labels(draw) -> np.ndarray:
    """(H, W) labels in {-1 (ignore), 0, 1, 2} made of blocks, so most pixels are away from edges."""
    gy, gx = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    cells = np.array(draw(st.lists(st.integers(-1, 2), min_size=gy * gx, max_size=gy * gx))).reshape(gy, gx)
    side = draw(st.sampled_from([24, 32]))
    return np.kron(cells, np.ones((side // gy + 1, side // gx + 1), np.int64))[:side, :side]


@FAST
@given(labels=blocky_labels(), seed=st.integers(0, 2**16), sigma=st.floats(0, 6))
def test_augmentation_keeps_labels_in_their_set_and_aligned_with_the_image(labels, seed, sigma):
    values = np.arange(-1, 3)  # one image channel per label value: the image is the labels' one-hot
    onehot = (labels[None] == values[:, None, None]).astype(np.float32)  # (4, H, W)
    cfg = AugmentConfig(elastic_sigma=sigma, intensity_scale=0, intensity_shift=0, gamma=0, noise=0)
    gen = torch.Generator().manual_seed(seed)
    img, lab, wts = augment_batch(torch.from_numpy(onehot)[None], torch.from_numpy(labels)[None],
                                  torch.from_numpy(onehot[1])[None], cfg, gen)
    img, lab = img[0].numpy(), lab[0].numpy()  # (4, H, W), (H, W)
    assert set(np.unique(lab)) <= set(np.unique(labels))  # nearest sampling never invents labels
    certain = img.max(axis=0) > 1 - 1e-5  # pixels whose whole bilinear neighbourhood has one label
    assert certain.mean() > 0.3
    np.testing.assert_array_equal(lab[certain], values[img.argmax(axis=0)][certain])
    np.testing.assert_allclose(wts[0].numpy(), img[1], atol=1e-5)  # weights warp like the image


@FAST
@given(h=st.integers(4, 48), w=st.integers(4, 48), seed=st.integers(0, 2**16), min_size=st.integers(1, 12),
       smooth=st.floats(0.5, 3))
def test_instances_lie_in_the_foreground_with_sequential_ids(h, w, seed, min_size, smooth):
    logits = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=(3, h, w)) * 4, (0, smooth, smooth))
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)  # (3, H, W)
    labels = instances_from_probabilities(probs.astype(np.float32), min_size=min_size)
    assert labels.shape == (h, w) and labels.dtype.kind == "u"
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    foreground = (probs[1] + probs[2] > 0.5) | (probs.argmax(0) == 1)
    assert foreground[labels > 0].all()
    interior = probs.argmax(0) == 1
    for i in ids:
        region = labels == i
        assert region.sum() >= min_size and interior[region].any()  # every object grew from a seed
        assert ndi.label(region)[1] == 1  # and is one connected piece
