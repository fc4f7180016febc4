"""Tests of the configurable U-Net (napari_unet.models)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from torch import nn

from napari_unet.config import UNetConfig
from napari_unet.models import UNet, count_parameters, enable_mc_dropout, estimate_flops
from napari_unet.models.blocks import AttentionGate, group_count


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors: extra threads only add sync overhead (and thrash on shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# (norm, attention, upsample, reduce_after_concat, checkpointing): the full product.
_OPTIONS = list(
    itertools.product(
        ["batch", "group", "none"], [False, True], ["transpose", "interpolate"], [False, True], [False, True]
    )
)
# 3D is slower: full product of the first three options, reduce/checkpointing toggled together.
_OPTIONS_3D = [o for o in _OPTIONS if o[3] == o[4]]
_CASES = [(2, pad, *o) for pad in ("same", "valid") for o in _OPTIONS] + [
    (3, pad, *o) for pad in ("same", "valid") for o in _OPTIONS_3D
]


def _cfg(**kw: object) -> UNetConfig:
    """A tiny config for fast tests."""
    base = dict(in_channels=2, out_channels=3, base_width=4, depth=2, dropout=0.1)
    base.update(kw)
    return UNetConfig(**base)  # type: ignore[arg-type]


def _case_id(case: tuple[object, ...]) -> str:
    dims, pad, norm, att, up, red, ck = case
    flags = f"{'att' if att else 'noatt'}-{up[:5]}-{'red' if red else 'nored'}-{'ck' if ck else 'nock'}"
    return f"{dims}d-{pad}-{norm}-{flags}"


@pytest.mark.parametrize("case", _CASES, ids=[_case_id(c) for c in _CASES])
def test_shapes_and_gradients(case: tuple[object, ...]) -> None:
    """Output shape per configuration, and backward reaches every parameter."""
    dims, pad, norm, att, up, red, ck = case
    torch.manual_seed(0)
    cfg = _cfg(dims=dims, padding=pad, norm=norm, attention=att, upsample=up, reduce_after_concat=red, checkpointing=ck)
    model = UNet(cfg).train()
    if pad == "same":  # odd / non-multiple sizes
        size = (37, 50) if dims == 2 else (9, 13, 6)
    else:  # one aligned and one non-aligned axis
        size = (model.valid_input_size(4), 47) if dims == 2 else (model.valid_input_size(1),) * 3
    x = torch.randn(2, cfg.in_channels, *size)  # (B, C, *S)
    y = model(x)
    expected = [model.valid_output_size(s) for s in size]
    assert y.shape == (2, cfg.out_channels, *expected)
    if pad == "same":
        assert tuple(y.shape[2:]) == size
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (8, 8), (9, 31), (64, 17)])
def test_same_padding_any_size(size: tuple[int, int]) -> None:
    """'same' keeps any size, including sizes too small for reflect padding."""
    model = UNet(_cfg(depth=3)).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 2, *size))
    assert y.shape == (1, 3, *size)


def test_valid_sizes_classic() -> None:
    """The paper's 572 -> 388 for depth 4 (margin 92 per side)."""
    model = UNet(UNetConfig(depth=4, base_width=2, padding="valid"))
    assert model.valid_output_size(572) == 388
    assert model.valid_input_size(388) == 572
    assert model.output_crop(572) == 92
    same = UNet(UNetConfig(depth=4, base_width=2))
    assert same.valid_output_size(573) == 573 and same.valid_input_size(573) == 573 and same.output_crop(573) == 0


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_valid_input_output_consistency(depth: int) -> None:
    """valid_input_size is the smallest aligned input reaching the requested output."""
    model = UNet(UNetConfig(depth=depth, base_width=2, padding="valid"))
    f = 2**depth
    for out in range(0, 80):
        n = model.valid_input_size(out)
        assert (n - 4 * (f - 1)) % f == 0  # even size before every pooling
        got = model.valid_output_size(n)
        assert got >= max(out, 1)
        assert model.valid_output_size(n - f) < max(out, 1)  # previous aligned size is too small
        assert n - got == 2 * model.output_crop(n)
    with pytest.raises(ValueError):
        model(torch.randn(1, 1, *(2 * [model.valid_input_size(1) - 1])))


@pytest.mark.parametrize(
    ("attention", "upsample"), list(itertools.product([False, True], ["transpose", "interpolate"]))
)
def test_valid_overlap_tile_is_exact(attention: bool, upsample: str) -> None:
    """A valid U-Net on a sub-window (shifted by a multiple of 2**depth) reproduces the
    corresponding crop of the full output: output i <-> input i + output_crop."""
    torch.manual_seed(1)
    cfg = _cfg(padding="valid", norm="batch", attention=attention, upsample=upsample)
    model = UNet(cfg).eval()
    n_full, n_tile = model.valid_input_size(24), model.valid_input_size(8)
    x = torch.randn(1, 2, n_full, n_full)
    with torch.no_grad():
        full = model(x)
        off = 2 * model.size_multiple
        tile = model(x[:, :, off : off + n_tile, off : off + n_tile])
    m = tile.shape[-1]
    torch.testing.assert_close(tile, full[:, :, off : off + m, off : off + m], atol=1e-5, rtol=1e-4)


def test_mc_dropout() -> None:
    """Eval is deterministic; enable_mc_dropout makes passes differ, norms stay in eval."""
    torch.manual_seed(0)
    model = UNet(_cfg(dropout=0.5, norm="batch"))
    assert sum(isinstance(m, nn.Dropout2d) for m in model.modules()) == 2  # deepest encoder + bottleneck
    assert not any(isinstance(m, nn.Dropout2d) for m in UNet(_cfg(dropout=0.0)).modules())
    x = torch.randn(1, 2, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b)
    stats = model.bottleneck.body[1].running_mean.clone()
    enable_mc_dropout(model)
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.training for m in model.modules() if isinstance(m, nn.Dropout2d))
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.allclose(c, d)
    torch.testing.assert_close(model.bottleneck.body[1].running_mean, stats)


_CL_CASES = list(itertools.product(["same", "valid"], ["batch", "group"], [False, True], ["transpose", "interpolate"]))


@pytest.mark.parametrize(("padding", "norm", "attention", "upsample"), _CL_CASES)
def test_channels_last_bf16_autocast(padding: str, norm: str, attention: bool, upsample: str) -> None:
    """2D channels_last model + input under CPU bf16 autocast: shapes, finiteness, backward."""
    torch.manual_seed(0)
    cfg = _cfg(padding=padding, norm=norm, attention=attention, upsample=upsample, checkpointing=True)
    model = UNet(cfg).to(memory_format=torch.channels_last).train()
    size = (37, 50) if padding == "same" else (model.valid_input_size(6),) * 2
    x = torch.randn(2, 2, *size).to(memory_format=torch.channels_last)  # (B, C, H, W)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.shape == (2, 3, *(model.valid_output_size(s) for s in size))
    assert torch.isfinite(y.float()).all()
    y.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_checkpointing_gives_same_gradients() -> None:
    """Gradient checkpointing changes memory, not results."""
    torch.manual_seed(0)
    cfg = _cfg(norm="group", dropout=0.0, attention=True)
    plain, ckpt = UNet(cfg), UNet(replace(cfg, checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 16, 16)
    for model in (plain, ckpt):
        model(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_attention_gate_coefficients() -> None:
    """Coefficients lie in [0, 1] at the skip's resolution, also for mismatched sizes."""
    gate = AttentionGate(2, x_ch=4, g_ch=8, inter_ch=2, interp="bilinear")
    x, g = torch.randn(1, 4, 10, 14), torch.randn(1, 8, 4, 6)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (1, 1, 10, 14) and alpha.min() >= 0 and alpha.max() <= 1
    assert gate(x, g).shape == x.shape


def test_group_count_always_valid() -> None:
    for ch in range(1, 130):
        g = group_count(ch)
        assert ch % g == 0 and 1 <= g <= 8
    assert group_count(32) == 8 and group_count(4) == 2 and group_count(3) == 1


def test_count_parameters_known() -> None:
    """depth 0, no norm: conv3x3(1->4)+b, conv3x3(4->4)+b, conv1x1(4->2)+b."""
    model = UNet(UNetConfig(in_channels=1, out_channels=2, depth=0, base_width=4, norm="none", dropout=0.0))
    assert count_parameters(model) == (9 * 4 + 4) + (9 * 16 + 4) + (4 * 2 + 2)
    model.head.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 8


def test_estimate_flops_known_network() -> None:
    """Hand count for depth 1, width 4, 1 -> 2 channels, 8x8 input (2 x MACs)."""
    cfg = UNetConfig(in_channels=1, out_channels=2, depth=1, base_width=4, norm="none")
    hw, hw2 = 64, 16
    macs = (
        hw * (1 * 4 * 9 + 4 * 4 * 9)  # encoder level 0
        + hw2 * (4 * 8 * 9 + 8 * 8 * 9)  # bottleneck at 4x4
        + hw2 * 8 * 4 * 4  # 2x2 stride-2 transposed conv on the 4x4 input
        + hw * (8 * 4 * 9 + 4 * 4 * 9)  # decoder level 0
        + hw * 4 * 2  # 1x1 head
    )
    assert estimate_flops(cfg, (8, 8)) == 2 * macs
    assert estimate_flops(cfg, (3, 1, 8, 8)) == 3 * 2 * macs  # full (B, C, H, W) shape
    # 'same' pads 7x7 to 8x8 internally: same cost.
    assert estimate_flops(cfg, (7, 7)) == 2 * macs


def test_estimate_flops_scaling() -> None:
    cfg2 = _cfg(attention=True, reduce_after_concat=True, depth=3)
    assert estimate_flops(cfg2, (64, 64)) == pytest.approx(4 * estimate_flops(cfg2, (32, 32)))
    cfg3 = _cfg(dims=3, upsample="interpolate")
    assert estimate_flops(cfg3, (16, 16, 16)) == pytest.approx(8 * estimate_flops(cfg3, (8, 8, 8)))
    valid = _cfg(padding="valid")
    model = UNet(valid)
    small = estimate_flops(valid, (model.valid_input_size(100),) * 2)
    big = estimate_flops(valid, (model.valid_input_size(200),) * 2)
    assert 3.0 < big / small < 4.0  # border losses make it sub-quadratic
    big_cfg = UNetConfig(depth=4, base_width=64, norm="none")
    assert math.isclose(estimate_flops(big_cfg, (512, 512)) / 1e9, 384.8, rel_tol=1e-2)


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        UNet(UNetConfig(norm="layer"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UNet(UNetConfig(dims=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UNet(_cfg())(torch.randn(1, 2, 8, 8, 8))  # 3D input to a 2D model
