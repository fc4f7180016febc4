"""Events yielded by the core's long-running generators (training, prediction, export).

They are small frozen dataclasses so a CLI progress bar and a napari thread worker can
consume the same generator. Only ``Preview`` carries arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, TypeVar

import numpy as np

R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """Work advanced: ``done`` of ``total`` units (``total`` None when open-ended)."""

    done: int
    total: int | None
    elapsed: float = 0.0
    message: str = ""
    remaining: float | None = None  # seconds left when known directly (time-limited work)

    @property
    def eta(self) -> float | None:
        """Seconds left: ``remaining`` if given, else extrapolated linearly; None when unknown."""
        if self.remaining is not None:
            return self.remaining
        if not self.total or self.done <= 0:
            return None
        return self.elapsed * (self.total - self.done) / self.done


@dataclass(frozen=True)
class LossReport:
    """Training loss averaged since the previous report."""

    step: int
    loss: float
    elapsed: float


@dataclass(frozen=True)
class ValidationReport:
    """Validation metrics at a training step; ``best`` is True if this is the best so far."""

    step: int
    metrics: dict[str, float]
    best: bool
    elapsed: float


@dataclass(frozen=True)
class Preview:
    """Current prediction of one image during training (probabilities: (K, H, W))."""

    step: int
    index: int
    probabilities: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    uncertainty: np.ndarray | None = field(default=None, repr=False)  # (H, W) epistemic, if asked for


@dataclass(frozen=True)
class Message:
    """Something the user should read (device chosen, fallbacks, warnings)."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class RunSetup:
    """Where and how a training run steps, once it has sized itself: ``device`` described
    ('CPU (2 threads)'), ``precision`` the autocast dtype (None: float32), ``batch_size`` patches
    of ``patch`` extents per step."""

    device: str
    precision: str | None
    batch_size: int
    patch: tuple[int, ...]

    @property
    def where(self) -> str:
        """'CPU (2 threads) with bfloat16 autocast'."""
        return self.device + (f" with {self.precision} autocast" if self.precision else "")

    @property
    def sizes(self) -> str:
        """'2 patches of 16 × 64 × 64 per step'."""
        return (f"{self.batch_size} patch{'es' if self.batch_size != 1 else ''} of "
                f"{' × '.join(str(int(p)) for p in self.patch)} per step")

    @property
    def text(self) -> str:
        """The line a front end prints: 'training on WHERE, SIZES'."""
        return f"training on {self.where}, {self.sizes}"


@dataclass(frozen=True)
class Finished:
    """The generator's last event: figures about the run (steps, images...). Its result is the
    generator's return value, not part of the event."""

    summary: dict[str, Any] = field(default_factory=dict)


def run_to_end(events: Generator[Any, None, R], on_event: Callable[[Any], None] | None = None) -> R:
    """Drive a core generator to its end, passing each event to ``on_event``; return its result."""
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def relay(events: Generator[Any, None, R], change: Callable[[Any], Any]) -> Generator[Any, None, R]:
    """Re-yield an inner generator's events as ``change(event)`` (dropped when None); return its result."""
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        changed = change(event)
        if changed is not None:
            yield changed
