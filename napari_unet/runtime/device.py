"""Choosing the device and the numeric precision for training and prediction."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import ContextManager

import numpy as np

import torch

from napari_unet.arrays.volumes import patch_shape
from napari_unet.config import DEVICES, TrainConfig
from napari_unet.errors import UserError
from napari_unet.events import RunSetup
from napari_unet.runtime import sizes


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice is an error."""
    name = name.lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for, but no CUDA GPU is available (use --device auto or cpu)")
    if name == "mps" and not has_mps:
        raise UserError("MPS was asked for, but Apple's Metal backend is not available")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}: use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def low_precision_dtype(device: torch.device, wanted: bool | None) -> torch.dtype | None:
    """The autocast dtype to use, or None for fp32.

    ``wanted=None`` means automatic: bf16 on CPUs with native bf16 and on CUDA GPUs that
    support it, fp16 on older CUDA GPUs, fp32 elsewhere.
    """
    if wanted is False:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if (wanted or cpu_supports_bf16()) else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """An autocast context, or a no-op one for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def channels_last_format(dims: int) -> torch.memory_format:
    """The channels-last memory format of ``dims``-D batches: with low-precision autocast, oneDNN's
    convolutions run faster on it (3D on a 2-core CPU in bf16: docs/benchmarks.md, "3D defaults")."""
    return torch.channels_last_3d if dims == 3 else torch.channels_last


def describe(device: torch.device) -> str:
    """A short human-readable device name ("CPU (2 threads)", "CUDA: NVIDIA H100, 80 GB")."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA: {props.name}, {props.total_memory / 1e9:.0f} GB"
    if device.type == "mps":
        return "MPS (Apple GPU)"
    return f"CPU ({torch.get_num_threads()} threads)"


def memory_gb(device: torch.device) -> float | None:
    """A CUDA card's memory in GB (None for other devices)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 1e9


def default_sizes(device: torch.device, dims: int = 2, extents: Sequence[Sequence[int]] = (),
                  z_scale: float = 1.0, depth: int = 4) -> tuple[int, int | tuple[int, ...]]:
    """(batch size, patch) a training run uses on ``device`` when the user leaves them unset.

    2D: a patch side, ``CPU_SIZES`` / ``MPS_SIZES`` / ``CUDA_SIZES`` by the card's memory. 3D:
    (z, y, x) extents that fit the volumes' ``extents`` and follow the ``z_scale``, and a batch
    that fills the device's voxel budget (``runtime.sizes``). Running out of GPU memory still
    halves the batch.
    """
    return sizes.default_sizes(device.type, memory_gb(device), dims, extents, z_scale, depth)


def volume_forward_budget(device: torch.device) -> float:
    """Bytes one 3D prediction tile's forward pass may use on ``device`` (``sizes.volume_forward_budget``:
    a fixed budget on a CPU, a share of the free memory of a CUDA card)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return sizes.volume_forward_budget("cuda", float(free))
    return sizes.volume_forward_budget(device.type)


def with_device_sizes(cfg: TrainConfig, device: torch.device,
                      extents: Sequence[Sequence[int]] = ()) -> TrainConfig:
    """``cfg`` (a ``TrainConfig``) with its unset (None) batch and patch size filled for ``device``
    and, in 3D, for volumes of spatial ``extents`` (Z, Y, X). A 3D patch the user set gets the
    batch that fills the device's voxel budget."""
    from dataclasses import replace

    dims = cfg.model.dims
    batch, patch = default_sizes(device, dims, extents, cfg.z_scale, cfg.model.depth)
    if dims == 3 and cfg.patch_size:
        batch = sizes.volume_batch(sizes.volume_budget(device.type, memory_gb(device))[1], patch_shape(cfg))
    return replace(cfg, batch_size=cfg.batch_size or batch,
                   patch_size=cfg.patch_size or patch)


def release_cached_memory(device: torch.device) -> None:
    """Hand the GPU memory torch caches back to the driver (after a run or an out-of-memory step),
    so napari and other programs can use it."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def start_run(seed: int, threads: int | None, device_name: str,
              low_precision: bool | None) -> tuple[np.random.Generator, torch.device, torch.dtype | None]:
    """Seed torch and numpy, set torch threads, pick the device and its low-precision dtype."""
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    return np.random.default_rng(seed), device, low_precision_dtype(device, low_precision)


def run_setup(device: torch.device, dtype: torch.dtype | None, batch_size: int, patch: Sequence[int]) -> RunSetup:
    """The ``RunSetup`` event of a training run on ``device`` with ``dtype`` autocast (None: float32)."""
    return RunSetup(describe(device), str(dtype).split('.')[-1] if dtype else None, batch_size,
                    tuple(int(p) for p in patch))


def describe_precision(device: torch.device, dtype: torch.dtype | None) -> str:
    """'CPU (2 threads) with bfloat16 autocast' style description of where training runs."""
    return run_setup(device, dtype, 1, ()).where
