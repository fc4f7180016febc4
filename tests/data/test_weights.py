"""Tests of napari_unet.data.weights (U-Net border weight map)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.draw import disk

from napari_unet.data.weights import border_weight_map, border_weight_map_bruteforce, class_weight_map

TOL = 1e-3  # border_weight_map's default windowing tolerance: |error| < TOL by construction


def _disks(shape: tuple[int, int], n: int, seed: int, touching: bool) -> np.ndarray:
    """Instance image with up to ``n`` disks; ``touching`` lets them abut."""
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, np.int32)
    k = 0
    for _ in range(50 * n):
        if k == n:
            break
        r = int(rng.integers(4, 9))
        centre = (int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1])))
        rr, cc = disk(centre, r + (0 if touching else 2), shape=shape)
        if inst[rr, cc].any():
            continue
        rr, cc = disk(centre, r + (1 if touching else 0), shape=shape)
        k += 1
        inst[rr, cc] = np.where(inst[rr, cc] == 0, k, inst[rr, cc])
    return inst


CASES = [(n, seed, touching) for n in (0, 1, 2, 5, 12) for seed in (0, 1) for touching in (False, True)]


@pytest.mark.parametrize("n,seed,touching", CASES)
def test_matches_bruteforce(n: int, seed: int, touching: bool) -> None:
    inst = _disks((64, 80), n, seed, touching)
    fast = border_weight_map(inst)
    ref = border_weight_map_bruteforce(inst)
    assert fast.shape == inst.shape and fast.dtype == np.float32
    assert np.abs(fast - ref).max() < TOL
    # where the border term is non-negligible the windowed result is exact
    term = ref - class_weight_map(inst)
    assert np.abs(fast - ref)[term >= TOL].max(initial=0.0) < 1e-5
    if len(np.unique(inst[inst > 0])) < 2:
        assert np.array_equal(fast, class_weight_map(inst))


def test_gap_between_objects_and_far_background() -> None:
    inst = np.zeros((60, 120), np.int32)
    inst[20:40, 10:30] = 1
    inst[20:40, 31:51] = 2  # one-pixel gap at column 30
    inst[20:40, 100:115] = 3
    w = border_weight_map(inst, w0=10.0, sigma=5.0)
    wc = class_weight_map(inst)
    w_bg = float(wc[0, 0])
    gap = w[25:35, 30]
    expected = w_bg + 10.0 * math.exp(-((1 + 1) ** 2) / (2 * 25.0))
    assert np.allclose(gap, expected, atol=1e-5)
    assert gap.min() > w_bg + 9.0  # about w0 + w_c
    assert abs(float(w[55, 75]) - w_bg) < 0.05  # far from everything: about w_c
    assert np.array_equal(w[inst > 0], wc[inst > 0])  # no border term on objects


def test_class_weights() -> None:
    inst = np.zeros((10, 10), np.int32)
    inst[:2] = 1  # 20 % foreground
    wc = class_weight_map(inst)
    assert np.allclose(wc[inst == 0], 1.0) and np.allclose(wc[inst > 0], 4.0)
    assert np.all(class_weight_map(inst, balance=False) == 1.0)
    custom = class_weight_map(inst, class_weights=(0.5, 3.0))
    assert np.allclose(custom[inst == 0], 0.5) and np.allclose(custom[inst > 0], 3.0)
    inst[:] = 1
    assert np.all(class_weight_map(inst) == 1.0)
    w = border_weight_map(np.zeros((8, 8), np.int32))
    assert np.all(w == 1.0)


def test_ids_dtypes_and_ignore() -> None:
    inst = _disks((48, 48), 6, 3, True).astype(np.int64)
    ref = border_weight_map(inst)
    sparse = np.where(inst > 0, inst * 1_000_003, 0).astype(np.int64)
    assert np.allclose(border_weight_map(sparse), ref, atol=1e-6)
    assert np.allclose(border_weight_map(inst.astype(np.uint16)), ref, atol=1e-6)
    ignored = inst.copy()
    ignored[:5] = -1
    w = border_weight_map(ignored)
    assert np.isfinite(w).all() and np.abs(w - border_weight_map_bruteforce(ignored)).max() < TOL
    with pytest.raises(TypeError):
        border_weight_map(inst.astype(np.float32))


def test_3d_and_spacing() -> None:
    rng = np.random.default_rng(0)
    inst = np.zeros((12, 32, 32), np.int32)
    for k in range(1, 7):
        z, y, x = rng.integers(2, 10), rng.integers(4, 28), rng.integers(4, 28)
        inst[z - 2 : z + 2, y - 3 : y + 3, x - 3 : x + 3] = k
    for spacing in (None, (2.0, 1.0, 1.0)):
        fast = border_weight_map(inst, spacing=spacing)
        ref = border_weight_map_bruteforce(inst, spacing=spacing)
        assert np.abs(fast - ref).max() < TOL


@settings(max_examples=40, deadline=None)
@given(
    inst=arrays(np.int32, st.tuples(st.integers(1, 20), st.integers(1, 20)), elements=st.integers(0, 4)),
    w0=st.floats(0.0, 20.0),
    sigma=st.floats(0.5, 8.0),
    balance=st.booleans(),
)
def test_properties(inst: np.ndarray, w0: float, sigma: float, balance: bool) -> None:
    w = border_weight_map(inst, w0=w0, sigma=sigma, balance=balance)
    wc = class_weight_map(inst, balance=balance)
    assert w.shape == inst.shape and w.dtype == np.float32
    assert np.isfinite(w).all()
    assert np.all(w >= wc - 1e-6) and np.all(w >= wc.min())
    assert np.all(w <= wc + w0 + 1e-4)
    assert np.abs(w - border_weight_map_bruteforce(inst, w0=w0, sigma=sigma, balance=balance)).max() < TOL
