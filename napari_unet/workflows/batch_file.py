"""One file of a batch: predict it, write its outputs atomically, return its summary row.

``predict_one`` is the task a batch submits (plain arguments, so it pickles to dask workers); a
file that cannot be read or predicted comes back as a ``failed`` row, and only errors of the
destination (``stops_the_batch``) are raised. Outputs get their final names by renaming (TIFF/PNG
through ``io.write_image``, OME-Zarr stores built beside their target), and the file's completion
record (``napari_unet.workflows.resume``) is written last.
"""

from __future__ import annotations

import copy
import errno
import logging
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator, Literal

import numpy as np

from napari_unet.config import MC_SAMPLES_WHEN_ASKED, PredictConfig, setting
from napari_unet.errors import OutputError, UserError
from napari_unet.events import Progress, relay, run_to_end
from napari_unet.files.io import labels_dtype, read_image, write_image
from napari_unet.files.omezarr import open_ome_zarr, replace_store, write_ome_zarr
from napari_unet.workflows.resume import forget, write_record

log = logging.getLogger(__name__)
OutputFormat = Literal["tif", "png", "ome-zarr"]
SUFFIX = {"tif": ".tif", "png": ".png", "ome-zarr": ".ome.zarr"}
SUMMARY_FIELDS = ["file", "status", "output", "objects", "mean_area", "foreground_fraction", "mean_uncertainty",
                  "mean_object_uncertainty", "scale", "seconds", "error"]
# scale: the object-size factor the image was predicted at; status: ok | failed (why: error)
# OSErrors of the destination (full disk, quota, read-only file system): they stop the whole run
STOPPING_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS}


@dataclass(frozen=True)
class BatchConfig:
    """What batch prediction writes and where it runs."""

    format: OutputFormat = "tif"
    probabilities: bool = False  # also write <stem>_probabilities (K, *S) float32
    uncertainty: bool = setting("uncertainty", False)  # MC-dropout: write <stem>_uncertainty (total, aleatoric, epistemic[, shape])
    mc_samples: int = setting("mc_samples", MC_SAMPLES_WHEN_ASKED)  # dropout samples when ``uncertainty`` (PredictConfig: 0 = none)
    workers: int = 1  # local threads working on different files
    scheduler: str | None = None  # dask.distributed scheduler address; None = local threads
    large_pixels: int = 64_000_000  # images (3D models: volumes) with more pixels (and Zarr inputs) are streamed
    summary: str = "summary.csv"  # written in the output folder
    overwrite: bool = False  # False: skip files whose outputs an earlier run completed (resume)



_MODELS: dict[tuple[str, str, int, int], Any] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(model: str, device: str = "auto", preloaded: Any = None) -> Any:
    """The model folder's bundle, loaded once per thread (MC-dropout switches module modes)."""
    # deferred: imports torch
    from napari_unet.models.bundle import load_bundle
    from napari_unet.runtime.device import resolve_device

    key = (str(model), device, threading.get_ident(), id(preloaded))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = copy.deepcopy(preloaded) if preloaded is not None else load_bundle(model, resolve_device(device))
        return _MODELS[key]


def _is_large(path: Path, limit: int, dims: int = 2) -> bool:
    """Zarr inputs, and TIFFs of more than ``limit`` pixels (a 2D model: per plane; a 3D model: voxels)."""
    if path.suffix == ".zarr":
        return True
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        except Exception:  # corrupt or empty: read_image reports it in one line
            return False
        if dims == 3:
            return int(np.prod(shape)) > limit and len(shape) in (3, 4)
        return int(np.prod(shape[:2] if len(shape) >= 2 else shape)) > limit and len(shape) <= 3
    return False


def _open_lazy(path: Path) -> Any:
    if path.suffix == ".zarr":

        return open_ome_zarr(path)
    import tifffile
    import zarr

    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


def _write(path: Path, data: np.ndarray, fmt: str, axes: list[str] | None = None, labels: bool = False,
           scale: list[float] | None = None) -> Path:

    if fmt == "ome-zarr":
        return write_ome_zarr(path, data, axes, labels=labels, scale=scale)
    if fmt == "png" and data.dtype.kind in "ui" and data.size and int(data.max()) >= 2**16:
        raise UserError(f"{path.name}: {int(data.max())} labels do not fit a PNG; use --format tif")
    write_image(path, data)
    return path


def predict_one(model: str, image_path: str, out_dir: str, rel: str, pcfg: PredictConfig,
                bcfg: BatchConfig, preloaded: Any = None, key: str = "") -> dict[str, Any]:
    """Predict one file and write its outputs; returns its summary row, a ``failed`` one when the
    file cannot be read or predicted (runs on any worker; only ``OutputError`` is raised)."""
    return run_to_end(predict_file_events(model, image_path, out_dir, rel, pcfg, bcfg, preloaded, key))


def predict_file_events(model: str, image_path: str, out_dir: str, rel: str, pcfg: PredictConfig,
                        bcfg: BatchConfig, preloaded: Any = None,
                        key: str = "") -> Generator[object, None, dict[str, Any]]:
    """``predict_one_events`` with a file's failure returned as its ``failed`` summary row."""
    try:
        return (yield from predict_one_events(model, image_path, out_dir, rel, pcfg, bcfg, preloaded, key))
    except Exception as exc:
        if stops_the_batch(exc):
            raise
        if not isinstance(exc, UserError):
            log.debug("predicting %s failed", image_path, exc_info=True)  # a bug or an environment problem
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
    # deferred: imports torch
    from napari_unet.inference.uncertainty import entropy, uncertainty_kinds

    start = time.perf_counter()
    path, root = Path(image_path), Path(out_dir)
    out = root / rel
    forget(root, rel)  # from here until the record is rewritten the file counts as not done
    bundle = cached_model(model, pcfg.device, preloaded)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {out.parent}: {exc.strerror or exc}") from None
    if _is_large(path, bcfg.large_pixels, bundle.config.model.dims):
        row, outputs = yield from _predict_streamed(bundle, path, out, pcfg, bcfg, start)
    else:
        # deferred: imports torch
        from napari_unet.inference.predict import predict_image
        from napari_unet.inference.volume_scale import input_z_scale

        cfg = replace(pcfg, mc_samples=bcfg.mc_samples if bcfg.uncertainty else 0)
        try:
            pred = predict_image(bundle, read_image(path), cfg)
        except MemoryError:
            raise UserError(f"out of memory (RAM) predicting {path.name}; use a smaller tile size") from None
        labels = pred.labels
        if bundle.task == "instances":
            labels = labels.astype(labels_dtype(int(labels.max()) if labels.size else 0))
        spatial = ["z", "y", "x"][-labels.ndim:]
        # the volume's voxel size (z-scale) in the OME-Zarr metadata, as streamed volumes carry it
        scale = [input_z_scale(bundle.config), 1.0, 1.0] if bundle.config.model.dims == 3 and labels.ndim == 3 else None
        outputs = [_write(out.with_name(out.name + SUFFIX[bcfg.format]), labels, bcfg.format, spatial, labels=True,
                          scale=scale)]
        extra_fmt = "ome-zarr" if bcfg.format == "ome-zarr" else "tif"
        if bcfg.probabilities:
            outputs.append(_write(out.with_name(out.name + "_probabilities" + SUFFIX[extra_fmt]),
                                  pred.probabilities, extra_fmt, ["c", *spatial], scale=scale and [1.0, *scale]))
        uncertainty = pred.uncertainty.get("total")
        if bcfg.uncertainty and pred.uncertainty:
            maps = np.stack([pred.uncertainty[k] for k in uncertainty_kinds(bundle.config)])
            outputs.append(_write(out.with_name(out.name + "_uncertainty" + SUFFIX[extra_fmt]), maps, extra_fmt,
                                  ["c", *spatial]))
        if uncertainty is None:
            # predictive entropy of a single pass, over the class channels (not an instance head's own maps)
            uncertainty = entropy(pred.probabilities[:len(bundle.class_names)])
        row = summary_row(path, outputs[0], labels, bundle.task, uncertainty, time.perf_counter() - start)
        if pred.sizing is not None:
            row.update(scale=round(pred.sizing.factor, 3), sizing=pred.sizing.text)
    if key:
        write_record(root, rel, path, key, outputs, row)
    return row


def _predict_streamed(bundle: Any, path: Path, out: Path, pcfg: PredictConfig, bcfg: BatchConfig,
                      start: float) -> Generator[object, None, tuple[dict[str, Any], list[Path]]]:
    """Large images: streamed to OME-Zarr pyramids by ``inference.large`` (with ``uncertainty``,
    MC-dropout maps streamed the same way) in a hidden staging folder, each store renamed into
    place once whole; the summary row is computed block by block. Returns (row, outputs)."""
    # deferred: imports torch
    from napari_unet.inference.large import predict_large, streamed_summary

    cfg = replace(pcfg, mc_samples=bcfg.mc_samples if bcfg.uncertainty else 0)
    if cfg.diameter not in ("auto", "off"):
        raise UserError(f"{path.name} is streamed from disk (large), where a given object diameter is not applied; "
                        "use diameter off (or auto: not measured there)")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            staging.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot write in {out.parent}: {exc.strerror or exc}") from None
        run = predict_large(bundle, _open_lazy(path), staging / (out.name + ".ome.zarr"), cfg, bcfg.probabilities)
        result = yield from relay(run, lambda event: Progress(event.done, event.total, event.elapsed,
                                                              f"{path.name}: {event.message}")
                                  if isinstance(event, Progress) else None)
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
    row = {"file": str(path), "status": "ok", "output": str(labels), "objects": result.objects, **row, "scale": 1.0,
           "seconds": round(time.perf_counter() - start, 3), "error": ""}
    if cfg.diameter == "auto":
        row["sizing"] = "object size: not measured on an image streamed from disk; predicted as it is"
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
