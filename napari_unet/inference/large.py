"""Predicting images larger than memory: Zarr/dask/TIFF in, OME-Zarr out, bounded memory.

``predict_large`` reads the image tile by tile (``tiling.iter_tiled``), writes blended
probabilities to an on-disk Zarr array in bands of whole chunks, then labels instances block by
block with seams resolved (the instance head's ``instances_blockwise``). With MC-dropout samples each tile
also gets its uncertainty maps (``predict.mc_dropout_tile_fn``: the same dropout masks in every
tile, so the maps are seam-free and equal the whole-image ones), streamed the same way. Each
output then gets its resolution pyramid (``omezarr.build_pyramid``, block by block). Memory holds
one band of tiles (about ``2 * tile * width * channels * 4`` bytes) plus one band of output
chunks, whatever the image height. Normalisation percentiles come from a strided sample of the
image."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator

import numpy as np
import torch

from napari_unet import heads
from napari_unet.arrays.normalize import bright_background
from napari_unet.config import PredictConfig
from napari_unet.errors import UserError
from napari_unet.events import Finished, Message, Progress
from napari_unet.files.omezarr import MIN_LEVEL_SIZE, build_pyramid, create_ome_zarr
from napari_unet.inference.tiling import Slab, iter_tiled
from napari_unet.inference.uncertainty import uncertainty_kinds
from napari_unet.models import enable_mc_dropout
from napari_unet.models.bundle import ModelBundle
from napari_unet.runtime.device import low_precision_dtype


@dataclass(frozen=True)
class LargeResult:
    """Where ``predict_large`` wrote its outputs and what it found."""

    labels: Path
    probabilities: Path | None
    objects: int
    shape: tuple[int, ...]
    seconds: float
    uncertainty: Path | None = None  # (total, aleatoric, epistemic[, shape]) with cfg.mc_samples > 0


class ChannelsFirst:
    """Lazy (C, H, W) view of an (H, W) or (H, W, C) array; slicing reads only the box."""

    def __init__(self, array: Any, in_channels: int) -> None:
        if array.ndim == 2:
            self.layout = "hw"
            self.shape = (1, *array.shape)
        elif array.ndim == 3 and array.shape[-1] <= 4 < array.shape[0]:
            self.layout = "hwc"
            self.shape = (array.shape[-1], *array.shape[:2])
        elif array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:
            self.layout = "chw"
            self.shape = tuple(array.shape)
        else:
            raise UserError(f"large-image prediction needs a 2D image (optionally with channels), got {array.shape}")
        self.array, self.in_channels = array, in_channels

    def __getitem__(self, key: tuple) -> np.ndarray:
        _, ys, xs = key
        if self.layout == "hw":
            block = np.asarray(self.array[ys, xs])[None]
        elif self.layout == "hwc":
            block = np.moveaxis(np.asarray(self.array[ys, xs]), -1, 0)
        else:
            block = np.asarray(self.array[:, ys, xs])
        block = block.astype(np.float32)  # (C, h, w)
        if block.shape[0] == self.in_channels:
            return block
        if self.in_channels == 1:
            return block[:3].mean(axis=0, keepdims=True)
        if block.shape[0] == 1:
            return np.repeat(block, self.in_channels, axis=0)
        raise UserError(f"the model expects {self.in_channels} channels, the image has {block.shape[0]}")


def sampled_percentiles(view: ChannelsFirst, percentiles: tuple[float, float],
                        max_pixels: int = 4_000_000, polarity: str = "keep") -> np.ndarray:
    """(C, 2) low/high percentiles from a regular sub-grid of at most ``max_pixels`` pixels.

    ``polarity="auto"`` and a bright background (``normalize.bright_background`` of the sample's
    channel mean): high/low instead, so ``Normalized`` inverts the image as ``normalize`` does.
    """
    _, h, w = view.shape
    stride = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    step = stride * max(1, 256 // stride)  # read bands of rows, keep every stride-th pixel
    rows = [view[(slice(None), slice(y, min(y + step, h)), slice(None))][:, ::stride, ::stride]
            for y in range(0, h, step)]
    sample = np.concatenate(rows, axis=1).reshape(view.shape[0], -1)
    bounds = np.stack([np.percentile(c[np.isfinite(c)], percentiles) for c in sample])
    if polarity == "auto":
        grey = sample.mean(axis=0)
        grey = grey[np.isfinite(grey)]
        if grey.size and bright_background(float(np.median(grey)), *np.percentile(grey, percentiles)):
            return bounds[:, ::-1].copy()
    return bounds


class Normalized:
    """(C, H, W) view scaled so the stored percentiles map to 0 and 1 (as ``normalize`` does)."""

    def __init__(self, view: ChannelsFirst, bounds: np.ndarray) -> None:
        self.view, self.shape = view, view.shape
        lo, hi = bounds[:, 0], bounds[:, 1]
        span = hi - lo  # negative for an inverted image (``sampled_percentiles``)
        self.lo = lo[:, None, None].astype(np.float32)
        self.scale = (1.0 / np.where(np.abs(span) < 1e-6, 1e-6, span))[:, None, None].astype(np.float32)

    def __getitem__(self, key: tuple) -> np.ndarray:
        return (self.view[key] - self.lo) * self.scale


def _band_writer(target: Any, chunk_rows: int):
    """Collect slabs and write them to ``target`` (K, H, W) in bands of whole chunk rows."""
    pending: list[Slab] = []

    def push(slab: Slab | None) -> None:
        if slab is not None:  # kept in the target's dtype (float16): half the memory of float32
            pending.append(Slab(slab.start, slab.stop, slab.data.astype(target.dtype)))
        if not pending:
            return
        start, stop = pending[0].start, pending[-1].stop
        cut = stop if slab is None or stop == target.shape[1] else start + (stop - start) // chunk_rows * chunk_rows
        if cut <= start:
            return
        data = np.concatenate([s.data for s in pending], axis=1) if len(pending) > 1 else pending[0].data  # (K, rows, W)
        target[:, start:cut] = data[:, : cut - start]
        pending.clear()
        if cut < stop:
            pending.append(Slab(cut, stop, data[:, cut - start:]))

    return push


def _sibling(out: Path, suffix: str) -> Path:
    """``<stem>_<suffix>.ome.zarr`` beside the labels ``out``."""
    return out.with_name(out.name.replace(".ome.zarr", "").replace(".zarr", "") + f"_{suffix}.ome.zarr")


def predict_large(bundle: ModelBundle, image: Any, out: str | Path, cfg: PredictConfig = PredictConfig(),
                  probabilities: bool = False, chunk: int = 1024, tile: int = 512,
                  halo: int = 64, min_level_size: int = MIN_LEVEL_SIZE) -> Generator[object, None, LargeResult]:
    """Predict a 2D array-like ``image`` (numpy, zarr, dask) into the OME-Zarr ``out`` (labels),
    streaming; with ``probabilities`` also keep ``<out>_probabilities`` (K, H, W float16); with
    ``cfg.mc_samples`` > 0 labels come from the MC-dropout mean and ``<out>_uncertainty``
    (total, aleatoric, epistemic[, the instance head's own, e.g. shape]; 3 or 4, H, W float16) is written
    too. Every output gets a resolution pyramid down to ``min_level_size`` pixels. Yields
    ``Progress`` per tile and per block, then ``Finished``."""
    # deferred: scikit-image loads at first use
    from napari_unet.inference.predict import mc_dropout_tile_fn, network_tile_fn, tile_geometry

    begin = time.perf_counter()
    if bundle.config.model.dims != 2:
        raise UserError("streaming prediction supports 2D models; predict volumes in memory")
    out = Path(out)
    view = ChannelsFirst(image, bundle.config.model.in_channels)
    _, h, w = view.shape
    bounds = sampled_percentiles(view, tuple(bundle.config.percentiles), polarity=bundle.config.polarity)
    net = bundle.net.eval()
    dtype = low_precision_dtype(next(net.parameters()).device, None)
    spec, allowed = tile_geometry(net, PredictConfig(tile_size=tile, overlap=cfg.overlap))
    k, mc = bundle.n_outputs, max(cfg.mc_samples, 0)
    kinds = uncertainty_kinds(bundle.config) if mc else ()
    yield Message(f"streaming {h}x{w} in {spec.tile}-pixel tiles to {out.name}"
                  + (f" with {mc} MC-dropout passes per tile" if mc else ""))
    prob_path, unc_path = _sibling(out, "probabilities"), _sibling(out, "uncertainty") if mc else None
    work = prob_path if probabilities else out.with_name(f".{out.name}.work")
    probs = create_ome_zarr(work, (k, h, w), np.float16, (1, chunk, chunk), ["c", "y", "x"])
    writers = [_band_writer(probs, chunk)]
    if unc_path is not None:
        maps = create_ome_zarr(unc_path, (len(kinds), h, w), np.float16, (1, chunk, chunk), ["c", "y", "x"])
        writers.append(_band_writer(maps, chunk))
    if mc:
        enable_mc_dropout(net)
        tile_fn = mc_dropout_tile_fn(net, dtype, mc, kinds=kinds)
    else:
        tile_fn = network_tile_fn(net, dtype)
    try:
        with torch.inference_mode():
            for item in iter_tiled(tile_fn, Normalized(view, bounds), k + len(kinds), spec, allowed,
                                   cfg.batch_size):
                if isinstance(item, Slab):  # (K [+ kinds], rows, W): probabilities [and uncertainty maps]
                    writers[0](Slab(item.start, item.stop, item.data[:k]))
                    if mc:
                        writers[1](Slab(item.start, item.stop, item.data[k:]))
                else:
                    yield Progress(item.done, item.total, item.elapsed, "tiles")
    finally:
        net.eval()
    for push in writers:
        push(None)
    labels_dtype = np.uint32
    labels = create_ome_zarr(out, (h, w), labels_dtype, (chunk, chunk), ["y", "x"], labels=True)
    head = heads.of(bundle.config)
    if head is not None:  # the instance head's block-wise instances, with the model's tuned thresholds
        scratch = out.with_name(f".{out.name}.seeds")
        objects = yield from head.instances_blockwise(probs, labels, chunk, halo, cfg.min_size, scratch,
                                                      **bundle.postprocess)
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        for y in range(0, h, chunk):
            labels[y:y + chunk] = np.asarray(probs[:, y:y + chunk]).argmax(axis=0).astype(labels_dtype)
        objects = 0
    if not probabilities:
        shutil.rmtree(work, ignore_errors=True)
    for path in (out, prob_path if probabilities else None, unc_path):
        if path is not None:
            yield from build_pyramid(path, min_size=min_level_size)
    result = LargeResult(out, prob_path if probabilities else None, objects, (h, w), time.perf_counter() - begin,
                         unc_path)
    yield Finished({"objects": objects, "seconds": result.seconds, "megapixels_per_second":
                            h * w / 1e6 / max(result.seconds, 1e-9)})
    return result


def streamed_summary(labels: Any, maps: Any | None, block: int = 1024) -> dict[str, float]:
    """Foreground fraction, mean object area and mean (object) total uncertainty of on-disk
    outputs, read block by block: labels (H, W), uncertainty ``maps`` (3, H, W; total first) or None."""
    h, w = labels.shape
    fg = unc_sum = unc_fg = 0.0
    ids: set[int] = set()
    for y in range(0, h, block):
        for x in range(0, w, block):
            lab = np.asarray(labels[y:y + block, x:x + block])
            mask = lab > 0
            fg += float(mask.sum())
            ids.update(np.unique(lab[mask]).tolist())
            if maps is not None:
                u = np.asarray(maps[0, y:y + block, x:x + block], dtype=np.float64)
                unc_sum, unc_fg = unc_sum + float(u.sum()), unc_fg + float(u[mask].sum())
    row = {"foreground_fraction": round(fg / (h * w), 5), "mean_area": round(fg / len(ids), 2) if ids else 0.0}
    if maps is not None:
        row["mean_uncertainty"] = round(unc_sum / (h * w), 5)
        row["mean_object_uncertainty"] = round(unc_fg / fg, 5) if fg else 0.0
    return row
