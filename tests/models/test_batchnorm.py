"""WideBatchNorm2d must behave exactly like nn.BatchNorm2d, only faster on narrow
channels_last tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_unet.config import UNetConfig
from napari_unet.models import UNet
from napari_unet.models.batchnorm import WideBatchNorm2d, narrow, widen, widening_factor, with_stock_batchnorm

CL = torch.channels_last


def _pair(channels: int, momentum: float | None = 0.1) -> tuple[nn.BatchNorm2d, WideBatchNorm2d]:
    """A stock and a wide batch norm with the same random affine parameters and buffers."""
    stock = nn.BatchNorm2d(channels, momentum=momentum).double()
    with torch.no_grad():
        stock.weight.uniform_(0.5, 2.0)
        stock.bias.uniform_(-1.0, 1.0)
        stock.running_mean.uniform_(-0.5, 0.5)
        stock.running_var.uniform_(0.5, 2.0)
    wide = WideBatchNorm2d(channels, momentum=momentum).double()
    wide.load_state_dict(stock.state_dict())
    return stock, wide


def _input(channels: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, channels, 10, width, generator=gen, dtype=torch.float64) * 2.5 + 0.7
    return x.contiguous(memory_format=CL)


def test_widen_and_narrow_are_inverse_views() -> None:
    x = _input(8, 16)
    w = widen(x, 2)
    assert w.shape == (3, 16, 10, 8) and w.is_contiguous(memory_format=CL)
    assert w.data_ptr() == x.data_ptr()
    # wide channel p * C + c holds channel c of the columns congruent to p mod k
    assert torch.equal(w[:, 8 + 3], x[:, 3, :, 1::2])
    assert torch.equal(narrow(w, 8), x)


@pytest.mark.parametrize(
    ("shape", "channels_last", "expected"),
    [((2, 8, 6, 16), True, 2), ((2, 4, 6, 16), True, 4), ((2, 3, 6, 8), True, 8), ((2, 16, 6, 16), True, 1),
     ((2, 8, 6, 15), True, 1), ((2, 8, 6, 16), False, 1)],
)
def test_widening_factor_only_for_narrow_channels_last(shape: tuple[int, ...], channels_last: bool,
                                                       expected: int) -> None:
    x = torch.zeros(shape)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    assert widening_factor(x) == expected


@pytest.mark.parametrize(("channels", "momentum"), [(8, 0.1), (4, 0.1), (6, None)])
def test_training_matches_stock_batchnorm(channels: int, momentum: float | None) -> None:
    stock, wide = _pair(channels, momentum)
    for step in range(3):  # several steps: running statistics and the cumulative average
        x = _input(channels, 16, seed=step)
        assert widening_factor(x) > 1
        grad = torch.randn_like(x)
        xs, xw = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ys, yw = stock(xs), wide(xw)
        ys.backward(grad)
        yw.backward(grad)
        assert yw.is_contiguous(memory_format=CL)
        torch.testing.assert_close(yw, ys, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(xw.grad, xs.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(wide.weight.grad, stock.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(wide.bias.grad, stock.bias.grad, rtol=1e-10, atol=1e-10)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(wide, name), getattr(stock, name), rtol=1e-10, atol=1e-10)
    stock.eval()
    wide.eval()
    x = _input(channels, 16, seed=9)
    torch.testing.assert_close(wide(x), stock(x), rtol=1e-10, atol=1e-10)


def test_gradcheck_through_the_wide_path() -> None:
    _, wide = _pair(4)
    x = _input(4, 8)[:1, :, :3].contiguous(memory_format=CL).requires_grad_(True)
    assert widening_factor(x) == 4
    assert torch.autograd.gradcheck(lambda t: wide(t) * torch.arange(1.0, 9.0, dtype=torch.float64), (x,))


def test_inplace_relu_after_it_keeps_gradients_right() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False).double().to(memory_format=CL)
    stock, wide = _pair(8)
    x = _input(8, 16)
    grads = []
    for norm in (stock, wide):
        conv.zero_grad()
        y = nn.functional.relu(norm(conv(x)), inplace=True)
        (y * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
        grads.append(conv.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-10)


def test_bfloat16_under_autocast_stays_close_to_stock() -> None:
    stock, wide = _pair(8)
    stock.float()
    wide.float()
    x = _input(8, 32).float().bfloat16().contiguous(memory_format=CL)
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    outputs = []
    for norm in (stock, wide):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(xi)
        (y.float() * probe).sum().backward()
        outputs.append((y.detach().float(), xi.grad.float(), norm.weight.grad))
    for got, want in zip(outputs[1], outputs[0]):
        assert float((got - want).norm() / want.norm()) < 1e-2


def test_unet_uses_it_and_loads_stock_state_dicts() -> None:
    net = UNet(UNetConfig(base_width=8))
    assert any(isinstance(m, WideBatchNorm2d) for m in net.modules())
    # a model saved before WideBatchNorm2d existed has the same keys
    state = {k: v.clone() for k, v in net.state_dict().items()}
    UNet(UNetConfig(base_width=8)).load_state_dict(state)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_whole_unet_trains_exactly_like_one_with_stock_batchnorm(checkpointing: bool) -> None:
    torch.manual_seed(0)
    cfg = UNetConfig(base_width=4, depth=2, checkpointing=checkpointing, dropout=0.0)  # 4 and 8 channels: k = 4, 2
    wide = UNet(cfg).double().to(memory_format=CL)
    stock = with_stock_batchnorm(UNet(cfg)).double().to(memory_format=CL)
    stock.load_state_dict(wide.state_dict())
    assert not any(isinstance(m, WideBatchNorm2d) for m in stock.modules())
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64).contiguous(memory_format=CL)
    grads = []
    for net in (wide, stock):
        net.train()
        (net(x) * torch.linspace(-1, 1, 32, dtype=torch.float64)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)
    for (name, a), b in zip(wide.state_dict().items(), stock.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)
