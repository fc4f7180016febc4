"""Batch prediction: many files in parallel (threads here, or a dask.distributed cluster), each
written as TIFF / PNG / OME-Zarr with optional probabilities and uncertainty, plus a per-image
summary CSV.

``predict_batch`` is a generator (``Progress`` per finished file, ``Message`` for skipped work
and for each failed file, then ``Finished``); stopping it between files cancels the rest. Work
runs through an executor with ``submit`` and ``as_completed``: a ``ThreadPoolExecutor``
locally, a ``distributed.Client`` when ``scheduler`` is an address. Each task is ``predict_one``
with plain arguments, so it pickles to remote workers, which load the model folder once per
worker thread.

A file that cannot be read or predicted becomes a ``failed`` row (``status``/``error`` columns)
and the run goes on; only errors of the destination (``OutputError``: read-only folder, full
disk) stop it. Outputs are written atomically and each finished file gets a completion record
(``napari_unet.resume``), so re-running after a crash or kill skips what is complete.
"""

from __future__ import annotations

import copy
import csv
import errno
import io
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed as local_as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator, Iterable, Literal

import numpy as np

from napari_unet.config import PredictConfig
from napari_unet.errors import OutputError, UserError
from napari_unet.events import Finished, Message, Progress
from napari_unet.io import IMAGE_SUFFIXES
from napari_unet.resume import clear_leftovers, completed_row, forget, run_key, write_record

OutputFormat = Literal["tif", "png", "ome-zarr"]
SUFFIX = {"tif": ".tif", "png": ".png", "ome-zarr": ".ome.zarr"}
SCHEDULER_TIMEOUT = "10s"  # how long to try reaching a dask scheduler
SUMMARY_FIELDS = ["file", "status", "output", "objects", "mean_area", "foreground_fraction", "mean_uncertainty",
                  "mean_object_uncertainty", "seconds", "error"]  # status: ok | failed (why: error)
STOPPING_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # the destination is at fault: stop the run


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
    overwrite: bool = False  # False: skip files whose outputs an earlier run completed (resume)


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
                bcfg: BatchConfig, preloaded: Any = None, key: str = "") -> dict[str, Any]:
    """Predict one file and write its outputs; returns its summary row, a ``failed`` one when the
    file cannot be read or predicted (runs on any worker; only ``OutputError`` is raised)."""
    run = predict_file_events(model, image_path, out_dir, rel, pcfg, bcfg, preloaded, key)
    try:
        while True:
            next(run)
    except StopIteration as stop:
        return stop.value


def predict_file_events(model: str, image_path: str, out_dir: str, rel: str, pcfg: PredictConfig,
                        bcfg: BatchConfig, preloaded: Any = None,
                        key: str = "") -> Generator[object, None, dict[str, Any]]:
    """``predict_one_events`` with a file's failure returned as its ``failed`` summary row."""
    try:
        return (yield from predict_one_events(model, image_path, out_dir, rel, pcfg, bcfg, preloaded, key))
    except Exception as exc:
        if stops_the_batch(exc):
            raise
        return failed_row(Path(image_path), exc)


def stops_the_batch(exc: BaseException) -> bool:
    """Errors of the destination (read-only folder, full disk) end the whole run; any other error
    belongs to one input file, which is reported while the run goes on."""
    return isinstance(exc, OutputError) or (isinstance(exc, OSError) and exc.errno in STOPPING_ERRNOS)


def predict_one_events(model: str, image_path: str, out_dir: str, rel: str, pcfg: PredictConfig,
                       bcfg: BatchConfig, preloaded: Any = None,
                       key: str = "") -> Generator[object, None, dict[str, Any]]:
    """``predict_one`` as a generator that raises: streamed (large) images yield ``Progress`` per
    tile. With a ``key`` (``resume.run_key``) the file's completion record is written last."""
    from napari_unet.inference.uncertainty import entropy
    from napari_unet.io import labels_dtype, read_image

    start = time.perf_counter()
    path, root = Path(image_path), Path(out_dir)
    out = root / rel
    forget(root, rel)  # from here until the record is rewritten the file counts as not done
    bundle = cached_model(model, pcfg.device, preloaded)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {out.parent}: {exc.strerror or exc}") from None
    if bundle.config.model.dims == 2 and _is_large(path, bcfg.large_pixels):
        row, outputs = yield from _predict_streamed(bundle, path, out, pcfg, bcfg, start)
    else:
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
        outputs = [_write(out.with_name(out.name + SUFFIX[bcfg.format]), labels, bcfg.format, spatial, labels=True)]
        extra_fmt = "ome-zarr" if bcfg.format == "ome-zarr" else "tif"
        if bcfg.probabilities:
            outputs.append(_write(out.with_name(out.name + "_probabilities" + SUFFIX[extra_fmt]),
                                  pred.probabilities, extra_fmt, ["c", *spatial]))
        uncertainty = pred.uncertainty.get("total")
        if bcfg.uncertainty and pred.uncertainty:
            maps = np.stack([pred.uncertainty[k] for k in ("total", "aleatoric", "epistemic")])
            outputs.append(_write(out.with_name(out.name + "_uncertainty" + SUFFIX[extra_fmt]), maps, extra_fmt,
                                  ["c", *spatial]))
        if uncertainty is None:
            uncertainty = entropy(pred.probabilities)  # predictive entropy of a single pass
        row = summary_row(path, outputs[0], labels, bundle.task, uncertainty, time.perf_counter() - start)
    if key:
        write_record(root, rel, path, key, outputs, row)
    return row


def _predict_streamed(bundle: Any, path: Path, out: Path, pcfg: PredictConfig, bcfg: BatchConfig,
                      start: float) -> Generator[object, None, tuple[dict[str, Any], list[Path]]]:
    """Large images: streamed to OME-Zarr pyramids by ``inference.large`` (with ``uncertainty``,
    MC-dropout maps streamed the same way) in a hidden staging folder, each store renamed into
    place once whole; the summary row is computed block by block. Returns (row, outputs)."""
    from napari_unet.inference.large import predict_large, streamed_summary
    from napari_unet.omezarr import open_ome_zarr, replace_store

    cfg = replace(pcfg, mc_samples=bcfg.mc_samples if bcfg.uncertainty else 0)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            staging.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot write in {out.parent}: {exc.strerror or exc}") from None
        run = predict_large(bundle, _open_lazy(path), staging / (out.name + ".ome.zarr"), cfg, bcfg.probabilities)
        try:
            while True:
                event = next(run)
                if isinstance(event, Progress):
                    yield Progress(event.done, event.total, event.elapsed, f"{path.name}: {event.message}")
        except StopIteration as stop:
            result = stop.value
        stores = [result.labels, result.probabilities, result.uncertainty]
        finals = [None if s is None else out.parent / Path(s).name for s in stores]
        for store, final in zip(stores, finals):
            if store is not None:
                try:
                    replace_store(store, final)
                except OSError as exc:
                    raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    labels, _, maps = finals
    lazy_maps = open_ome_zarr(maps) if maps is not None else None
    row = {"mean_uncertainty": "", "mean_object_uncertainty": "",
           **streamed_summary(open_ome_zarr(labels), lazy_maps)}
    row = {"file": str(path), "status": "ok", "output": str(labels), "objects": result.objects, **row,
           "seconds": round(time.perf_counter() - start, 3), "error": ""}
    return row, [f for f in finals if f is not None]


def summary_row(path: Path, target: Path, labels: np.ndarray, task: str, uncertainty: np.ndarray,
                seconds: float) -> dict[str, Any]:
    """Objects, mean object area (pixels), foreground fraction and mean uncertainty (nats)."""
    fg = labels > 0
    objects = int(len(np.unique(labels[fg]))) if task == "instances" else 0
    return {"file": str(path), "status": "ok", "output": str(target), "objects": objects,
            "mean_area": round(float(fg.sum()) / objects, 2) if objects else 0.0,
            "foreground_fraction": round(float(fg.mean()), 5),
            "mean_uncertainty": round(float(uncertainty.mean()), 5),
            "mean_object_uncertainty": round(float(uncertainty[fg].mean()), 5) if fg.any() else 0.0,
            "seconds": round(seconds, 3), "error": ""}


def failed_row(path: Path, exc: BaseException) -> dict[str, Any]:
    """The summary row of a file that could not be read or predicted: ``status`` failed, a one-line ``error``."""
    message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    return {**dict.fromkeys(SUMMARY_FIELDS, ""), "file": str(path), "status": "failed",
            "error": (message.strip().splitlines() or [type(exc).__name__])[0][:300]}


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The per-image CSV, written atomically."""
    from napari_unet.io import write_atomic_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore", restval="")
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


def batch_key(model: str | Path, pcfg: PredictConfig, bcfg: BatchConfig, preloaded: Any = None) -> str:
    """``resume.run_key`` of the model and of the settings that change what a batch writes."""
    from napari_unet.training.checkpoint import load_bundle

    bundle = preloaded if preloaded is not None else load_bundle(model)
    settings = {"tile_size": pcfg.tile_size, "overlap": pcfg.overlap, "min_size": pcfg.min_size,
                "format": bcfg.format, "probabilities": bcfg.probabilities, "uncertainty": bcfg.uncertainty,
                "mc_samples": bcfg.mc_samples if bcfg.uncertainty else 0, "large_pixels": bcfg.large_pixels}
    return run_key(bundle, settings)


def output_names(stem: str) -> list[str]:
    """Every name an input with output stem ``stem`` may write (any format, extras, staging)."""
    labels = [stem + s for s in SUFFIX.values()]
    extras = [f"{stem}_{kind}{s}" for kind in ("probabilities", "uncertainty") for s in (".tif", ".ome.zarr")]
    return [stem, *labels, *extras]


def _prepare(out_dir: Path, bcfg: BatchConfig) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output folder {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    if bcfg.uncertainty and bcfg.mc_samples < 2:
        raise UserError("uncertainty needs at least 2 MC-dropout samples")


def predict_batch(model: str | Path, inputs: list[tuple[Path, Path]], out_dir: str | Path,
                  pcfg: PredictConfig = PredictConfig(), bcfg: BatchConfig = BatchConfig(),
                  preloaded: Any = None) -> Generator[object, None, list[dict[str, Any]]]:
    """Predict every (file, relative output stem) of ``inputs`` into ``out_dir``; returns the
    summary rows of all inputs (also written to ``out_dir/bcfg.summary``): ``status`` ok, or
    failed with an ``error`` for a file that could not be read or predicted (the run goes on;
    a ``Message`` at level ``error`` tells each). Files already complete from an earlier run with
    the same model and settings are skipped unless ``bcfg.overwrite`` (see ``napari_unet.resume``).
    With one local worker the files run in this thread (tile progress for streamed images;
    stopping takes effect between tiles). ``Finished.summary`` counts images, objects, failed, skipped."""
    out_dir = Path(out_dir)
    _prepare(out_dir, bcfg)
    key = batch_key(model, pcfg, bcfg, preloaded)
    done = {} if bcfg.overwrite else {rel: completed_row(out_dir, rel, p, key) for p, rel in inputs}
    done = {rel: row for rel, row in done.items() if row is not None}
    todo = [(p, rel) for p, rel in inputs if rel not in done]
    for _, rel in todo:  # before any worker starts: nothing of this run is removed
        clear_leftovers((out_dir / rel).parent, output_names(rel.name))
    inline = not bcfg.scheduler and bcfg.workers <= 1
    where = f"dask scheduler {bcfg.scheduler}" if bcfg.scheduler else f"{max(1, bcfg.workers)} local worker(s)"
    if done:
        yield Message(f"skipping {len(done)} file(s) whose outputs are already complete (overwrite to redo them)")
    yield Message(f"predicting {len(todo)} file(s) on {where}")
    local = preloaded if not bcfg.scheduler else None  # remote workers load the folder themselves
    start, rows = time.perf_counter(), []
    try:
        if inline:
            for p, rel in todo:
                row = yield from predict_file_events(str(model), str(p), str(out_dir), str(rel), pcfg, bcfg, local,
                                                     key)
                yield from _finished_file(row, rows, len(todo), start)
        elif todo:
            yield from _run_parallel(model, todo, out_dir, pcfg, bcfg, local, key, rows, start)
    except (GeneratorExit, KeyboardInterrupt):  # stopped: the summary still lists what is finished
        _summary_after_stop(out_dir, bcfg, inputs, key, rows)
        raise
    finally:
        with _MODELS_LOCK:  # per-thread copies of a preloaded model are not needed after the run
            for k in [k for k in _MODELS if local is not None and k[3] == id(local)]:
                del _MODELS[k]
    rows = [*done.values(), *rows]
    summary = write_summary(out_dir / bcfg.summary, rows)
    failed = sum(r["status"] == "failed" for r in rows)
    yield Finished(summary, {"images": len(rows) - failed, "objects": sum(int(r["objects"] or 0) for r in rows),
                             "failed": failed, "skipped": len(done)})
    return sorted(rows, key=lambda r: r["file"])


def _finished_file(row: dict[str, Any], rows: list[dict[str, Any]], total: int,
                   start: float) -> Generator[object, None, None]:
    rows.append(row)
    name = Path(row["file"]).name
    if row["status"] == "failed":
        yield Message(f"failed: {name}: {row['error']}", "error")
    yield Progress(len(rows), total, time.perf_counter() - start, name)


def _summary_after_stop(out_dir: Path, bcfg: BatchConfig, inputs: list[tuple[Path, Path]], key: str,
                        rows: list[dict[str, Any]]) -> None:
    """Best effort on Ctrl-C or cancel: the summary of every input finished so far (from disk)."""
    failed = [r for r in rows if r["status"] == "failed"]
    finished = [row for p, rel in inputs if (row := completed_row(out_dir, rel, p, key)) is not None]
    try:
        write_summary(out_dir / bcfg.summary, finished + failed)
    except UserError:
        pass


def _run_parallel(model: str | Path, todo: list[tuple[Path, Path]], out_dir: Path, pcfg: PredictConfig,
                  bcfg: BatchConfig, local: Any, key: str, rows: list[dict[str, Any]],
                  start: float) -> Generator[object, None, None]:
    """Submit one task per file to the executor; append rows and yield events as they finish. A
    task that fails on its worker (or whose worker is lost for good) becomes that file's failed row."""
    executor, as_completed, close = _executor(bcfg)
    futures: dict[Any, Path] = {}
    try:
        for p, rel in todo:
            futures[executor.submit(predict_one, str(model), str(p), str(out_dir), str(rel), pcfg, bcfg, local,
                                    key)] = p
        for future in as_completed(list(futures)):
            try:
                row = future.result()
            except Exception as exc:  # e.g. distributed.KilledWorker, or an error outside predict_one
                if stops_the_batch(exc):
                    raise
                row = failed_row(futures[future], exc)
            yield from _finished_file(row, rows, len(todo), start)
    finally:
        for future in futures:
            future.cancel()
        close()
