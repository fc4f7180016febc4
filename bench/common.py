"""Shared helpers for the benchmarks: data loading, machine description, timing, and
``train_as_user`` (the training path of ``napari-unet train`` and the Train widget).

Data lives in ``../shared/data`` relative to the repository root (the parent of ``bench/``);
set ``NAPARI_UNET_DATA`` to point elsewhere.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import imageio.v3 as iio
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("NAPARI_UNET_DATA", REPO.parent / "shared" / "data")).resolve()
DSB = DATA / "dsb2018_fluo"
ISBI = DATA / "isbi2012_em"
DSB_OTHER = DATA / "dsb2018_other"

Sample = tuple[str, np.ndarray, np.ndarray]


def train_as_user(samples: list[Sample], request, init: str | None = "none", current=None, **bench_only):
    """The events of a training run on ``samples`` as ``napari-unet train`` makes it (returns the
    ``ModelBundle``): ``request`` (a ``TrainRequest``: the flags) through ``train_config_for`` and a
    ``TrainRun`` from ``init`` (``none``: scratch, ``pretrained:nuclei``: fine-tuned as ``--init``
    does; ``model_spec.CURRENT``: the loaded ``current``, as the Train widget's current model), so a
    change of a default reaches the benches that use it. ``bench_only``: ``TrainConfig``
    fields no flag sets (e.g. ``preview_every``, ``fine_tune_guard``)."""
    # deferred: the peers' venvs import this module without napari_unet
    from dataclasses import replace

    from napari_unet.workflows.train_request import train_config_for
    from napari_unet.workflows.train_run import TrainRun, asked_architecture

    pairs, names = [(im, m) for _, im, m in samples], [n for n, _, _ in samples]
    run = TrainRun(init, request.task, asked_architecture(request.depth, request.base_width, None), current=current)
    run.start()  # as the CLI: the starting model before the data
    cfg = replace(train_config_for(request, [im for im, _ in pairs], [m for _, m in pairs]), **bench_only)
    return run.events(pairs, names, cfg)


def _read_gray(path: Path) -> np.ndarray:
    """Read a PNG as a 2-D array (first channel if it has several)."""
    img = iio.imread(path)
    return img[..., 0] if img.ndim == 3 else img


def dsb_index(split: str | None = None) -> list[dict[str, str]]:
    """Rows of ``dsb2018_fluo/index.csv``, optionally only one split ('train' or 'val')."""
    with (DSB / "index.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if split is None or r["split"] == split]


def load_dsb(split: str, limit: int | None = None) -> list[Sample]:
    """Load ``(name, image uint8 (H, W), mask uint16 (H, W))`` for a dsb2018_fluo split."""
    rows = dsb_index(split)
    if not rows:
        raise ValueError(f"no images for split {split!r} in {DSB}")
    out: list[Sample] = []
    for row in rows[:limit]:
        name = row["name"]
        img = _read_gray(DSB / "images" / f"{name}.png").astype(np.uint8)
        mask = _read_gray(DSB / "masks" / f"{name}.png").astype(np.uint16)
        out.append((name, img, mask))
    return out


def dsb_other_index(kind: str | None = None, split: str | None = None) -> list[dict[str, str]]:
    """Rows of ``dsb2018_other/index.csv``, optionally one ``kind`` ('stained-colour' or
    'brightfield-grey') and one split ('train' or 'val')."""
    with (DSB_OTHER / "index.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if (kind is None or r["kind"] == kind) and (split is None or r["split"] == split)]


def load_dsb_other(kind: str, split: str, limit: int | None = None) -> list[Sample]:
    """Load ``(name, image uint8 (H, W) or RGB (H, W, 3), mask uint16 (H, W))`` of one kind and split
    of dsb2018_other (alpha, if any, dropped)."""
    rows = dsb_other_index(kind, split)
    if not rows:
        raise ValueError(f"no {kind!r} images for split {split!r} in {DSB_OTHER}")
    out: list[Sample] = []
    for row in rows[:limit]:
        name = row["name"]
        img = np.asarray(iio.imread(DSB_OTHER / "images" / f"{name}.png")).astype(np.uint8)
        if img.ndim == 3:
            img = img[..., :3]
        mask = _read_gray(DSB_OTHER / "masks" / f"{name}.png").astype(np.uint16)
        out.append((name, img, mask))
    return out


def load_isbi() -> list[Sample]:
    """Load the 30 ISBI 2012 training sections: ``(name, image uint8, mask uint8 {0, 255})``."""
    out: list[Sample] = []
    for path in sorted((ISBI / "images").glob("train_*.png")):
        img = _read_gray(path).astype(np.uint8)
        mask = _read_gray(ISBI / "masks" / path.name).astype(np.uint8)
        out.append((path.stem, img, mask))
    if not out:
        raise ValueError(f"no ISBI images in {ISBI}")
    return out


def _cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    """Total RAM in GiB from /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_description() -> str:
    """One line: CPU, cores, RAM, torch threads/device (if importable) and library versions."""
    import scipy
    import skimage

    ram = _ram_gib()
    parts = [
        f"CPU {_cpu_model()}",
        f"{os.cpu_count()} cores",
        f"RAM {ram:.0f} GiB" if ram else "RAM ?",
        f"python {platform.python_version()}",
        f"numpy {np.__version__}",
        f"scipy {scipy.__version__}",
        f"scikit-image {skimage.__version__}",
    ]
    try:
        import sklearn

        parts.append(f"scikit-learn {sklearn.__version__}")
    except ImportError:
        pass
    try:
        import torch

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads, {dev})")
    except ImportError:
        parts.append("torch not installed")
    return ", ".join(parts)


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(median, min) wall time in seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


class Timer:
    """Context manager measuring wall time: ``with Timer() as t: ...; t.seconds``."""

    def __init__(self, label: str = "", verbose: bool = False) -> None:
        self.label = label
        self.verbose = verbose
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self.verbose:
            print(f"{self.label or 'elapsed'}: {self.seconds:.2f} s", flush=True)
