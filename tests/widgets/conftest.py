"""Fixtures for widget tests: a real napari viewer (under Xvfb) with the nuclei sample."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_unet.samples import load_sample


@pytest.fixture(autouse=True)
def plugin_home(tmp_path, monkeypatch):
    """Autosaves go to a temporary folder, not the user's home."""
    monkeypatch.setenv("NAPARI_UNET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def nuclei_viewer(make_napari_viewer):
    """A viewer showing the bundled nuclei image and its ground-truth labels."""
    viewer = make_napari_viewer()
    image, labels = load_sample()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels.astype(np.uint32), name="nuclei ground truth")
    return viewer


@pytest.fixture
def notifications(monkeypatch):
    """Collect napari notifications (error/warning/info) instead of showing them."""
    import napari.utils.notifications as notes

    seen: list[tuple[str, str]] = []
    for kind in ("error", "warning", "info"):
        monkeypatch.setattr(notes, f"show_{kind}", lambda message, k=kind: seen.append((k, str(message))))
    return seen


class LoopProbe:
    """Records the gaps between ticks of a 10 ms QTimer: how long the event loop was blocked."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> "LoopProbe":
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def stop(self) -> None:
        self.timer.stop()

    @property
    def longest_ms(self) -> float:
        return 1000 * max(self.gaps, default=0.0)

    def percentile_ms(self, q: float) -> float:
        return float(1000 * np.percentile(self.gaps, q)) if self.gaps else 0.0


@pytest.fixture
def loop_probe():
    probe = LoopProbe()
    yield probe
    probe.stop()
