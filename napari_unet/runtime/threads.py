"""OpenMP's wait policy, set where our own processes start, never on import.

``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP threads sleep at once instead of spinning first.
It is process-wide, so importing the package never sets it (napari hosts other plugins in the
same process); the ``napari-unet`` entry point (``cli.main``) and ``bench/bench_speed.py`` set it
before torch loads. The GNU OpenMP runtime that torch ships reads it once, when torch loads;
setting it later changes nothing, and an explicit user setting always wins.

Measured on the 2-core development machine (docs/benchmarks.md, *OpenMP wait policy*): with
another process keeping one core busy, the runtime's default (spin, then sleep) made the training
step about 8× slower (3.6 s instead of 0.46 s); with both cores free, passive waiting costs about
1.4× in the step (0.115 s instead of 0.080–0.085 s). We take the robust one. Inside napari the
widgets keep one core for the viewer instead (``widgets.train.gui_threads``).
"""

from __future__ import annotations

import os
import sys

POLICY = "OMP_WAIT_POLICY"


def prefer_passive_wait() -> str:
    """Ask for passive OpenMP waiting in this (our own) process; returns the policy in effect:
    'PASSIVE', the user's own setting, or 'runtime default' when torch was loaded before we could
    set it (the variable is then left alone)."""
    if POLICY in os.environ:
        return os.environ[POLICY]
    if "torch" in sys.modules:
        return "runtime default"
    os.environ[POLICY] = "PASSIVE"
    return "PASSIVE"
