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
(``napari_unet.workflows.resume``), so re-running after a crash or kill skips what is complete.
"""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed as local_as_completed
from pathlib import Path
from typing import Any, Generator, Iterable

from napari_unet.workflows.batch_file import (_MODELS, _MODELS_LOCK, SUFFIX, SUMMARY_FIELDS, BatchConfig, OutputFormat,
                                    cached_model, failed_row, predict_file_events, predict_one, stops_the_batch,
                                    summary_row)
from napari_unet.config import PredictConfig
from napari_unet.errors import UserError
from napari_unet.events import Finished, Message, Progress
from napari_unet.files.io import IMAGE_SUFFIXES, write_atomic_bytes
from napari_unet.workflows.resume import clear_leftovers, completed_row, run_key

SCHEDULER_TIMEOUT = "10s"  # how long to try reaching a dask scheduler
__all__ = ["BatchConfig", "OutputFormat", "SUFFIX", "SUMMARY_FIELDS", "batch_key", "cached_model", "collect_inputs",
           "failed_row", "predict_batch", "predict_one", "summary_row", "write_summary"]


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


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The per-image CSV, written atomically."""

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
    # deferred: imports torch
    from napari_unet.models.bundle import load_bundle

    bundle = preloaded if preloaded is not None else load_bundle(model)
    settings = {"tile_size": pcfg.tile_size, "overlap": pcfg.overlap, "min_size": pcfg.min_size,
                "diameter": pcfg.diameter,
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
    the same model and settings are skipped unless ``bcfg.overwrite`` (see ``napari_unet.workflows.resume``).
    With one local worker the files run in this thread (tile progress for streamed images;
    stopping takes effect between tiles). ``Finished.summary`` counts images, objects, failed, skipped."""
    out_dir = Path(out_dir)
    _prepare(out_dir, bcfg)
    key = batch_key(model, pcfg, bcfg, preloaded)
    done = {} if bcfg.overwrite else {rel: completed_row(out_dir, rel, p, key) for p, rel in inputs}
    done = {rel: row for rel, row in done.items() if row is not None}
    todo = [(p, rel) for p, rel in inputs if rel not in done]
    for _, rel in todo:  # before any worker starts: nothing of this run is removed
        clear_leftovers(out_dir, rel, output_names(rel.name))
    clear_leftovers(out_dir, bcfg.summary, [bcfg.summary])
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
    yield Finished({"images": len(rows) - failed, "objects": sum(int(r["objects"] or 0) for r in rows),
                             "failed": failed, "skipped": len(done)})
    return sorted(rows, key=lambda r: r["file"])


def _finished_file(row: dict[str, Any], rows: list[dict[str, Any]], total: int,
                   start: float) -> Generator[object, None, None]:
    rows.append(row)
    name = Path(row["file"]).name
    if row["status"] == "failed":
        yield Message(f"failed: {name}: {row['error']}", "error")
    elif row.get("sizing"):
        yield Message(f"{name}: {row['sizing']}")
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
