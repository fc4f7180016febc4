"""Measuring how long the Qt event loop is blocked: a 10 ms timer that records its gaps."""

from __future__ import annotations

import time

import numpy as np


class LoopProbe:
    """Records the gaps between ticks of a 10 ms QTimer (a gap of 100 ms = a 90 ms freeze)."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = self.started = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> "LoopProbe":
        self.gaps = []
        self._last = self.started = time.perf_counter()
        self.timer.start()
        return self

    def stop(self) -> None:
        self.timer.stop()

    @property
    def longest_ms(self) -> float:
        return 1000 * max(self.gaps, default=0.0)

    def percentile_ms(self, q: float) -> float:
        return float(1000 * np.percentile(self.gaps, q)) if self.gaps else 0.0

    def count_over(self, ms: float) -> int:
        return int(sum(g * 1000 > ms for g in self.gaps))

    def summary(self) -> str:
        return (f"longest {self.longest_ms:.0f} ms, p95 {self.percentile_ms(95):.0f} ms, "
                f"{self.count_over(100)} gaps > 100 ms in {len(self.gaps)} ticks")
