"""Building blocks of the U-Net, written once for 2D and 3D.

Every layer class is picked from ``dims`` (2 or 3), so the same code builds ``Conv2d`` or
``Conv3d`` networks. Shape comments use ``*S`` for the spatial dimensions, i.e. ``(H, W)``
in 2D and ``(D, H, W)`` in 3D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .batchnorm import WideBatchNorm2d

class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs in float32 where the CPU's bfloat16 kernel is wrong.

    Under CPU bf16 autocast (torch 2.13, oneDNN, AVX512-BF16), a 3x3x3 convolution of an input
    two planes deep gets a garbage weight gradient (1e30, inf or NaN at random; forward and input
    gradient are right; every other depth from 1 to 32 checked is right). A 3D U-Net meets such an
    input at the level where its patch has 2 planes left (16 planes: level 3 of 4; 32 planes: the
    bottleneck), and the first such step turned the weights to NaN. Those levels hold few voxels,
    so float32 there costs little. Parameters and state dict are ``nn.Conv3d``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[2] == 2 and self.kernel_size[0] > 1 and x.device.type == "cpu"
                and torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float()).to(torch.get_autocast_dtype("cpu"))  # (B, C_out, 2, H, W)
        return super().forward(x)


_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: Conv3d}
_CONV_T: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCH_NORM: dict[int, type[nn.Module]] = {2: WideBatchNorm2d, 3: nn.BatchNorm3d}
# Channel ("spatial") dropout: whole feature maps are zeroed, see ``ConvBlock``.
_DROPOUT: dict[int, type[nn.Module]] = {2: nn.Dropout2d, 3: nn.Dropout3d}
_LINEAR_MODE: dict[int, str] = {2: "bilinear", 3: "trilinear"}

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_T_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def conv(dims: int, in_ch: int, out_ch: int, kernel: int, padding: int = 0, bias: bool = True) -> nn.Module:
    """A ``kernel``-sized convolution in ``dims`` spatial dimensions."""
    return _CONV[dims](in_ch, out_ch, kernel, padding=padding, bias=bias)


def max_pool(dims: int) -> nn.Module:
    """Max-pooling by a factor 2 (floor for odd sizes)."""
    return _POOL[dims](2)


def group_count(channels: int, max_groups: int = 8, min_per_group: int = 2) -> int:
    """Number of GroupNorm groups for ``channels``: the largest divisor of ``channels`` that
    is at most ``max_groups`` and leaves at least ``min_per_group`` channels per group
    (1 group when no divisor qualifies). Always a valid ``num_groups``."""
    best = 1
    for g in range(1, min(max_groups, channels) + 1):
        if channels % g == 0 and channels // g >= min_per_group:
            best = g
    return best


def norm_layer(kind: str, channels: int, dims: int) -> nn.Module:
    """Normalisation layer: ``"batch"``, ``"group"`` (see ``group_count``) or ``"none"``."""
    if kind == "batch":
        return _BATCH_NORM[dims](channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'group' or 'none'")


def interp_mode(dims: int, exact_tiling: bool) -> str:
    """Interpolation mode for x2 upsampling: nearest when outputs must stay exactly
    translation-equivariant (valid padding, overlap-tile prediction), else (bi|tri)linear."""
    return "nearest" if exact_tiling else _LINEAR_MODE[dims]


def resize(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Interpolate ``x`` (B, C, *S) to spatial ``size``, keeping its dtype (autocast may
    return float32 from interpolation kernels)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    align = False if mode in ("bilinear", "trilinear") else None
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align).to(x.dtype)


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop the spatial dims of ``x`` (B, C, *S) to ``size`` around the centre
    (``floor`` of the margin before, the rest after)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    index: list[slice] = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size):
        if want > have:
            raise ValueError(f"cannot crop size {tuple(x.shape[2:])} to larger {tuple(size)}")
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


class ConvBlock(nn.Module):
    """``[1x1 conv -> norm -> ReLU] -> (3x3 conv -> norm -> ReLU) x 2 -> [dropout]``.

    ``padding`` is 1 ("same") or 0 ("valid": each block removes 2 pixels per side).
    ``reduce=True`` adds the leading 1x1 conv that maps ``in_ch`` to ``out_ch``
    (used after a decoder concatenation). Dropout is channel dropout (``Dropout2d/3d``):
    neighbouring pixels of a feature map are strongly correlated, so dropping whole maps
    regularises conv features better than element-wise dropout, and it gives smooth,
    spatially coherent MC-dropout samples. With ``checkpointing`` the block's activations
    are recomputed in backward (only while training with grad enabled). Note that
    BatchNorm running statistics are then updated twice per step (forward + recompute).
    """

    def __init__(
        self,
        dims: int,
        in_ch: int,
        out_ch: int,
        *,
        padding: int,
        norm: str,
        dropout: float = 0.0,
        reduce: bool = False,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        bias = norm == "none"  # a conv bias is redundant in front of a normalisation
        layers: list[nn.Module] = []
        ch = in_ch
        if reduce:
            layers += [conv(dims, ch, out_ch, 1, bias=bias), norm_layer(norm, out_ch, dims), nn.ReLU(inplace=True)]
            ch = out_ch
        for _ in range(2):
            layers += [
                conv(dims, ch, out_ch, 3, padding=padding, bias=bias),
                norm_layer(norm, out_ch, dims),
                nn.ReLU(inplace=True),
            ]
            ch = out_ch
        if dropout > 0:
            layers.append(_DROPOUT[dims](dropout))
        self.body = nn.Sequential(*layers)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, *S) -> (B, out_ch, *S) for "same", *S - 4 for "valid"."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            out = checkpoint(self.body, x, use_reentrant=False)
            assert isinstance(out, torch.Tensor)
            return out
        return self.body(x)


class Up(nn.Module):
    """x2 up-sampling that also maps ``in_ch`` to ``out_ch`` (usually halving).

    ``"transpose"``: a 2x2 stride-2 transposed conv (the paper's "up-convolution").
    ``"interpolate"``: x2 interpolation with a 1x1 conv. The 1x1 conv is applied *before*
    the interpolation: both are linear and interpolation weights sum to 1, so the result is
    identical to conv-after-upsampling at 1/4 (2D) or 1/8 (3D) of the cost.
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, mode: str, interp: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.conv: nn.Module = _CONV_T[dims](in_ch, out_ch, 2, stride=2)
        elif mode == "interpolate":
            self.conv = conv(dims, in_ch, out_ch, 1)
        else:
            raise ValueError(f"unknown upsample {mode!r}; expected 'transpose' or 'interpolate'")
        self.mode = mode
        self.interp = interp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, *S) -> (B, out_ch, *2S)."""
        y = self.conv(x)  # transpose: (B, out_ch, *2S); interpolate: (B, out_ch, *S)
        if self.mode == "interpolate":
            y = resize(y, [2 * s for s in y.shape[2:]], self.interp)  # (B, out_ch, *2S)
        return y


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018, Attention U-Net).

    The skip ``x`` is brought to the resolution of the coarser gating signal ``g`` by
    2x2 average pooling (Oktay use a strided conv; pooling + 1x1 conv is its cheaper,
    equally linear form), then ``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` is computed on
    the coarse grid, interpolated back to the skip's resolution and multiplies the skip.
    """

    def __init__(self, dims: int, x_ch: int, g_ch: int, inter_ch: int, interp: str) -> None:
        super().__init__()
        self.w_x = conv(dims, x_ch, inter_ch, 1, bias=False)
        self.w_g = conv(dims, g_ch, inter_ch, 1, bias=True)
        self.psi = conv(dims, inter_ch, 1, 1, bias=True)
        self.dims = dims
        self.interp = interp

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Attention coefficients (B, 1, *Sx) in [0, 1] for skip ``x`` (B, Cx, *Sx) and
        gating ``g`` (B, Cg, *Sg)."""
        size_g = tuple(g.shape[2:])
        if tuple(x.shape[2:]) == tuple(2 * s for s in size_g):
            xs = F.avg_pool2d(x, 2) if self.dims == 2 else F.avg_pool3d(x, 2)  # (B, Cx, *Sg)
        elif tuple(x.shape[2:]) != size_g:
            pool = F.adaptive_avg_pool2d if self.dims == 2 else F.adaptive_avg_pool3d
            xs = pool(x, size_g)  # (B, Cx, *Sg)
        else:
            xs = x
        theta = self.w_x(xs)  # (B, Ci, *Sg)
        phi = self.w_g(g)  # (B, Ci, *Sg)
        a = F.relu(theta + phi.to(theta.dtype))  # (B, Ci, *Sg)
        alpha = torch.sigmoid(self.psi(a))  # (B, 1, *Sg)
        return resize(alpha, x.shape[2:], self.interp)  # (B, 1, *Sx)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Gate the skip ``x`` (B, Cx, *Sx) with ``g`` (B, Cg, *Sg); returns (B, Cx, *Sx)."""
        return x * self.coefficients(x, g).to(x.dtype)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) init of every conv; zero biases.

    For a transposed conv the effective fan-in of an output pixel is
    ``in_ch * prod(kernel) / prod(stride)`` (``in_ch`` for the 2x2 stride-2 up-conv).
    """
    for m in module.modules():
        if isinstance(m, CONV_TYPES):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, CONV_T_TYPES):
            fan_in = m.in_channels * math.prod(m.kernel_size) / math.prod(m.stride)
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / max(fan_in, 1.0)))
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
