"""BatchNorm2d that stays fast on narrow channels_last tensors on the CPU.

PyTorch's CPU batch-norm kernels for channels_last (N, H, W, C) memory vectorise across the
channels. With the default base width of 8 the full-resolution level has 8 channels, fewer
than one AVX-512 vector, and training-mode batch norm there ran about 4x slower per element
than at 16 channels (4.6 ms forward + backward for 8 x 8 x 128² in bf16 on the dev machine,
a fifth of a training step for the four such layers).

The same memory can be read as a channels_last tensor with ``k``-times more channels and
``W / k`` columns: wide channel ``p * C + c`` holds channel ``c`` of the columns ``x ≡ p
(mod k)``. ``WideBatchNorm2d`` runs PyTorch's kernels on that wide view and folds the ``k``
phases back into exact per-channel statistics and gradients, so the result equals
``nn.BatchNorm2d`` (up to rounding) at about a quarter of the cost. Anything else (NCHW,
wide tensors, widths not divisible by ``k``, tracing / export, GPU) goes to the stock path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last
MIN_WIDE_CHANNELS = 16  # one AVX-512 vector of fp32


def widen(x: torch.Tensor, k: int) -> torch.Tensor:
    """View channels_last (N, C, H, W) as channels_last (N, k*C, H, W/k); no copy."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h, w // k, k * c).permute(0, 3, 1, 2)


def narrow(x: torch.Tensor, c: int) -> torch.Tensor:
    """Inverse of ``widen``: channels_last (N, k*C, H, W/k) -> (N, C, H, W); no copy."""
    n, kc, h, wk = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h, wk * (kc // c), c).permute(0, 3, 1, 2)


def widening_factor(x: torch.Tensor) -> int:
    """How many column phases to fold into channels for ``x`` (1 = use the stock kernel)."""
    if x.dim() != 4 or x.device.type != "cpu" or x.is_contiguous() or not x.is_contiguous(memory_format=_CL):
        return 1
    c, w = x.shape[1], x.shape[3]
    k = 1
    while c * k < MIN_WIDE_CHANNELS:
        k *= 2
    return k if k > 1 and w % k == 0 else 1


def _tracing() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _unaliased(view: torch.Tensor) -> torch.Tensor:
    """The same memory as ``view`` in a tensor autograd does not know as a view. The output of
    the batch norm is a view of an internal wide tensor; the in-place ReLU after it would turn
    a recorded view into slow copy-slices backward steps (threshold_backward 7x slower)."""
    out = torch.empty(0, dtype=view.dtype, device=view.device)
    return out.set_(view.untyped_storage(), view.storage_offset(), view.shape, view.stride())


class _WideTrainNorm(torch.autograd.Function):
    """Training-mode batch norm of channels_last (N, C, H, W) ``x`` on its ``k``-wide view:
    the ``k`` column phases of each channel share one mean and variance."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = weight.shape[0]
        xw = widen(x, k)
        # Per-phase statistics from the stock kernel, pooled exactly (equal counts per phase).
        _, mean_w, invstd_w = torch.native_batch_norm(xw, None, None, None, None, True, 0.0, eps)
        acc = torch.promote_types(weight.dtype, torch.float32)  # bf16 statistics would lose digits
        mean_p = mean_w.to(acc).view(k, c)
        var_p = invstd_w.to(acc).view(k, c).pow(-2) - eps
        mean = mean_p.mean(0).to(weight.dtype)
        var = ((var_p + mean_p.square()).mean(0) - mean_p.mean(0).square()).clamp_min(0.0).to(weight.dtype)
        yw = F.batch_norm(xw, mean.repeat(k), var.repeat(k), weight.repeat(k), bias.repeat(k), False, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.k, ctx.eps = k, eps
        ctx.mark_non_differentiable(mean, var)
        return _unaliased(narrow(yw, c)), mean, var

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        x, weight, mean, var = ctx.saved_tensors
        k, eps, c = ctx.k, ctx.eps, weight.shape[0]
        xw = widen(x, k)
        gw = widen(grad.contiguous(memory_format=_CL), k)
        # With fixed statistics the stock backward gives dy * w * invstd and, per wide channel,
        # sum(dy * xhat) and sum(dy): folded over the phases, exactly dweight and dbias.
        dx, dweight_w, dbias_w = torch.ops.aten.native_batch_norm_backward(
            gw, xw, weight.repeat(k), mean.repeat(k), var.repeat(k), None, None, False, eps, [True, True, True])
        dweight = dweight_w.view(k, c).sum(0)
        dbias = dbias_w.view(k, c).sum(0)
        # Training mode adds the statistics' own gradient, affine in x per channel:
        # dx += a * x + b with a = -w invstd² dweight / M, b = -w invstd dbias / M - a * mean.
        count = xw.numel() // c
        invstd = torch.rsqrt(var + eps)
        a = -weight * invstd.square() * dweight / count
        b = -weight * invstd * dbias / count - a * mean
        zeros, ones = torch.zeros_like(mean), torch.ones_like(var)
        dx.add_(F.batch_norm(xw, zeros.repeat(k), ones.repeat(k), a.repeat(k), b.repeat(k), False, 0.0, 0.0))
        return narrow(dx, c), dweight, dbias, None, None


class WideBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the same parameters, buffers and results, faster on the CPU
    for channels_last inputs with fewer than 16 channels (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), normalised per channel."""
        k = widening_factor(x)
        if k == 1 or not self.affine or not self.track_running_stats or _tracing():
            return super().forward(x)
        assert self.running_mean is not None and self.running_var is not None
        c = self.num_features
        if not self.training:
            y = F.batch_norm(widen(x, k), self.running_mean.repeat(k), self.running_var.repeat(k),
                             self.weight.repeat(k), self.bias.repeat(k), False, 0.0, self.eps)
            return narrow(y, c)
        y, mean, var = _WideTrainNorm.apply(x, self.weight, self.bias, k, self.eps)
        self._update_running_stats(mean, var, x.numel() // c)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """The stock kernel's update: unbiased variance, momentum or cumulative average."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def with_stock_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` with every ``WideBatchNorm2d`` swapped in place for a plain ``nn.BatchNorm2d``
    holding the same state (for comparisons: speed benchmarks, equivalence tests)."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, WideBatchNorm2d):
                stock = nn.BatchNorm2d(child.num_features, child.eps, child.momentum).to(child.weight)
                stock.load_state_dict(child.state_dict())
                setattr(module, name, stock)
    return net
