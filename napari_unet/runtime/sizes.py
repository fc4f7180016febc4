"""The batch and patch size of a training run that leaves them unset: one rule, for the CLI and the widgets.

2D images: by the device alone (``CPU_SIZES``, ``MPS_SIZES``, ``CUDA_SIZES`` by the card's memory).

3D volumes: by the device and the volumes (``CPU_VOLUME_SIZES``, ``MPS_VOLUME_SIZES``,
``CUDA_VOLUME_SIZES``: a patch side along y/x and a voxel budget per step). The patch holds
``side / z_scale`` planes, so it covers about a cube of tissue, and is never larger than the
volumes along any axis (the largest training volume's extent): a 128³ patch on 32-plane volumes
was three quarters padding, and a step of 8 of them took about a minute on a 2-core CPU. Extents
are multiples of the network's total down-sampling ``2**depth`` where the data allows (a "same"
U-Net pads other sizes up to one), and the batch fills the voxel budget. Pure: no torch, so the
rule can be shown and tested anywhere; ``runtime.device`` supplies the device's kind and memory.

3D prediction tiles (``volume_tile``): by memory, one rule for streamed and in-memory prediction. A
tile's forward pass holds about ``forward_bytes_per_voxel`` bytes per voxel of its input (the tile plus
the halo it reads on every side, clipped to the volume), which grows with the network's width and
hardly with its depth; the tile is the largest whose input fits the device's budget
(``volume_forward_budget``: ``CPU_VOLUME_FORWARD_GB`` on a CPU, a share of a GPU's free memory).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from napari_unet.config import (CPU_SIZES, CPU_VOLUME_FORWARD_GB, CPU_VOLUME_SIZES, CUDA_SIZES,
                                CUDA_VOLUME_FORWARD_SHARE, CUDA_VOLUME_SIZES, MAX_VOLUME_BATCH, MAX_VOLUME_TILE,
                                VOLUME_FORWARD_BYTES,
                                MPS_SIZES, MPS_VOLUME_SIZES)
from napari_unet.arrays.volumes import planes_for

Sizes = tuple[int, int | tuple[int, ...]]  # (batch, patch side or per-axis extents)


def image_sizes(kind: str, memory_gb: float | None = None) -> tuple[int, int]:
    """(batch, patch side) for 2D images on a device of ``kind`` ("cpu" | "cuda" | "mps")."""
    if kind == "cuda" and memory_gb is not None:
        return next(((b, p) for gb, b, p in CUDA_SIZES if memory_gb >= gb), CPU_SIZES)
    return MPS_SIZES if kind == "mps" else CPU_SIZES


def volume_budget(kind: str, memory_gb: float | None = None) -> tuple[int, int]:
    """(patch side along y/x, voxels per step) for 3D volumes on a device of ``kind``."""
    if kind == "cuda" and memory_gb is not None:
        return next(((s, v) for gb, s, v in CUDA_VOLUME_SIZES if memory_gb >= gb), CPU_VOLUME_SIZES)
    return MPS_VOLUME_SIZES if kind == "mps" else CPU_VOLUME_SIZES


def fit_extent(wanted: int, available: int | None, multiple: int) -> int:
    """A patch extent along one axis: ``wanted`` (rounded to the nearest multiple of ``multiple``,
    at least one), or the ``available`` data extent when that is smaller (rounded down to a multiple
    when it holds one)."""
    side = max(multiple, int(round(wanted / multiple)) * multiple)
    if available is None or available >= side:
        return side
    return available // multiple * multiple if available >= multiple else int(available)


def volume_patch(side: int, extents: Sequence[Sequence[int]], z_scale: float, depth: int) -> tuple[int, int, int]:
    """The default (z, y, x) patch: ``side`` along y/x, ``side / z_scale`` planes along z, each
    extent at most the largest of the volumes' ``extents`` (Z, Y, X) along that axis."""
    largest = [max(int(e[axis]) for e in extents) for axis in range(3)] if extents else [None] * 3
    wanted = (planes_for(side, z_scale), side, side)
    return tuple(fit_extent(w, n, 2**depth) for w, n in zip(wanted, largest))  # type: ignore[return-value]


def volume_batch(budget: int, patch: Sequence[int]) -> int:
    """Patches of extents ``patch`` per step that fill ``budget`` voxels (1 to ``MAX_VOLUME_BATCH``)."""
    return int(min(max(budget // math.prod(int(p) for p in patch), 1), MAX_VOLUME_BATCH))


def default_sizes(kind: str, memory_gb: float | None = None, dims: int = 2,
                  extents: Sequence[Sequence[int]] = (), z_scale: float = 1.0, depth: int = 4) -> Sizes:
    """(batch, patch) for a run on a device of ``kind`` with ``memory_gb`` (GPUs): a patch side in
    2D, (z, y, x) extents in 3D sized to the volumes' spatial ``extents`` and the ``z_scale``."""
    if dims != 3:
        return image_sizes(kind, memory_gb)
    side, budget = volume_budget(kind, memory_gb)
    patch = volume_patch(side, extents, z_scale, depth)
    return volume_batch(budget, patch), patch


def describe_sizes(batch: int, patch: Sequence[int]) -> str:
    """'2 patches of 16 × 64 × 64' (extents per axis)."""
    return f"{batch} patch{'es' if batch != 1 else ''} of {' × '.join(str(int(p)) for p in patch)}"


def forward_bytes_per_voxel(base_width: int, low_precision: bool = True) -> float:
    """Bytes one 3D U-Net forward pass holds per input voxel (``VOLUME_FORWARD_BYTES``, measured in
    bf16); float32 activations take twice the width-dependent part."""
    fixed, per_channel = VOLUME_FORWARD_BYTES
    return fixed + per_channel * base_width * (1 if low_precision else 2)


def volume_forward_budget(kind: str, free_bytes: float | None = None) -> float:
    """Bytes one 3D tile's forward pass may use on a device of ``kind``: ``CUDA_VOLUME_FORWARD_SHARE``
    of a CUDA card's ``free_bytes``, ``CPU_VOLUME_FORWARD_GB`` elsewhere (MPS shares the RAM)."""
    if kind == "cuda" and free_bytes is not None:
        return CUDA_VOLUME_FORWARD_SHARE * free_bytes
    return CPU_VOLUME_FORWARD_GB * 2**30


def volume_tile(budget: float, bytes_per_voxel: float, halo: int, align: int,
                shape: Sequence[int] | None = None, cap: int = MAX_VOLUME_TILE) -> int:
    """The largest 3D tile side (a multiple of ``align``, at least one ``align``, at most ``cap``)
    whose input, the tile plus ``halo`` voxels on every side per axis (clipped to the volume's
    ``shape`` padded to ``align``, when given), needs at most ``budget`` bytes at ``bytes_per_voxel``."""
    best, side = align, align
    while side <= cap:
        extents = [side + 2 * halo] * 3 if shape is None else \
            [min(side + 2 * halo, -(-int(n) // align) * align) for n in shape]
        if math.prod(extents) * bytes_per_voxel > budget:
            break
        best, side = side, side + align
    return best
