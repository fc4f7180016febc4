"""Events yielded by the core's long-running generators (training, prediction, export).

They are small frozen dataclasses so a CLI progress bar and a napari thread worker can
consume the same generator. Only ``Preview`` carries arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
class Finished:
    """The generator completed; ``result`` is what it produced (model folder, outputs...)."""

    result: Any = None
    summary: dict[str, Any] = field(default_factory=dict)
