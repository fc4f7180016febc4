"""The noise process, separate from the network: DDPM training targets and DDIM sampling.

Notation of Ho et al. 2020 (DDPM) and Song et al. 2021 (DDIM): ``alpha_bar[t]`` is the
cumulative product of ``1 - beta``; a noisy sample is
``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps`` (DDPM eq. 4). The network predicts
either ``eps`` or ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (Salimans & Ho 2022).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["linear", "cosine"]
Prediction = Literal["epsilon", "v"]


def make_betas(schedule: Schedule, steps: int = 1000) -> torch.Tensor:
    """(steps,) float64 noise variances: DDPM's linear 1e-4..0.02, or Nichol & Dhariwal's cosine."""
    if schedule == "linear":
        scale = 1000.0 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        x = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        f = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2  # (steps + 1,)
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}: use linear or cosine")


def _bcast(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather (T,) ``values`` at (B,) ``t`` and shape them (B, 1, ..., 1) like ``like``."""
    out = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.view(-1, *([1] * (like.ndim - 1)))


class NoiseSchedule:
    """DDPM forward process and the conversions between x0, eps and v."""

    def __init__(self, schedule: Schedule = "cosine", steps: int = 1000, prediction: Prediction = "v") -> None:
        if prediction not in ("epsilon", "v"):
            raise ValueError(f"unknown prediction type {prediction!r}: use epsilon or v")
        self.steps, self.prediction = steps, prediction
        self.betas = make_betas(schedule, steps)  # (T,)
        self.alpha_bar = torch.cumprod(1.0 - self.betas, dim=0)  # (T,)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (DDPM eq. 4); x0, noise (B, ...), t (B,)."""
        ab = _bcast(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0."""
        ab = _bcast(self.alpha_bar, t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output: eps or v."""
        return noise if self.prediction == "epsilon" else self.velocity(x0, noise, t)

    def split(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by a network output at x_t."""
        ab = _bcast(self.alpha_bar, t, x_t)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        if self.prediction == "epsilon":
            eps = output
            return (x_t - s * eps) / a, eps
        # v-prediction: x0 = a x_t - s v, eps = s x_t + a v (since a^2 + s^2 = 1)
        return a * x_t - s * output, s * x_t + a * output


class DDIMSampler:
    """Deterministic (eta = 0) or stochastic DDIM updates over a subset of the training timesteps."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0, clip: float | None = 1.0) -> None:
        if not 1 <= steps <= schedule.steps:
            raise ValueError(f"DDIM steps must be in 1..{schedule.steps}, got {steps}")
        self.schedule, self.eta, self.clip = schedule, eta, clip
        self.set_timesteps(steps)

    def set_timesteps(self, steps: int) -> None:
        """Evenly spaced timesteps from high noise to low ("trailing": the first is T - 1)."""
        ratio = self.schedule.steps / steps
        self.timesteps = [int(round(self.schedule.steps - 1 - i * ratio)) for i in range(steps)]

    def previous(self, i: int) -> int:
        """The timestep after step ``i`` (-1 = clean image)."""
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1

    def step(self, output: torch.Tensor, i: int, x_t: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One update from timestep ``timesteps[i]``; returns (x_prev, predicted x0)."""
        t, t_prev = self.timesteps[i], self.previous(i)
        tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
        # 1. predicted x0 and eps from the network output (DDIM eq. 9)
        x0, eps = self.schedule.split(output, x_t, tt)
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
            ab = _bcast(self.schedule.alpha_bar, tt, x_t)
            eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()  # keep eps consistent with the clipped x0
        ab_t = float(self.schedule.alpha_bar[t])
        ab_prev = float(self.schedule.alpha_bar[t_prev]) if t_prev >= 0 else 1.0
        # 2. sigma_t (DDIM eq. 16); eta = 0 is the deterministic DDIM, eta = 1 DDPM-like
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(max(1 - ab_t / ab_prev, 0.0))
        # 3. x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z (DDIM eq. 12)
        x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            x_prev = x_prev + sigma * z
        return x_prev, x0
