"""Drawing synthetic images for mask prompts with DDIM and classifier-free guidance.

``synthesize(bundle, masks, cfg)`` is a generator: it yields ``Progress`` once per denoising
step and returns one uint8 image per mask. The initial noise of image ``i`` comes from
``seed + i`` alone, so results do not depend on the batch size or device order of work.
"""

from __future__ import annotations

import time
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from napari_unet.diffusion.bundle import DiffusionBundle
from napari_unet.diffusion.config import SampleConfig
from napari_unet.diffusion.prompts import mask_channels
from napari_unet.diffusion.schedulers import DDIMSampler
from napari_unet.errors import UserError
from napari_unet.events import Finished, Progress, relay
from napari_unet.runtime.device import autocast, low_precision_dtype

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, C, H, W), t (B,)) -> output


def ddim_loop(denoise: Denoiser, sampler: DDIMSampler, noise: torch.Tensor,
              generator: torch.Generator | None = None) -> Generator[int, None, torch.Tensor]:
    """Run DDIM from pure ``noise`` (B, C, H, W); yields the step index, returns x0 (B, C, H, W)."""
    x = noise
    for i, t in enumerate(sampler.timesteps):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x, _ = sampler.step(denoise(x, tt), i, x, generator)
        yield i
    return x


def guided_denoiser(bundle: DiffusionBundle, prompts: torch.Tensor, tags: Sequence[Sequence[str]],
                    guidance: float, dtype: torch.dtype | None) -> Denoiser:
    """The network with its prompt bound; guidance != 1 mixes in the unconditional output."""
    device = prompts.device
    ctx, valid = bundle.encoder.encode(tags, device)  # (B, M, D), (B, M)
    b = prompts.shape[0]
    if guidance != 1.0:
        u_ctx, u_valid = bundle.encoder.encode([[] for _ in range(b)], device)
        prompts = torch.cat([prompts, torch.zeros_like(prompts)])  # (2B, 3, H, W)
        ctx, valid = torch.cat([ctx, u_ctx]), torch.cat([valid, u_valid])

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xx, tt = (torch.cat([x, x]), torch.cat([t, t])) if guidance != 1.0 else (x, t)
        with torch.inference_mode(), autocast(device, dtype):
            out = bundle.net(xx, tt, prompts, ctx, valid).float()  # (B or 2B, C, H, W)
        if guidance == 1.0:
            return out
        cond, uncond = out[:b], out[b:]
        return uncond + guidance * (cond - uncond)  # classifier-free guidance (Ho & Salimans 2022)

    return denoise


def _pad_to(mask: np.ndarray, multiple: int) -> np.ndarray:
    h, w = mask.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    return np.pad(mask, ((0, ph), (0, pw)), mode="reflect") if ph or pw else mask


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Model range [-1, 1] -> uint8 [0, 255]."""
    return np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)


def synthesize(bundle: DiffusionBundle, masks: Sequence[np.ndarray], cfg: SampleConfig = SampleConfig(),
               tags: Sequence[Sequence[str]] | None = None) -> Generator[object, None, list[np.ndarray]]:
    """Generate one image per mask prompt; yields ``Progress`` per step, returns uint8 (H, W) images."""
    if not len(masks):
        raise UserError("no mask prompts given")
    if tags is not None and len(tags) != len(masks):
        raise UserError(f"got tags for {len(tags)} prompts but {len(masks)} masks")
    if cfg.steps < 1 or cfg.steps > bundle.config.train_timesteps:
        raise UserError(f"--steps must be in 1..{bundle.config.train_timesteps}, got {cfg.steps}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = next(bundle.net.parameters()).device
    dtype = low_precision_dtype(device, cfg.low_precision)
    multiple = bundle.net.multiple
    sampler = DDIMSampler(bundle.schedule, cfg.steps, cfg.eta)
    tag_lists = [list(t) for t in tags] if tags is not None else [[] for _ in masks]
    c = bundle.config.model.image_channels
    results: list[np.ndarray] = []
    total, done, start = len(masks) * cfg.steps, 0, time.perf_counter()
    i = 0
    while i < len(masks):
        shape = np.asarray(masks[i]).shape
        j = i
        while j < len(masks) and j - i < cfg.batch_size and np.asarray(masks[j]).shape == shape:
            j += 1
        padded = [_pad_to(np.asarray(m), multiple) for m in masks[i:j]]
        prompts = torch.from_numpy(np.stack([mask_channels(m) for m in padded])).to(device)  # (b, 3, H', W')
        noise = torch.stack([torch.randn((c, *padded[0].shape), generator=torch.Generator().manual_seed(cfg.seed + k))
                             for k in range(i, j)]).to(device)  # (b, C, H', W')
        gen = torch.Generator(device=device).manual_seed(cfg.seed + i) if cfg.eta > 0 else None
        denoise = guided_denoiser(bundle, prompts, tag_lists[i:j], cfg.guidance, dtype)
        before = done  # steps x images of the earlier batches
        x = yield from relay(ddim_loop(denoise, sampler, noise, gen),
                             lambda k: Progress(before + (k + 1) * (j - i), total, time.perf_counter() - start,
                                                f"image {j}/{len(masks)}"))
        done = before + cfg.steps * (j - i)
        arr = x.float().cpu().numpy()[:, :, : shape[0], : shape[1]]  # (b, C, H, W)
        results += [to_uint8(a[0] if c == 1 else np.moveaxis(a, 0, -1)) for a in arr]
        i = j
    yield Finished({"images": len(results), "seconds": time.perf_counter() - start})
    return results
