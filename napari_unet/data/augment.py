"""Batched random augmentation in torch, run on the training device.

Geometry (elastic deformation, flips, 90-degree rotations) is applied identically to the
image, the labels and the optional loss-weight map; intensity changes touch the image only.

Elastic deformation follows the U-Net paper (Ronneberger et al. 2015): random displacement
vectors on a coarse ``grid x grid`` lattice of control points, drawn from N(0, sigma) pixels,
are upsampled with cubic convolution (PyTorch's bicubic kernel, applied separably, so 3D
works too) to a dense field. Flips / rot90 are folded into the same sampling grid, so one
``grid_sample`` call per tensor does all the geometry. Coordinates use ``align_corners=True``
everywhere: -1 and +1 are the centres of the first and last pixels, so a pixel displacement
``d`` along an axis of length ``n`` is ``2 d / (n - 1)`` in normalised units, and flips are
exact. Borders are handled by reflection. Image and weights are sampled bilinearly; labels
by nearest neighbour, so every output label is a copy of an input label (``-1`` = ignore
stays ``-1`` and is never blended into other values).

When no elastic deformation is requested, flips / rot90 use ``torch.flip`` / ``torch.rot90``
and are exact for every tensor.

Randomness comes only from the optional ``torch.Generator``; draws are made on the
generator's device and moved to the data's device, so results are reproducible given a
seeded (CPU) generator whatever the device of the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_unet.config import AugmentConfig

__all__ = ["augment_batch", "elastic_deform", "elastic_grid", "random_displacement", "warp"]


# --------------------------------------------------------------------------------------
# random numbers
# --------------------------------------------------------------------------------------
def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> Tensor:
    """U(0, 1) float32 of ``shape`` on ``device``, drawn from ``gen``."""
    return torch.rand(shape, generator=gen, device=_gen_device(gen, device)).to(device)


def _randn(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> Tensor:
    """N(0, 1) float32 of ``shape`` on ``device``, drawn from ``gen``."""
    return torch.randn(shape, generator=gen, device=_gen_device(gen, device)).to(device)


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
def _cubic_matrix(n_out: int, n_in: int, device: torch.device) -> Tensor:
    """(n_out, n_in) matrix of 1-D cubic-convolution upsampling (corners aligned)."""
    eye = torch.eye(n_in, device=device).reshape(1, n_in, n_in, 1)  # (1, K, n_in, 1)
    up = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=True)  # (1, K, n_out, 1)
    return up[0, :, :, 0].T.contiguous()  # (n_out, K)


def _coarse_displacement(
    batch: int, nd: int, grid: int, sigma: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Control-point displacements (B, nd, g, ..., g) ~ N(0, sigma) px, channels in axis order."""
    if nd not in (2, 3):
        raise ValueError(f"elastic deformation supports 2D or 3D, got {nd}D")
    grid = max(int(grid), 1)
    return _randn((batch, nd) + (grid,) * nd, generator, device) * sigma  # (B, nd, g, g[, g])


def random_displacement(
    batch: int,
    shape: tuple[int, ...],
    grid: int,
    sigma: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Smooth random displacement field in pixels, (B, nd, *shape), channels in axis order.

    Control-point displacements ~ N(0, sigma) on a ``grid``-per-axis lattice spanning the
    image corner to corner, interpolated separably with cubic convolution. Same random draws
    (and field) as ``elastic_grid`` uses for the same generator state.
    """
    device = torch.device(device)
    coarse = _coarse_displacement(batch, len(shape), grid, sigma, generator, device)
    mats = [_cubic_matrix(n, coarse.shape[-1], device) for n in shape]  # each (n, g)
    if len(shape) == 2:
        return torch.einsum("bcij,yi,xj->bcyx", coarse, *mats)  # (B, 2, H, W)
    return torch.einsum("bcijk,zi,yj,xk->bczyx", coarse, *mats)  # (B, 3, D, H, W)


def _dihedral_matrices(flips: Tensor, k: Tensor) -> Tensor:
    """(B, nd, nd) matrices in (x, y[, z]) order: flip axes, then rotate (x, y) by k*90 deg.

    ``flips`` is (B, nd) bool in *array* axis order; ``k`` is (B,) int in [0, 3].
    """
    b, nd = flips.shape
    sign = 1.0 - 2.0 * flips.flip(1).float()  # (B, nd) in (x, y[, z]) order
    mat = torch.diag_embed(sign)  # (B, nd, nd)
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=flips.device)[k]  # (B,)
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=flips.device)[k]  # (B,)
    rot = torch.eye(nd, device=flips.device).repeat(b, 1, 1)  # (B, nd, nd)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
    return rot @ mat


def elastic_grid(coarse: Tensor, shape: tuple[int, ...], transform: Tensor | None = None) -> Tensor:
    """Normalised grid_sample grid (B, *shape, nd) for ``transform @ p + displacement(p)``.

    ``coarse``: (B, nd, g, ..., g) control-point displacements in pixels (axis order);
    ``transform``: (B, nd, nd) on (x, y[, z]) normalised coordinates (None = identity).
    Everything is linear in the inputs, so the whole grid is ONE batched matmul
    ``L @ R`` with L (rows, K) over the leading axes and R (B, K, W * nd) over the last axis:
    K = the upsampled control rows, a column of ones and the leading axes' coordinates.
    """
    b, nd, g = coarse.shape[0], coarse.shape[1], coarse.shape[-1]
    dev = coarse.device
    if transform is None:
        transform = torch.eye(nd, device=dev).expand(b, nd, nd)
    mat = transform.to(dev, torch.float32)  # (B, nd, nd) component order
    # control points in normalised units, grid-component order (x, y[, z])
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape[::-1]], device=dev)  # (nd,)
    cn = coarse.flip(1) * scale.view((1, nd) + (1,) * nd)  # (B, nd, g, ..., g)
    mats = [_cubic_matrix(n, g, dev) for n in shape]  # each (n_axis, g)
    # last axis: (B, nd, g.., g) x (W, g) -> (B, g^(nd-1), W, nd)
    right = torch.einsum("bc...j,xj->b...xc", cn, mats[-1]).reshape(b, g ** (nd - 1), -1)
    left = mats[0]
    for m in mats[1:-1]:
        left = torch.kron(left, m)  # (prod(leading), g^(nd-1))
    # identity / transform part: x varies along the last axis, the others along the rows
    coords = [torch.linspace(-1.0, 1.0, n, device=dev) for n in shape[::-1]]  # component order
    rows = torch.meshgrid(*[coords[c] for c in range(nd - 1, 0, -1)], indexing="ij")  # leading axes
    lead = [r.reshape(-1, 1) for r in rows[::-1]]  # component 1..nd-1, each (rows, 1)
    ones = torch.ones_like(lead[0])
    left = torch.cat([left, ones] + lead, dim=1)  # (rows, K)
    x_row = (mat[:, :, 0].unsqueeze(1) * coords[0].view(1, -1, 1)).reshape(b, 1, -1)  # (B, 1, W*nd)
    w = shape[-1]
    lead_rows = [mat[:, :, c].unsqueeze(1).expand(b, w, nd).reshape(b, 1, -1) for c in range(1, nd)]
    right = torch.cat([right, x_row] + lead_rows, dim=1)  # (B, K, W*nd)
    return torch.matmul(left, right).view((b,) + tuple(shape) + (nd,))  # (B, *shape, nd)


def warp(
    image: Tensor | None, labels: Tensor | None, weights: Tensor | None, grid: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Resample (B, C, *S) image and (B, *S) weights bilinearly, (B, *S) labels by nearest.

    ``grid`` is (B, *S, nd), normalised, ``align_corners=True``. Half-precision data is
    sampled in float32 (a half-precision grid would be off by pixels) and cast back.
    """
    kw = dict(padding_mode="reflection", align_corners=True)
    out_img = out_w = out_lab = None

    def _bilinear(x: Tensor) -> Tensor:  # (B, C, *S)
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        out = F.grid_sample(work, grid.to(work.dtype), mode="bilinear", **kw)
        return out.to(x.dtype)

    if image is not None:
        out_img = _bilinear(image)  # (B, C, *S)
    if weights is not None:
        out_w = _bilinear(weights.unsqueeze(1))[:, 0]  # (B, *S)
    if labels is not None:
        # float32 holds integers exactly up to 2**24; use float64 beyond that
        lo, hi = torch.aminmax(labels) if labels.numel() else (labels.new_zeros(()),) * 2
        big = max(-int(lo), int(hi)) >= 2**24
        lab = labels.unsqueeze(1).to(torch.float64 if big else torch.float32)  # (B, 1, *S)
        picked = F.grid_sample(lab, grid.to(lab.dtype), mode="nearest", **kw)[:, 0]  # (B, *S)
        out_lab = picked.to(labels.dtype)  # exact: nearest returns stored integers
    return out_img, out_lab, out_w


def elastic_deform(
    image: Tensor,
    labels: Tensor | None = None,
    weights: Tensor | None = None,
    grid: int = 3,
    sigma: float = 10.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Apply one random elastic deformation per sample to image (B, C, *S), labels, weights."""
    shape = tuple(image.shape[2:])
    coarse = _coarse_displacement(image.shape[0], len(shape), grid, sigma, generator, image.device)
    coords = elastic_grid(coarse, shape)  # (B, *S, nd)
    out_img, out_lab, out_w = warp(image, labels, weights, coords)
    assert out_img is not None
    return out_img, out_lab, out_w


def _dihedral_exact(t: Tensor, flip_dims: list[int], k: int) -> Tensor:
    """Exact flip (negative spatial dims) then rot90 over the last two dims of one sample."""
    if flip_dims:
        t = torch.flip(t, flip_dims)
    if k:
        t = torch.rot90(t, k, dims=(-2, -1))
    return t


# --------------------------------------------------------------------------------------
# intensity
# --------------------------------------------------------------------------------------
def _intensity(x: Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    """Gamma (on the per-sample min/max-normalised image), scale, shift, noise. x: (B, C, *S)."""
    b, dev = x.shape[0], x.device
    view = (b,) + (1,) * (x.ndim - 1)
    u = _rand((3, b), gen, dev)  # (3, B) gamma, scale, shift
    if cfg.gamma > 0:
        flat = x.reshape(b, -1)  # (B, N)
        lo = flat.amin(1).view(view)
        span = (flat.amax(1).view(view) - lo).clamp_min(1e-8)
        g = torch.exp((2 * u[0] - 1) * cfg.gamma).view(view).to(x.dtype)
        x = ((x - lo) / span).clamp(0, 1).pow(g) * span + lo
    if cfg.intensity_scale > 0:
        x = x * (1 + (2 * u[1] - 1) * cfg.intensity_scale).view(view).to(x.dtype)
    if cfg.intensity_shift > 0:
        x = x + ((2 * u[2] - 1) * cfg.intensity_shift).view(view).to(x.dtype)
    if cfg.noise > 0:
        x = x + _randn(tuple(x.shape), gen, dev).to(x.dtype) * cfg.noise
    return x


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------
def augment_batch(
    image: Tensor,
    labels: Tensor,
    weights: Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Randomly augment a batch; returns (image, labels, weights) and never edits the inputs.

    When nothing applies (e.g. probability 0) the input tensors themselves are returned.

    image: (B, C, H, W) or (B, C, D, H, W) float; labels: (B, *S) integer (``-1`` = ignore);
    weights: (B, *S) float or None. Each sample is augmented with probability
    ``cfg.probability``, with its own random parameters. rot90 acts on the last two axes
    and is skipped when they differ in size; flips act on every spatial axis. ``spacing``
    (pixel size per axis, in units of the last axis's) makes the elastic displacements
    physical: ``elastic_sigma`` pixels along the last axis, ``sigma / spacing`` pixels along
    each axis, so an anisotropic volume is not warped more across its thick planes. The zoom
    factor range is ``cfg.zoom`` for 2D batches and ``cfg.zoom_3d`` for 3D ones.
    """
    nd = image.ndim - 2
    if nd not in (2, 3) or tuple(labels.shape) != (image.shape[0],) + tuple(image.shape[2:]):
        raise ValueError(f"bad shapes: image {tuple(image.shape)}, labels {tuple(labels.shape)}")
    if weights is not None and weights.shape != labels.shape:
        raise ValueError(f"weights {tuple(weights.shape)} != labels {tuple(labels.shape)}")
    b, dev, shape = image.shape[0], image.device, tuple(image.shape[2:])

    active = _rand((b,), generator, dev) < cfg.probability  # (B,)
    flips = (_rand((b, nd), generator, dev) < 0.5) & bool(cfg.flip)  # (B, nd)
    square = shape[-1] == shape[-2]
    k = (_rand((b,), generator, dev) * 4).long().clamp(max=3) * int(bool(cfg.rot90) and square)  # (B,)
    idx = torch.nonzero(active).flatten()
    if idx.numel() == 0:
        return image, labels, weights
    n = idx.numel()
    if n == b:  # no gather copies when the whole batch is augmented
        img, lab, wts = image, labels, weights
    else:
        img, lab = image[idx], labels[idx]  # (n, C, *S), (n, *S)
        wts = weights[idx] if weights is not None else None
        flips, k = flips[idx], k[idx]

    elastic = cfg.elastic and cfg.elastic_sigma > 0
    zoom = cfg.zoom if nd == 2 else cfg.zoom_3d
    if elastic or zoom > 1:
        coarse = _coarse_displacement(n, nd, cfg.elastic_grid, cfg.elastic_sigma if elastic else 0.0, generator, dev)
        if spacing is not None:
            per_axis = torch.tensor([1.0 / float(s) for s in spacing], device=dev, dtype=coarse.dtype)  # (nd,)
            coarse = coarse * per_axis.view((1, nd) + (1,) * nd)  # (n, nd, g, ..., g)
        transform = _dihedral_matrices(flips, k)  # (n, nd, nd)
        if zoom > 1:  # sampling a region 1/m the size magnifies the objects m times
            log_zoom = math.log(zoom) * (2 * _rand((n,), generator, dev) - 1)  # (n,)
            transform = transform * torch.exp(-log_zoom).view(n, 1, 1)
        coords = elastic_grid(coarse, shape, transform)  # (n, *S, nd)
        img_w, lab_w, wts_w = warp(img, lab, wts, coords)
        assert img_w is not None and lab_w is not None
        img, lab, wts = img_w, lab_w, wts_w
    elif bool(flips.any()) or bool(k.any()):
        fl, kk = flips.tolist(), k.tolist()
        dims = [[d - nd for d in range(nd) if fl[i][d]] for i in range(n)]
        img = torch.stack([_dihedral_exact(img[i], dims[i], kk[i]) for i in range(n)])
        lab = torch.stack([_dihedral_exact(lab[i], dims[i], kk[i]) for i in range(n)])
        if wts is not None:
            wts = torch.stack([_dihedral_exact(wts[i], dims[i], kk[i]) for i in range(n)])

    img = _intensity(img, cfg, generator)
    if n == b:
        return img, lab, wts
    out_img, out_lab = image.clone(), labels.clone()
    out_img[idx], out_lab[idx] = img.to(image.dtype), lab
    out_w = None
    if weights is not None and wts is not None:
        out_w = weights.clone()
        out_w[idx] = wts
    return out_img, out_lab, out_w
