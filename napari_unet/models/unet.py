"""A configurable 2D/3D U-Net (Ronneberger et al. 2015) with common later options.

``UNet(cfg)`` covers "same" padding (any input size; output = input size) and the original
"valid" padding (unpadded convs with crop-and-concat; output smaller than the input, exactly
translation-equivariant for overlap-tile prediction), batch/group/no normalisation, dropout at
the end of the contracting path (usable for MC-dropout), attention gates (Oktay et al. 2018),
transposed-conv or interpolation up-sampling, an optional 1x1 reduction after concatenation and
gradient checkpointing. See ``napari_unet.config.UNetConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import UNetConfig
from .blocks import (
    CONV_T_TYPES,
    CONV_TYPES,
    DROPOUT_TYPES,
    AttentionGate,
    ConvBlock,
    Up,
    center_crop,
    conv,
    init_weights,
    interp_mode,
    max_pool,
)

_VALID_LOSS = 4  # pixels lost per level by two unpadded 3x3 convs


def _valid_output_size(in_size: int, depth: int) -> int:
    """Output size of a valid-padding U-Net of ``depth`` for ``in_size`` (floor pooling as
    torch does); 0 when the input is too small for the network."""
    n = in_size
    for _ in range(depth):
        n -= _VALID_LOSS
        if n < 2:
            return 0
        n //= 2
    n -= _VALID_LOSS
    if n < 1:
        return 0
    for _ in range(depth):
        n = 2 * n - _VALID_LOSS
        if n < 1:
            return 0
    return n


def _valid_input_size(out_size: int, depth: int) -> int:
    """Smallest valid-padding input size whose output is >= ``out_size`` (and >= 1) and whose
    size before every pooling is even; these inputs are ``2**depth * m + 4 * (2**depth - 1)``."""
    f = 2**depth
    m = 1
    while True:
        n = f * m + _VALID_LOSS * (f - 1)
        if _valid_output_size(n, depth) >= max(out_size, 1):
            return n
        m += 1


class UNet(nn.Module):
    """U-Net mapping (B, in_channels, *S) to logits (B, out_channels, *S_out).

    ``S_out == S`` for ``padding="same"`` (any size: the input is padded to a multiple of
    ``2**depth`` and the output cropped back), ``S_out = valid_output_size(S)`` per axis for
    ``padding="valid"``.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        dims, depth, same = cfg.dims, cfg.depth, cfg.padding == "same"
        widths = [cfg.base_width * 2**level for level in range(depth + 1)]
        interp = interp_mode(dims, exact_tiling=not same)

        def block(in_ch: int, out_ch: int, dropout: float = 0.0, reduce: bool = False) -> ConvBlock:
            """A conv block with this network's padding, norm and checkpointing."""
            pad = 1 if same else 0
            return ConvBlock(
                dims, in_ch, out_ch, padding=pad, norm=cfg.norm, dropout=dropout, reduce=reduce,
                checkpointing=cfg.checkpointing,
            )

        # Contracting path; dropout at its end (deepest encoder block + bottleneck), as in
        # the paper's "drop-out layers at the end of the contracting path".
        ins = [cfg.in_channels] + widths[:-1]
        self.encoders = nn.ModuleList(
            block(ins[lv], widths[lv], dropout=cfg.dropout if lv == depth - 1 else 0.0) for lv in range(depth)
        )
        self.pool = max_pool(dims)
        self.bottleneck = block(ins[depth], widths[depth], dropout=cfg.dropout)

        # Expanding path, indexed by level (0 = full resolution).
        self.ups = nn.ModuleList(Up(dims, widths[lv + 1], widths[lv], cfg.upsample, interp) for lv in range(depth))
        self.gates: nn.ModuleList | None = None
        if cfg.attention:
            self.gates = nn.ModuleList(
                AttentionGate(dims, widths[lv], widths[lv + 1], max(1, widths[lv] // 2), interp) for lv in range(depth)
            )
        self.decoders = nn.ModuleList(
            block(2 * widths[lv], widths[lv], reduce=cfg.reduce_after_concat) for lv in range(depth)
        )
        self.head = conv(dims, widths[0], cfg.out_channels, 1)
        self.side: nn.Sequential | None = None
        if cfg.side_channels:  # two 3x3 convs on the level-1 decoder features, then 1x1 to the outputs
            side_in = widths[1] if depth >= 1 else widths[0]
            self.side = nn.Sequential(conv(dims, side_in, cfg.side_width, 3, padding=1), nn.ReLU(inplace=True),
                                      conv(dims, cfg.side_width, cfg.side_width, 3, padding=1), nn.ReLU(inplace=True),
                                      conv(dims, cfg.side_width, cfg.side_channels, 1))

        init_weights(self)
        nn.init.kaiming_normal_(self.head.weight, nonlinearity="linear")  # logits: no ReLU after
        if self.side is not None:
            nn.init.kaiming_normal_(self.side[-1].weight, nonlinearity="linear")
        if self.gates is not None:
            for gate in self.gates:
                nn.init.kaiming_normal_(gate.psi.weight, nonlinearity="linear")  # then sigmoid

    # ------------------------------------------------------------------ input layer
    @property
    def input_layer(self) -> tuple[nn.Module, nn.Module | None]:
        """The first convolution (whose weights see the image's channels) and the norm after it
        (None without one); fine-tuning adapts them to another channel count or polarity."""
        body = self.encoders[0].body if len(self.encoders) else self.bottleneck.body  # encoders have no 1x1 reduce
        norm = body[1] if isinstance(body[1], (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)) else None
        return body[0], norm

    # ------------------------------------------------------------------ sizes
    @property
    def size_multiple(self) -> int:
        """Total down-sampling factor ``2**depth`` ("same" pads inputs to a multiple of it)."""
        return 2**self.cfg.depth

    def valid_output_size(self, in_size: int) -> int:
        """Output size along one axis for input size ``in_size`` (identity for "same";
        0 when too small for "valid")."""
        if self.cfg.padding == "same":
            return in_size
        return _valid_output_size(in_size, self.cfg.depth)

    def valid_input_size(self, out_size: int) -> int:
        """Smallest input size giving an output of at least ``out_size`` with even sizes
        before every pooling (identity for "same")."""
        if self.cfg.padding == "same":
            return out_size
        return _valid_input_size(out_size, self.cfg.depth)

    def output_crop(self, in_size: int) -> int:
        """Margin lost per side along one axis: output pixel ``i`` corresponds to input pixel
        ``i + output_crop(in_size)`` (0 for "same"; exact for sizes from ``valid_input_size``)."""
        return (in_size - self.valid_output_size(in_size)) // 2

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> logits (B, out_channels, *S_out)."""
        cfg = self.cfg
        if x.ndim != cfg.dims + 2:
            raise ValueError(f"expected a {cfg.dims + 2}D input (B, C, *S), got shape {tuple(x.shape)}")
        in_size = tuple(x.shape[2:])
        if cfg.padding == "same":
            x = _pad_to_multiple(x, self.size_multiple)  # (B, C, *S_pad)
        elif min(self.valid_output_size(s) for s in in_size) < 1:
            raise ValueError(
                f"input size {in_size} too small for a valid-padding U-Net of depth {cfg.depth}; "
                f"use at least {self.valid_input_size(1)} per axis"
            )

        skips: list[torch.Tensor] = []
        for enc in self.encoders:
            x = enc(x)  # (B, w_l, *S_l)
            skips.append(x)
            x = self.pool(x)  # (B, w_l, *S_l/2)
        x = self.bottleneck(x)  # (B, w_depth, *S_depth)

        side = None
        for lv in reversed(range(cfg.depth)):
            up = self.ups[lv](x)  # (B, w_lv, *2S)
            skip = center_crop(skips[lv], up.shape[2:])  # (B, w_lv, *2S)
            if self.gates is not None:
                skip = self.gates[lv](skip, x)  # (B, w_lv, *2S)
            x = self.decoders[lv](torch.cat([skip, up.to(skip.dtype)], dim=1))  # (B, w_lv, *S_lv)
            if lv == 1 and self.side is not None:
                side = self.side(x)  # (B, side_channels, *S_1): half resolution
        x = self.head(x)  # (B, out_channels, *S_out)
        if self.side is not None:
            if side is None:  # depth 0: full resolution
                side = self.side(x)
            else:  # pixel (2i, 2j) carries the side outputs computed at (i, j); the others copy them
                side = F.interpolate(side, scale_factor=2, mode="nearest")
            x = torch.cat([x, side.to(x.dtype)], dim=1)  # (B, out_channels + side_channels, *S_out)

        if cfg.padding == "same":
            x = center_crop(x, in_size)  # padding was centred, so is the crop
        return x


def _check(cfg: UNetConfig) -> None:
    """Raise ``ValueError`` for an unsupported configuration."""
    if cfg.dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {cfg.dims}")
    if cfg.depth < 0 or cfg.base_width < 1 or cfg.in_channels < 1 or cfg.out_channels < 1:
        raise ValueError("depth must be >= 0 and base_width/in_channels/out_channels >= 1")
    if cfg.padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {cfg.padding!r}")
    if cfg.norm not in ("batch", "group", "none"):
        raise ValueError(f"norm must be 'batch', 'group' or 'none', got {cfg.norm!r}")
    if cfg.upsample not in ("transpose", "interpolate"):
        raise ValueError(f"upsample must be 'transpose' or 'interpolate', got {cfg.upsample!r}")
    if cfg.side_channels and cfg.padding != "same":
        raise ValueError("a side branch (star head) needs padding='same'")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the spatial dims of ``x`` (B, C, *S) up to a multiple of ``multiple``, split evenly
    before/after. Reflect padding when every axis is large enough, else replicate."""
    sizes = x.shape[2:]
    pads = [(-s) % multiple for s in sizes]
    if not any(pads):
        return x
    before = [p // 2 for p in pads]
    after = [p - b for p, b in zip(pads, before)]
    flat: list[int] = []
    for b, a in zip(reversed(before), reversed(after)):  # F.pad wants the last axis first
        flat += [b, a]
    reflect_ok = all(max(b, a) < s for b, a, s in zip(before, after, sizes))
    return F.pad(x, flat, mode="reflect" if reflect_ok else "replicate")  # (B, C, *S_pad)


def enable_mc_dropout(model: nn.Module) -> None:
    """Prepare ``model`` for MC-dropout inference: everything in eval mode (BatchNorm uses its
    running statistics) except the dropout modules, which are put back in train mode."""
    model.eval()
    for m in model.modules():
        if isinstance(m, DROPOUT_TYPES):
            m.train()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (optionally only trainable) parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def estimate_flops(cfg: UNetConfig, shape: Sequence[int]) -> float:
    """Forward-pass FLOPs (2 x multiply-adds) of all convolutions and transposed convolutions
    of ``UNet(cfg)`` for one input of spatial ``shape`` (``(H, W)`` / ``(D, H, W)``; a full
    ``(B, C, *S)`` shape is also accepted and counts the whole batch).

    Runs the real forward on the ``meta`` device with hooks, so padding to a multiple of
    ``2**depth`` ("same") and the shrinking sizes ("valid") are accounted for exactly; it
    allocates no memory. Norms, activations, pooling and interpolation are not counted.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == cfg.dims:
        full = (1, cfg.in_channels, *shape)
    elif len(shape) == cfg.dims + 2:
        full = shape
    else:
        raise ValueError(f"shape must have {cfg.dims} (spatial) or {cfg.dims + 2} entries, got {shape}")
    with torch.device("meta"):
        model = UNet(cfg)
    model.eval()
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        k = math.prod(module.kernel_size)  # type: ignore[arg-type]
        groups: int = module.groups  # type: ignore[assignment]
        if isinstance(module, CONV_T_TYPES):  # every input element meets out_ch * k weights
            total += 2 * inputs[0].numel() * (module.out_channels // groups) * k  # type: ignore[operator]
        else:  # every output element is a dot product of length in_ch/groups * k
            total += 2 * output.numel() * (module.in_channels // groups) * k  # type: ignore[operator]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CONV_TYPES + CONV_T_TYPES)]
    try:
        with torch.no_grad():
            model(torch.empty(full, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return float(total)
