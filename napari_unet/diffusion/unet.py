"""A denoising U-Net for mask-conditioned diffusion.

The network as the field builds it, kept small: a sinusoidal time embedding through an MLP;
residual blocks with GroupNorm, SiLU and a time-conditioned scale/shift; at the low
resolutions a transformer block (self-attention over pixels, cross-attention whose keys and
values are the prompt tokens, feed-forward); skip concatenation between the two paths. The
mask prompt enters spatially, as extra input channels concatenated to the noisy image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_unet.diffusion.config import DiffusionUNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) (Vaswani 2017, as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2*half)
    return F.pad(emb, (0, dim % 2))  # (B, dim)


def _groups(channels: int, wanted: int) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """conv(SiLU(GN(x))) -> GN, scale/shift from the time embedding -> SiLU -> conv; plus skip."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch, groups), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch, groups), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        scale, shift = self.time(F.silu(temb))[:, :, None, None].chunk(2, dim=1)  # (B, out, 1, 1) each
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head attention of queries (B, N, C) over keys/values (B, M, Ck), optional key mask."""

    def __init__(self, dim: int, kv_dim: int, head_width: int) -> None:
        super().__init__()
        self.heads = max(1, dim // head_width)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, N, c/h)
        k, v = self.kv(kv).view(b, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, h, M, c/h) each
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, M) True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, N, c/h)
        return self.out(y.transpose(1, 2).reshape(b, n, c))  # (B, N, C)


class TransformerBlock(nn.Module):
    """Self-attention over pixels, cross-attention to the prompt tokens, feed-forward (pre-norm)."""

    def __init__(self, dim: int, context_dim: int, head_width: int, groups: int) -> None:
        super().__init__()
        self.norm_in = nn.GroupNorm(_groups(dim, groups), dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, dim, head_width)
        self.cross_attn = Attention(dim, context_dim, head_width)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm_in(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        n1 = self.norm1(t)
        t = t + self.self_attn(n1, n1)
        t = t + self.cross_attn(self.norm2(t), context, context_mask)
        t = t + self.ff(self.norm3(t))
        return x + t.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)


class DiffusionUNet(nn.Module):
    """Predicts noise (or v) for a noisy image given the timestep, a mask prompt and prompt tokens.

    ``forward(x, t, mask, context, context_mask)``: x (B, image_channels, H, W) noisy image,
    t (B,) integer timesteps, mask (B, mask_channels, H, W) prompt channels (zeros = no prompt),
    context (B, M, context_dim) tokens with context_mask (B, M) True where valid. H and W must
    be multiples of 2**(levels - 1).
    """

    def __init__(self, cfg: DiffusionUNetConfig = DiffusionUNetConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        base, g = cfg.base_width, cfg.groups
        time_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(cfg.image_channels + cfg.mask_channels, base, 3, padding=1)
        widths = [base * m for m in cfg.channel_mults]
        levels = len(widths)
        self.down, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skips, ch = [base], base
        for i, width in enumerate(widths):
            for _ in range(cfg.blocks_per_level):
                self.down.append(ResBlock(ch, width, time_dim, g, cfg.dropout))
                ch = width
                self.down_attn.append(self._attn(i, ch))
                skips.append(ch)
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, time_dim, g, cfg.dropout)
        self.mid_attn = TransformerBlock(ch, cfg.context_dim, cfg.head_width, g)
        self.mid2 = ResBlock(ch, ch, time_dim, g, cfg.dropout)
        self.up, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(levels)):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(ResBlock(ch + skips.pop(), widths[i], time_dim, g, cfg.dropout))
                ch = widths[i]
                self.up_attn.append(self._attn(i, ch))
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch, g), ch), nn.SiLU(), nn.Conv2d(ch, cfg.image_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def _attn(self, level: int, ch: int) -> nn.Module:
        if level in self.cfg.attention_levels:
            return TransformerBlock(ch, self.cfg.context_dim, self.cfg.head_width, self.cfg.groups)
        return nn.Identity()

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this."""
        return 2 ** (len(self.cfg.channel_mults) - 1)

    def _apply_attn(self, block: nn.Module, h: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor | None) -> torch.Tensor:
        return h if isinstance(block, nn.Identity) else block(h, ctx, ctx_mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, _, hgt, wid = x.shape
        if hgt % self.multiple or wid % self.multiple:
            raise ValueError(f"image sides must be multiples of {self.multiple}, got {hgt}x{wid}")
        if mask is None:
            mask = x.new_zeros(b, self.cfg.mask_channels, hgt, wid)
        if context is None:  # one zero token: cross-attention then adds a constant
            context, context_mask = x.new_zeros(b, 1, self.cfg.context_dim), None
        temb = self.time_mlp(timestep_embedding(t, self.cfg.base_width).to(x.dtype))  # (B, 4*base)
        h = self.stem(torch.cat([x, mask.to(x.dtype)], dim=1))  # (B, base, H, W)
        hs = [h]
        blocks = iter(zip(self.down, self.down_attn))
        levels = len(self.cfg.channel_mults)
        for i in range(levels):
            for _ in range(self.cfg.blocks_per_level):
                res, attn = next(blocks)
                h = self._apply_attn(attn, res(h, temb), context, context_mask)
                hs.append(h)
            if i < levels - 1:
                h = self.downsample[i](h)  # (B, C, H/2, W/2)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb), context, context_mask), temb)
        blocks = iter(zip(self.up, self.up_attn))
        for j, i in enumerate(reversed(range(levels))):
            for _ in range(self.cfg.blocks_per_level + 1):
                res, attn = next(blocks)
                h = self._apply_attn(attn, res(torch.cat([h, hs.pop()], dim=1), temb), context, context_mask)
            if i > 0:
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
        return self.head(h)  # (B, image_channels, H, W)
