"""Batch prediction: many files in parallel (threads here, or a dask.distributed cluster), each
written as TIFF / PNG / OME-Zarr with optional probabilities and uncertainty, plus a per-image
summary CSV.

``predict_batch`` is a generator (``Progress`` per finished file, ``Message`` for skipped work,
then ``Finished``); stopping it between files cancels the rest. Work runs through an executor
with ``submit`` and ``as_completed``: a ``ThreadPoolExecutor`` locally, a ``distributed.Client``
when ``scheduler`` is an address. Each task is ``predict_one`` with plain arguments, so it
pickles to remote workers, which load the model folder once per worker thread.
"""

from __future__ import annotations

import copy
import csv
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed as local_as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator, Iterable, Literal

import numpy as np

from napari_unet.config import PredictConfig
from napari_unet.errors import UserError
from napari_unet.events import Finished, Message, Progress
from napari_unet.io import IMAGE_SUFFIXES

OutputFormat = Literal["tif", "png", "ome-zarr"]
SUFFIX = {"tif": ".tif", "png": ".png", "ome-zarr": ".ome.zarr"}
SCHEDULER_TIMEOUT = "10s"  # how long to try reaching a dask scheduler
SUMMARY_FIELDS = ["file", "output", "objects", "mean_area", "foreground_fraction", "mean_uncertainty",
                  "mean_object_uncertainty", "seconds"]


@dataclass(frozen=True)
class BatchConfig:
    """What batch prediction writes and where it runs."""

    format: OutputFormat = "tif"
    probabilities: bool = False  # also write <stem>_probabilities (K, *S) float32
    uncertainty: bool = False  # MC-dropout: write <stem>_uncertainty (total, aleatoric, epistemic)
    mc_samples: int = 8  # dropout samples when ``uncertainty``
    workers: int = 1  # local threads working on different files
    scheduler: str | None = None  # dask.distributed scheduler address; None = local threads
    large_pixels: int = 64_000_000  # images with more pixels (and Zarr inputs) are streamed
    summary: str = "summary.csv"  # written in the output folder


def collect_inputs(inputs: Iterable[str | Path], recursive: bool = False) -> list[tuple[Path, Path]]:
    """(file, output stem relative to the output folder) for image files, folders and ``.zarr`` inputs."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.suffix == ".zarr" or path.is_file():
            if not path.exists():
                raise UserError(f"no such file or folder: {path}")
            found.append((path, Path(_stem(path))))
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            for p in sorted(path.glob(pattern)):
                if (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or (p.is_dir() and p.suffix == ".zarr"):
                    if any(parent.suffix == ".zarr" for parent in p.relative_to(path).parents if parent.name):
                        continue  # inside a Zarr store
                    found.append((p, p.relative_to(path).parent / _stem(p)))
        else:
            raise UserError(f"no such file or folder: {path}")
    stems = [str(rel) for _, rel in found]
    dupes = {s for s in stems if stems.count(s) > 1}
    if dupes:
        raise UserError(f"two inputs would write the same output {sorted(dupes)[0]!r}; rename one or use --recursive")
    return found


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


_MODELS: dict[tuple[str, str, int, int], Any] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(model: str, device: str = "auto", preloaded: Any = None) -> Any:
    """The model folder's bundle, loaded once per thread (MC-dropout switches module modes)."""
    from napari_unet.training.checkpoint import load_bundle
    from napari_unet.training.device import resolve_device

    key = (str(model), device, threading.get_ident(), id(preloaded))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = copy.deepcopy(preloaded) if preloaded is not None else load_bundle(model, resolve_device(device))
        return _MODELS[key]


def _is_large(path: Path, limit: int) -> bool:
    if path.suffix == ".zarr":
        return True
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        except Exception:  # corrupt or empty: read_image reports it in one line
            return False
        return int(np.prod(shape[:2] if len(shape) >= 2 else shape)) > limit and len(shape) <= 3
    return False


def _open_lazy(path: Path) -> Any:
    if path.suffix == ".zarr":
        from napari_unet.omezarr import open_ome_zarr

        return open_ome_zarr(path)
    import tifffile
    import zarr

    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


def _write(path: Path, data: np.ndarray, fmt: str, axes: list[str] | None = None, labels: bool = False) -> Path:
    from napari_unet.io import write_image
    from napari_unet.omezarr import write_ome_zarr

    if fmt == "ome-zarr":
        return write_ome_zarr(path, data, axes, labels=labels)
    if fmt == "png" and data.dtype.kind in "ui" and data.size and int(data.max()) >= 2**16:
        raise UserError(f"{path.name}: {int(data.max())} labels do not fit a PNG; use --format tif")
    write_image(path, data)
    return path


def predict_one(model: str, image_path: str, out_dir: str, rel: str, pcfg: PredictConfig,
                bcfg: BatchConfig, preloaded: Any = None) -> dict[str, Any]:
    """Predict one file and write its outputs; returns its summary row (runs on any worker)."""
    run = predict_one_events(model, image_path, out_dir, rel, pcfg, bcfg, preloaded)
    try:
        while True:
            next(run)
    except StopIteration as stop:
        return stop.value


def predict_one_events(model: str, image_path: str, out_dir: str, rel: str, pcfg: PredictConfig,
                       bcfg: BatchConfig, preloaded: Any = None) -> Generator[object, None, dict[str, Any]]:
    """``predict_one`` as a generator: streamed (large) images yield ``Progress`` per tile."""
    from napari_unet.inference.uncertainty import entropy
    from napari_unet.io import labels_dtype, read_image

    start = time.perf_counter()
    bundle = cached_model(model, pcfg.device, preloaded)
    path, out = Path(image_path), Path(out_dir) / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    if bundle.config.model.dims == 2 and _is_large(path, bcfg.large_pixels):
        return (yield from _predict_streamed(bundle, path, out, pcfg, bcfg, start))
    from napari_unet.inference.predict import predict_image

    cfg = replace(pcfg, mc_samples=bcfg.mc_samples if bcfg.uncertainty else 0)
    try:
        pred = predict_image(bundle, read_image(path), cfg)
    except MemoryError:
        raise UserError(f"out of memory (RAM) predicting {path.name}; use a smaller tile size") from None
    labels = pred.labels
    if bundle.task == "instances":
        labels = labels.astype(labels_dtype(int(labels.max()) if labels.size else 0))
    spatial = ["z", "y", "x"][-labels.ndim:]
    target = _write(out.with_name(out.name + SUFFIX[bcfg.format]), labels, bcfg.format, spatial, labels=True)
    extra_fmt = "ome-zarr" if bcfg.format == "ome-zarr" else "tif"
    if bcfg.probabilities:
        _write(out.with_name(out.name + "_probabilities" + SUFFIX[extra_fmt]), pred.probabilities, extra_fmt,
               ["c", *spatial])
    uncertainty = pred.uncertainty.get("total")
    if bcfg.uncertainty and pred.uncertainty:
        maps = np.stack([pred.uncertainty[k] for k in ("total", "aleatoric", "epistemic")])
        _write(out.with_name(out.name + "_uncertainty" + SUFFIX[extra_fmt]), maps, extra_fmt, ["c", *spatial])
    if uncertainty is None:
        uncertainty = entropy(pred.probabilities)  # predictive entropy of a single pass
    return summary_row(path, target, labels, bundle.task, uncertainty, time.perf_counter() - start)


def _predict_streamed(bundle: Any, path: Path, out: Path, pcfg: PredictConfig, bcfg: BatchConfig,
                      start: float) -> Generator[object, None, dict[str, Any]]:
    """Large images: streamed to OME-Zarr pyramids by ``inference.large`` (with ``uncertainty``,
    MC-dropout maps streamed the same way); the summary row is computed block by block."""
    from napari_unet.inference.large import predict_large, streamed_summary
    from napari_unet.omezarr import open_ome_zarr

    cfg = replace(pcfg, mc_samples=bcfg.mc_samples if bcfg.uncertainty else 0)
    run = predict_large(bundle, _open_lazy(path), out.with_name(out.name + ".ome.zarr"), cfg, bcfg.probabilities)
    try:
        while True:
            event = next(run)
            if isinstance(event, Progress):
                yield Progress(event.done, event.total, event.elapsed, f"{path.name}: {event.message}")
    except StopIteration as stop:
        result = stop.value
    maps = open_ome_zarr(result.uncertainty) if result.uncertainty is not None else None  # lazy
    row = {"mean_uncertainty": "", "mean_object_uncertainty": "", **streamed_summary(open_ome_zarr(result.labels), maps)}
    return {"file": str(path), "output": str(result.labels), "objects": result.objects, **row,
            "seconds": round(time.perf_counter() - start, 3)}


def summary_row(path: Path, target: Path, labels: np.ndarray, task: str, uncertainty: np.ndarray,
                seconds: float) -> dict[str, Any]:
    """Objects, mean object area (pixels), foreground fraction and mean uncertainty (nats)."""
    fg = labels > 0
    objects = int(len(np.unique(labels[fg]))) if task == "instances" else 0
    return {"file": str(path), "output": str(target), "objects": objects,
            "mean_area": round(float(fg.sum()) / objects, 2) if objects else 0.0,
            "foreground_fraction": round(float(fg.mean()), 5),
            "mean_uncertainty": round(float(uncertainty.mean()), 5),
            "mean_object_uncertainty": round(float(uncertainty[fg].mean()), 5) if fg.any() else 0.0,
            "seconds": round(seconds, 3)}


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The per-image CSV, written atomically."""
    from napari_unet.io import write_atomic_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["file"]))
    write_atomic_bytes(path, buf.getvalue().encode())
    return path


def _executor(bcfg: BatchConfig) -> tuple[Any, Any, Any]:
    """(executor, as_completed, close) for local threads or a dask.distributed scheduler."""
    if bcfg.scheduler:
        try:
            from distributed import Client
            from distributed import as_completed as dask_as_completed
        except ImportError:
            raise UserError("--scheduler needs dask.distributed: pip install 'napari-unet[distributed]'") from None
        try:
            client = Client(bcfg.scheduler, timeout=SCHEDULER_TIMEOUT)
        except OSError as exc:
            raise UserError(f"cannot reach the dask scheduler at {bcfg.scheduler}: {exc}".split("\n")[0]) from None
        return client, dask_as_completed, client.close
    pool = ThreadPoolExecutor(max_workers=max(1, bcfg.workers))
    return pool, local_as_completed, lambda: pool.shutdown(wait=True, cancel_futures=True)


def predict_batch(model: str | Path, inputs: list[tuple[Path, Path]], out_dir: str | Path,
                  pcfg: PredictConfig = PredictConfig(), bcfg: BatchConfig = BatchConfig(),
                  preloaded: Any = None) -> Generator[object, None, list[dict[str, Any]]]:
    """Predict every (file, relative output stem) of ``inputs`` into ``out_dir``; returns the
    summary rows (also written to ``out_dir/bcfg.summary``). With one local worker the files run
    in this thread (tile progress for streamed images; stopping takes effect between tiles)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output folder {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    if bcfg.uncertainty and bcfg.mc_samples < 2:
        raise UserError("uncertainty needs at least 2 MC-dropout samples")
    inline = not bcfg.scheduler and bcfg.workers <= 1
    where = f"dask scheduler {bcfg.scheduler}" if bcfg.scheduler else f"{max(1, bcfg.workers)} local worker(s)"
    yield Message(f"predicting {len(inputs)} file(s) on {where}")
    local = preloaded if not bcfg.scheduler else None  # remote workers load the folder themselves
    start, rows = time.perf_counter(), []
    try:
        if inline:
            for p, rel in inputs:
                rows.append((yield from predict_one_events(str(model), str(p), str(out_dir), str(rel), pcfg, bcfg,
                                                           local)))
                yield Progress(len(rows), len(inputs), time.perf_counter() - start, p.name)
        else:
            yield from _run_parallel(model, inputs, out_dir, pcfg, bcfg, local, rows, start)
    finally:
        with _MODELS_LOCK:  # per-thread copies of a preloaded model are not needed after the run
            for key in [k for k in _MODELS if local is not None and k[3] == id(local)]:
                del _MODELS[key]
    summary = write_summary(out_dir / bcfg.summary, rows)
    yield Finished(summary, {"images": len(rows), "objects": sum(int(r["objects"] or 0) for r in rows)})
    return rows


def _run_parallel(model: str | Path, inputs: list[tuple[Path, Path]], out_dir: Path, pcfg: PredictConfig,
                  bcfg: BatchConfig, local: Any, rows: list[dict[str, Any]], start: float) -> Generator[object, None, None]:
    """Submit one task per file to the executor; append rows and yield ``Progress`` as they finish."""
    executor, as_completed, close = _executor(bcfg)
    futures = []
    try:
        futures = [executor.submit(predict_one, str(model), str(p), str(out_dir), str(rel), pcfg, bcfg, local)
                   for p, rel in inputs]
        for future in as_completed(futures):
            rows.append(future.result())
            yield Progress(len(rows), len(inputs), time.perf_counter() - start, Path(rows[-1]["file"]).name)
    finally:
        for future in futures:
            future.cancel()
        close()
