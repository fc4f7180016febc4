"""Training the diffusion model on annotated (image, mask) pairs, as a generator of events.

``DiffusionTrainer(pairs, cfg).run()`` yields ``Message``, ``Progress``, ``LossReport`` and
``Finished`` and returns a ``DiffusionBundle`` holding the EMA weights. Each step draws random
crops, applies flips/rot90 to image and prompt alike, drops the condition (mask and tags
together) with probability ``cond_drop`` for classifier-free guidance and the tags alone with the
same probability (so mask-only prompts stay in distribution), noises the crops at random timesteps and regresses the network output on eps or v (DDPM's simple loss).

Images without masks (``unannotated``) teach the look of the user's data too: they supply a
``cfg.unannotated_share`` of the crops, always with the condition dropped, so they train the
unconditional branch that classifier-free guidance starts from, while the annotated pairs alone
teach how a mask prompt shapes the image.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import replace
from typing import Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_unet.arrays.normalize import prepare_image
from napari_unet.diffusion.bundle import DiffusionBundle, build_models
from napari_unet.diffusion.config import DiffusionConfig
from napari_unet.diffusion.prompts import mask_channels, median_density, object_shapes, pack_shapes
from napari_unet.diffusion.schedulers import NoiseSchedule
from napari_unet.errors import UserError
from napari_unet.events import Finished, LossReport, Message, Progress
from napari_unet.runtime.device import autocast, describe, describe_precision, start_run

Pairs = Sequence[tuple[np.ndarray, np.ndarray]]


def image_to_model(image: np.ndarray, channels: int, percentiles: tuple[float, float]) -> np.ndarray:
    """Raw image -> (C, H, W) float32 in [-1, 1] (percentile-normalised, clipped)."""
    return np.clip(prepare_image(image, channels, percentiles) * 2 - 1, -1, 1)


def prepare_diffusion_pairs(pairs: Pairs, cfg: DiffusionConfig, names: Sequence[str] | None = None
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check the pairs; return (image (C, H, W) in [-1, 1], prompt (3, H, W)) per pair."""
    if len(pairs) == 0:
        raise UserError("no training pairs given")
    out = []
    for i, (image, mask) in enumerate(pairs):
        name = names[i] if names else f"image {i}"
        chw = image_to_model(image, cfg.model.image_channels, cfg.percentiles)
        mask = np.asarray(mask)
        if mask.ndim == 3 and mask.shape[-1] in (3, 4):
            mask = mask[..., 0]
        if mask.shape != chw.shape[1:]:
            raise UserError(f"{name}: mask shape {mask.shape} does not match image shape {chw.shape[1:]}")
        if mask.min() < 0:
            raise UserError(f"{name}: instance labels must be >= 0")
        out.append((chw, mask_channels(mask)))
    return out


def prepare_unannotated(images: Sequence[np.ndarray], cfg: DiffusionConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images without masks -> (image (C, H, W) in [-1, 1], an empty prompt (3, H, W)) per image."""
    out = []
    for image in images:
        chw = image_to_model(image, cfg.model.image_channels, cfg.percentiles)
        out.append((chw, np.zeros((cfg.model.mask_channels, *chw.shape[1:]), np.float32)))
    return out


def random_crops(data: Sequence[tuple[np.ndarray, np.ndarray]], size: int, n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n crops, images drawn by area: images (n, C, S, S), prompts (n, 3, S, S), pair indices (n,)."""
    areas = np.array([d[0].shape[1] * d[0].shape[2] for d in data], dtype=np.float64)
    idx = rng.choice(len(data), size=n, p=areas / areas.sum())
    images, prompts = [], []
    for i in idx:
        stack = np.concatenate(data[i])  # (C + 3, H, W)
        h, w = stack.shape[1:]
        if h < size or w < size:  # mirror small images up to the crop size
            ph, pw = max(size - h, 0), max(size - w, 0)
            stack = np.pad(stack, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > max(ph, pw) else "wrap")
            h, w = stack.shape[1:]
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = stack[:, y:y + size, x:x + size]
        crop = np.rot90(crop, int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        c = data[i][0].shape[0]
        images.append(crop[:c])
        prompts.append(crop[c:])
    return np.stack(images).astype(np.float32), np.stack(prompts).astype(np.float32), idx


def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameter by parameter."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), net.parameters()):
            e.lerp_(p.detach(), 1 - decay)


class DiffusionTrainer:
    """One diffusion training run; ``stop()`` ends it at the next step, keeping the EMA weights."""

    def __init__(self, pairs: Pairs, cfg: DiffusionConfig = DiffusionConfig(), *,
                 tags: Sequence[Sequence[str]] | None = None, names: Sequence[str] | None = None,
                 unannotated: Sequence[np.ndarray] | None = None) -> None:
        """``unannotated``: extra images without masks (see the module docstring)."""
        if tags is not None and len(tags) != len(pairs):
            raise UserError(f"got tags for {len(tags)} images but {len(pairs)} training pairs")
        if not 0.0 <= cfg.unannotated_share < 1.0:
            raise UserError(f"the share of crops from unannotated images must be in [0, 1), got {cfg.unannotated_share}")
        vocabulary = cfg.tags or tuple(sorted({t for tl in (tags or []) for t in tl}))
        self.cfg = replace(cfg, tags=tuple(vocabulary))
        self._pairs, self._tags, self._names = pairs, tags, names
        self._unannotated = list(unannotated or [])
        self._stop = threading.Event()
        self._current: tuple[torch.nn.Module, torch.nn.Module, int] | None = None
        self._shapes: np.ndarray | None = None
        self._prompt_meta: dict[str, float] = {}

    def snapshot(self) -> DiffusionBundle | None:
        """A copy of the current EMA model (e.g. to save while training runs); None before the first step."""
        if self._current is None:
            return None
        ema, encoder, step = self._current
        return DiffusionBundle(copy.deepcopy(ema).cpu(), copy.deepcopy(encoder).cpu().eval(), self.cfg,
                               {"training": {"steps": step, "snapshot": True}, **self._prompt_meta}, self._shapes)

    def _collect_shapes(self) -> None:
        """Keep annotated object shapes and their density for automatic prompts at sampling time."""
        masks = [np.asarray(m)[..., 0] if np.ndim(m) == 3 else np.asarray(m) for _, m in self._pairs]
        try:
            self._shapes = pack_shapes(object_shapes(masks), seed=self.cfg.seed)
        except UserError:  # no whole object in the annotations: automatic prompts need source masks
            self._shapes = None
        self._prompt_meta = {"density": round(median_density(masks), 3)}

    def _crops(self, data: list, extra: list, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """A batch of crops: annotated first, then ``n_extra`` (Binomial(batch, share)) from ``extra``.

        Returns images, prompts, the annotated crops' pair indices and ``n_extra``.
        """
        b = self.cfg.batch_size
        n_extra = int(rng.binomial(b, self.cfg.unannotated_share)) if extra else 0
        n_extra = min(n_extra, b - 1)  # every batch keeps an annotated crop: the mask prompt is the point
        images, prompts, idx = random_crops(data, self.cfg.crop_size, b - n_extra, rng)
        if n_extra:
            more_images, more_prompts, _ = random_crops(extra, self.cfg.crop_size, n_extra, rng)
            images, prompts = np.concatenate([images, more_images]), np.concatenate([prompts, more_prompts])
        return images, prompts, idx, n_extra

    def stop(self) -> None:
        """Ask the run to end at its next step."""
        self._stop.set()

    def run(self) -> Generator[object, None, DiffusionBundle]:
        cfg = self.cfg
        if cfg.steps is None and cfg.time_limit is None:
            raise UserError("give a number of steps or a time limit")
        multiple = 2 ** (len(cfg.model.channel_mults) - 1)
        if cfg.crop_size % multiple:
            raise UserError(f"the crop size must be a multiple of {multiple}, got {cfg.crop_size}")
        rng, device, dtype = start_run(cfg.seed, cfg.threads, cfg.device, cfg.low_precision)
        yield Message(f"diffusion training on {describe_precision(device, dtype)}")
        data = prepare_diffusion_pairs(self._pairs, cfg, self._names)
        extra = prepare_unannotated(self._unannotated, cfg)
        self._collect_shapes()
        tag_lists = [list(t) for t in self._tags] if self._tags is not None else [[] for _ in data]
        net, encoder = build_models(cfg)
        net.to(device).train()
        encoder.to(device).train()
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        params = list(net.parameters()) + list(encoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        schedule = NoiseSchedule(cfg.schedule, cfg.train_timesteps, cfg.prediction)
        gen = torch.Generator().manual_seed(cfg.seed)
        n_params = sum(p.numel() for p in net.parameters())
        unannotated = f" + {len(extra)} without masks ({cfg.unannotated_share:.0%} of the crops)" if extra else ""
        yield Message(f"{len(data)} training image(s){unannotated}, {n_params / 1e6:.2f} M parameters, "
                      f"{cfg.batch_size} x {cfg.crop_size}² crops")
        start = time.perf_counter()
        step, losses, last_report = 0, [], start

        def fraction() -> float:
            parts = [step / cfg.steps] if cfg.steps else []
            parts += [(time.perf_counter() - start) / cfg.time_limit] if cfg.time_limit else []
            return max(parts)

        while not self._stop.is_set() and fraction() < 1.0:
            images, prompts, idx, n_extra = self._crops(data, extra, rng)
            drop = rng.random(cfg.batch_size) < cfg.cond_drop  # (B,) classifier-free guidance: no prompt at all
            drop[len(idx):] = True  # the crops of unannotated images have no prompt to keep
            drop_tags = drop | (rng.random(cfg.batch_size) < cfg.cond_drop)  # mask-only prompts occur too
            prompts[drop] = 0.0
            batch_tags = [[] if d else tag_lists[i] for i, d in zip(idx, drop_tags)] + [[]] * n_extra
            x0 = torch.from_numpy(images).to(device)  # (B, C, S, S)
            cond = torch.from_numpy(prompts).to(device)  # (B, 3, S, S)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, cfg.train_timesteps, (cfg.batch_size,), generator=gen).to(device)
            x_t = schedule.add_noise(x0, noise, t)
            target = schedule.target(x0, noise, t)
            with autocast(device, dtype):
                context, valid = encoder.encode(batch_tags, device)  # (B, M, D), (B, M)
                out = net(x_t, t, cond, context, valid)  # (B, C, S, S)
            loss = F.mse_loss(out.float(), target)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
            step += 1
            update_ema(ema, net, min(cfg.ema_decay, (1 + step) / (10 + step)))
            losses.append(float(loss.detach()))
            self._current = (ema, encoder, step)
            now = time.perf_counter()
            remaining = None if cfg.time_limit is None else max(cfg.time_limit - (now - start), 0.0)
            yield Progress(step, cfg.steps, now - start, f"step {step}", remaining)
            if now - last_report >= 1.0:
                yield LossReport(step, float(np.mean(losses)), now - start)
                losses, last_report = [], now

        elapsed = time.perf_counter() - start
        encoder.eval()
        meta = {"training": {"steps": step, "seconds": round(elapsed, 1), "device": describe(device),
                             "images": len(data), "unannotated_images": len(extra),
                             "stopped_early": self._stop.is_set()}, **self._prompt_meta}
        bundle = DiffusionBundle(ema, encoder, cfg, meta, self._shapes)
        yield Finished({"steps": step, "seconds": elapsed})
        return bundle


def train_diffusion(pairs: Pairs, cfg: DiffusionConfig = DiffusionConfig(), **kwargs) -> Generator[object, None, DiffusionBundle]:
    """Shortcut for ``DiffusionTrainer(pairs, cfg, **kwargs).run()``."""
    return (yield from DiffusionTrainer(pairs, cfg, **kwargs).run())
