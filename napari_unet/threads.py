"""How our own processes wait for CPU threads: OpenMP's wait policy, set where our work starts.

Idle OpenMP threads spin for a while before they sleep; on a busy machine that spinning takes
time slices from the threads doing the work. ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep at
once. It is a process-wide setting, so the package never sets it on import (napari hosts other
plugins in the same process); the command line sets it in ``napari_unet.cli.main`` before torch
loads. The GNU OpenMP runtime that torch ships reads the variable once, when it is loaded with
torch, so setting it any later changes nothing; an explicit user setting always wins. Inside
napari the widgets instead keep one core for the viewer (``widgets.train.gui_threads``).
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
