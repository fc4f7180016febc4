"""Predicting images larger than memory: Zarr/dask/TIFF in, OME-Zarr out, bounded memory.

``predict_large`` reads the image tile by tile (``tiling.iter_tiled``), writes blended
probabilities to an on-disk Zarr array in bands of whole chunks, then labels instances block by
block with seams resolved (the instance head's ``instances_blockwise``). With MC-dropout samples each tile
also gets its uncertainty maps (``predict.mc_dropout_tile_fn``: the same dropout masks in every
tile, so the maps are seam-free and equal the whole-image ones), streamed the same way. Each
output then gets its resolution pyramid (``omezarr.build_pyramid``, block by block). Memory holds
one band of tiles (about ``2 * tile * width * channels * 4`` bytes) plus one band of output
chunks, whatever the image height. Normalisation percentiles come from a strided sample of the
image.

A 3D model streams a (Z, Y, X) volume box by box (``tiling.iter_tiled_blocks``): 3D tiles
(sized by memory, ``runtime.sizes.volume_tile``, each reading a ``PredictConfig.volume_context``
halo, blended over at most ``VOLUME_OVERLAP`` voxels) run in rows along z and, within a row,
along y; each finished box (one tile step in z and y, all of x) is written where it lies, and the
instances are labelled in ``VOLUME_BLOCK`` blocks with a ``VOLUME_HALO`` halo, seam-free along all
three axes, with the model's voxel spacing (z-scale) as the whole-volume post-processing uses it; the outputs'
OME-Zarr ``scale`` is (z-scale, 1, 1). Memory holds ``(K + 1) * 4`` bytes per voxel of one
tile x tile x X buffer and of the tiles' z-overlap across the (Y, X) plane, one tile's forward
pass and a few post-processing blocks, whatever the number of planes."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator

import numpy as np
import torch

from napari_unet import heads
from napari_unet.arrays.layout import array_layout
from napari_unet.arrays.normalize import bright_background
from napari_unet.arrays.volumes import anisotropic_spacing, voxel_spacing
from napari_unet.config import PredictConfig
from napari_unet.errors import UserError
from napari_unet.events import Finished, Message, Progress
from napari_unet.files.omezarr import MIN_LEVEL_SIZE, build_pyramid, create_ome_zarr, open_ome_zarr
from napari_unet.heads.blockwise import block_grid
from napari_unet.inference import size, volume_scale
from napari_unet.inference.tiling import Block, Slab, iter_tiled, iter_tiled_blocks
from napari_unet.inference.uncertainty import uncertainty_kinds
from napari_unet.models import enable_mc_dropout
from napari_unet.models.bundle import ModelBundle
from napari_unet.runtime.device import low_precision_dtype

MIN_STREAM_PLANES = 4  # a streamed volume holds at least this many z-planes (``arrays.volumes.MIN_PATCH_PLANES``)
VOLUME_BLOCK = (64, 128, 128)  # (z, y, x) voxels of a volume's post-processing blocks and label chunks
VOLUME_BAND = 16  # z-planes per chunk of a volume's probability maps
VOLUME_HALO = 32  # voxels of a volume's block-wise watershed halo along every axis
VOLUME_OVERLAP = 16  # voxels over which neighbouring 3D tiles are blended (at most)


def model_channels(block: np.ndarray, in_channels: int, what: str) -> np.ndarray:
    """A (C, ...) block read from disk as the model's ``in_channels``: as it is, colour averaged
    to grey, or one channel repeated; else a one-line error naming ``what`` the input is."""
    if block.shape[0] == in_channels:
        return block
    if in_channels == 1:
        return block[:3].mean(axis=0, keepdims=True)
    if block.shape[0] == 1:
        return np.repeat(block, in_channels, axis=0)
    raise UserError(f"the model expects {in_channels} channels, the {what} has {block.shape[0]}")



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
        return model_channels(block.astype(np.float32), self.in_channels, "image")  # (C, h, w)


class VolumeChannelsFirst:
    """Lazy (C, Z, Y, X) view of a (Z, Y, X) volume, optionally with a channel axis ((C, Z, Y, X),
    (Z, C, Y, X) or (Z, Y, X, C), read as ``arrays.layout`` reads a volume for a 3D model);
    slicing reads only the box."""

    def __init__(self, array: Any, in_channels: int) -> None:
        shape = tuple(int(n) for n in array.shape)
        if len(shape) not in (3, 4):
            raise UserError(f"a 3D model streams (Z, Y, X) volumes (optionally with channels), got shape {shape}")
        layout = array_layout(shape, False, in_channels, dims=3)  # UserError for a 2D image
        self.axis = None if layout.channel_axis is None else layout.channel_axis % len(shape)
        spatial = tuple(layout.spatial)
        if spatial[0] < MIN_STREAM_PLANES:
            raise UserError(f"a 3D model needs volumes of at least {MIN_STREAM_PLANES} z-planes, "
                            f"got {spatial[0]} (shape {shape})")
        self.shape = (1 if self.axis is None else shape[self.axis], *spatial)
        self.array, self.in_channels = array, in_channels

    def __getitem__(self, key: tuple) -> np.ndarray:
        _, zs, ys, xs = key
        if self.axis is None:
            block = np.asarray(self.array[zs, ys, xs])[None]
        else:
            box = [zs, ys, xs]
            box.insert(self.axis, slice(None))
            block = np.moveaxis(np.asarray(self.array[tuple(box)]), self.axis, 0)
        return model_channels(block.astype(np.float32), self.in_channels, "volume")  # (C, z, y, x)


def sampled_percentiles(view: Any, percentiles: tuple[float, float],
                        max_pixels: int = 4_000_000, polarity: str = "keep") -> np.ndarray:
    """(C, 2) low/high percentiles from a regular sub-grid of at most ``max_pixels`` pixels (of a
    (C, H, W) image or a (C, Z, Y, X) volume: every stride-th plane, row and column).

    ``polarity="auto"`` and a bright background (``normalize.bright_background`` of the sample's
    channel mean): high/low instead, so ``Normalized`` inverts the image as ``normalize`` does.
    """
    spatial = view.shape[1:]
    stride = max(1, int(np.ceil((np.prod(spatial, dtype=np.float64) / max_pixels) ** (1 / len(spatial)))))
    planes = [()] if len(spatial) == 2 else [(slice(z, z + 1),) for z in range(0, spatial[0], stride)]
    h = spatial[-2]
    step = stride * max(1, 256 // stride)  # read bands of rows, keep every stride-th pixel
    rows = [view[(slice(None), *plane, slice(y, min(y + step, h)), slice(None))][..., ::stride, ::stride]
            .reshape(view.shape[0], -1) for plane in planes for y in range(0, h, step)]
    sample = np.concatenate(rows, axis=1)
    bounds = np.stack([np.percentile(c[np.isfinite(c)], percentiles) for c in sample])
    if polarity == "auto":
        grey = sample.mean(axis=0)
        grey = grey[np.isfinite(grey)]
        if grey.size and bright_background(float(np.median(grey)), *np.percentile(grey, percentiles)):
            return bounds[:, ::-1].copy()
    return bounds


class Normalized:
    """(C, *S) view scaled so the stored percentiles map to 0 and 1 (as ``normalize`` does)."""

    def __init__(self, view: Any, bounds: np.ndarray) -> None:
        self.view, self.shape = view, view.shape
        lo, hi = bounds[:, 0], bounds[:, 1]
        span = hi - lo  # negative for an inverted image (``sampled_percentiles``)
        ones = (1,) * (len(view.shape) - 1)
        self.lo = lo.reshape(-1, *ones).astype(np.float32)
        self.scale = (1.0 / np.where(np.abs(span) < 1e-6, 1e-6, span)).reshape(-1, *ones).astype(np.float32)

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
                  halo: int | None = None, min_level_size: int = MIN_LEVEL_SIZE) -> Generator[object, None, LargeResult]:
    """Predict a 2D array-like ``image`` (numpy, zarr, dask), or a (Z, Y, X) volume for a 3D model,
    into the OME-Zarr ``out`` (labels), streaming; with ``probabilities`` also keep
    ``<out>_probabilities`` (K, *S float16); with ``cfg.mc_samples`` > 0 labels come from the
    MC-dropout mean and ``<out>_uncertainty`` (total, aleatoric, epistemic[, the instance head's own,
    e.g. shape]; 3 or 4, *S float16) is written too. Every output gets a resolution pyramid down to
    ``min_level_size`` pixels. ``halo`` (default 64 pixels in 2D, ``VOLUME_HALO`` voxels in 3D): the
    block-wise watershed's overlap. Volumes: see ``volume_blocks`` and the module docstring.
    Yields ``Progress`` per tile and per block, then ``Finished``."""
    out = Path(out)
    if bundle.config.model.dims == 3:
        view = VolumeChannelsFirst(image, bundle.config.model.in_channels)
        factors = volume_scale.factors_of(bundle.config)
        if factors is not None:
            return (yield from _at_volume_scale(bundle, view, out, cfg, probabilities, chunk, tile, halo,
                                                min_level_size, factors))
    else:
        if len(image.shape) == 3 and min(image.shape) > 4:
            raise UserError(f"a 2D model streams 2D images; the (Z, Y, X) volume of shape {tuple(image.shape)} "
                            "needs a 3D model (or predict the stack in memory, plane by plane)")
        view = ChannelsFirst(image, bundle.config.model.in_channels)
    return (yield from stream_view(bundle, view, out, cfg, probabilities, chunk, tile, halo, min_level_size))


def _at_volume_scale(bundle: ModelBundle, view: Any, out: Path, cfg: PredictConfig, probabilities: bool, chunk: int,
                     tile: int, halo: int | None, min_level_size: int,
                     factors: tuple[float, ...]) -> Generator[object, None, LargeResult]:
    """A volume streamed at its model's volume scale (``inference.volume_scale``): read scaled box by
    box, predicted and labelled on that grid into hidden siblings of ``out``, then every output
    brought back to the volume's grid block by block (labels: the voxel under each centre, maps:
    linearly), with the volume's own z-scale in the metadata."""
    begin = time.perf_counter()
    full = tuple(view.shape[1:])
    small = volume_scale.Resampled(view, [size.scaled_shape([n], f)[0] for n, f in zip(full, factors)],
                                   factors=factors)
    yield Message(f"the model works on volumes scaled x{factors[1]:.2f} along y/x and x{factors[0]:.2f} along z: "
                  f"{'x'.join(map(str, full))} is predicted at {'x'.join(map(str, small.shape[1:]))}")
    work = out.with_name(f".{out.name}.scaled")
    on_grid = ModelBundle(bundle.net, replace(bundle.config, volume_scale=(1.0, 1.0, 1.0)), bundle.meta)
    cfg = replace(cfg, min_size=volume_scale.scaled_min_size(cfg.min_size, factors))
    scaled = yield from stream_view(on_grid, small, work, cfg, probabilities, chunk, tile, halo, min_level_size=1 << 30)
    scale = [volume_scale.input_z_scale(bundle.config), 1.0, 1.0]
    block, chunks = volume_blocks(full, chunk)
    pairs = [(scaled.labels, out, 0)] + [(p, _sibling(out, what), 1) for p, what in
                                          ((scaled.probabilities, "probabilities"), (scaled.uncertainty, "uncertainty"))
                                          if p is not None]
    written = {}
    for source_path, target_path, order in pairs:
        source = open_ome_zarr(source_path)
        maps = source.ndim == 4
        lazy = volume_scale.Resampled(source if maps else _Leading(source), full, order=order)
        target = create_ome_zarr(target_path, (*lazy.shape[:maps], *full), source.dtype,
                                 (1, min(chunks[0], VOLUME_BAND), *chunks[1:]) if maps else chunks,
                                 ["c", "z", "y", "x"] if maps else ["z", "y", "x"], labels=not maps,
                                 scale=[1.0, *scale] if maps else scale)
        grid = list(block_grid(full, block))
        for i, (_, box) in enumerate(grid):
            data = lazy[(slice(None), *box)]
            target[(slice(None), *box) if maps else box] = (data if maps else data[0]).astype(target.dtype)
            yield Progress(i + 1, len(grid), time.perf_counter() - begin, "restoring")
        shutil.rmtree(source_path, ignore_errors=True)
        written[source_path] = target_path
        yield from build_pyramid(target_path, min_size=min_level_size)
    result = LargeResult(out, written.get(scaled.probabilities), scaled.objects, full, time.perf_counter() - begin,
                         written.get(scaled.uncertainty))
    yield Finished({"objects": result.objects, "seconds": result.seconds,
                    "megapixels_per_second": int(np.prod(full)) / 1e6 / max(result.seconds, 1e-9)})
    return result


class _Leading:
    """A (Z, Y, X) array-like seen as (1, Z, Y, X)."""

    def __init__(self, array: Any) -> None:
        self.array, self.shape = array, (1, *array.shape)

    def __getitem__(self, key: tuple) -> np.ndarray:
        return np.asarray(self.array[key[1:]])[None]


def stream_view(bundle: ModelBundle, view: Any, out: Path, cfg: PredictConfig, probabilities: bool, chunk: int,
                tile: int, halo: int | None, min_level_size: int) -> Generator[object, None, LargeResult]:
    """``predict_large`` of a (C, *S) view (``ChannelsFirst``, ``VolumeChannelsFirst``) on its own grid."""
    # deferred: scikit-image loads at first use
    from napari_unet.inference.predict import mc_dropout_tile_fn, network_tile_fn, tile_geometry

    begin = time.perf_counter()
    dims = bundle.config.model.dims
    shape = tuple(view.shape[1:])
    if dims == 3:
        block, chunks = volume_blocks(shape, chunk)
        halo = VOLUME_HALO if halo is None else halo
        scale = list(voxel_spacing(bundle.config))
    else:
        block, chunks = chunk, (chunk, chunk)
        halo = 64 if halo is None else halo
        scale = None
    axes = ["z", "y", "x"][-len(shape):]
    bounds = sampled_percentiles(view, tuple(bundle.config.percentiles), polarity=bundle.config.polarity)
    net = bundle.net.eval()
    dtype = low_precision_dtype(next(net.parameters()).device, None)
    # 3D tiles carry a halo (``volume_context``), so they nearly agree before blending: a thin blend
    # (``VOLUME_OVERLAP``) suffices and spares most of the overlap's cost, which grows as its cube
    overlap = cfg.overlap if dims == 2 else min(cfg.overlap, VOLUME_OVERLAP)
    spec, allowed = tile_geometry(net, PredictConfig(tile_size=tile, overlap=overlap,
                                                     volume_tile_size=cfg.volume_tile_size,
                                                     volume_context=cfg.volume_context), shape)
    k, mc = bundle.n_outputs, max(cfg.mc_samples, 0)
    kinds = uncertainty_kinds(bundle.config) if mc else ()
    unit = "pixel" if dims == 2 else f"voxel (+ {spec.context or spec.margin}-voxel halo)"
    yield Message(f"streaming {'x'.join(map(str, shape))} in {spec.tile}-{unit} tiles to {out.name}"
                  + (f" with {mc} MC-dropout passes per tile" if mc else ""))
    prob_path, unc_path = _sibling(out, "probabilities"), _sibling(out, "uncertainty") if mc else None
    work = prob_path if probabilities else out.with_name(f".{out.name}.work")
    band = chunks[0] if dims == 2 else min(chunks[0], VOLUME_BAND)  # 2D: written in bands of whole chunks
    map_chunks = (1, band, *chunks[1:])
    map_scale = None if scale is None else [1.0, *scale]
    probs = create_ome_zarr(work, (k, *shape), np.float16, map_chunks, ["c", *axes], scale=map_scale)
    writers = [_band_writer(probs, band)]
    if unc_path is not None:
        maps = create_ome_zarr(unc_path, (len(kinds), *shape), np.float16, map_chunks, ["c", *axes], scale=map_scale)
        writers.append(_band_writer(maps, band))
    if mc:
        enable_mc_dropout(net)
        tile_fn = mc_dropout_tile_fn(net, dtype, mc, kinds=kinds)
    else:
        tile_fn = network_tile_fn(net, dtype)
    targets = [probs] if unc_path is None else [probs, maps]
    tiled = iter_tiled if dims == 2 else iter_tiled_blocks  # a volume: boxes, not bands across the plane
    try:
        with torch.inference_mode():
            for item in tiled(tile_fn, Normalized(view, bounds), k + len(kinds), spec, allowed, cfg.batch_size):
                if isinstance(item, Slab):  # (K [+ kinds], rows, W): probabilities [and uncertainty maps]
                    writers[0](Slab(item.start, item.stop, item.data[:k]))
                    if mc:
                        writers[1](Slab(item.start, item.stop, item.data[k:]))
                elif isinstance(item, Block):  # (K [+ kinds], *box) of a volume, written where it lies
                    for target, data in zip(targets, (item.data[:k], item.data[k:])):
                        target[(slice(None), *item.box)] = data.astype(target.dtype)
                else:
                    yield Progress(item.done, item.total, item.elapsed, "tiles")
    finally:
        net.eval()
    for push in writers:
        push(None)
    labels_dtype = np.uint32
    labels = create_ome_zarr(out, shape, labels_dtype, chunks, axes, labels=True, scale=scale)
    head = heads.of(bundle.config)
    if head is not None:  # the instance head's block-wise instances, with the model's tuned thresholds
        scratch = out.with_name(f".{out.name}.seeds")
        told = {} if dims == 2 else {"spacing": anisotropic_spacing(bundle.config)}  # 3D heads take it
        min_size = volume_scale.min_object_size(bundle, cfg.min_size)
        objects = yield from head.instances_blockwise(probs, labels, block, halo, min_size, scratch,
                                                      **told, **bundle.postprocess)
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        for _, box in block_grid(shape, block):
            labels[box] = np.asarray(probs[(slice(None), *box)]).argmax(axis=0).astype(labels_dtype)
        objects = 0
    if not probabilities:
        shutil.rmtree(work, ignore_errors=True)
    for path in (out, prob_path if probabilities else None, unc_path):
        if path is not None:
            yield from build_pyramid(path, min_size=min_level_size)
    result = LargeResult(out, prob_path if probabilities else None, objects, shape, time.perf_counter() - begin,
                         unc_path)
    yield Finished({"objects": objects, "seconds": result.seconds, "megapixels_per_second":
                            int(np.prod(shape)) / 1e6 / max(result.seconds, 1e-9)})
    return result


def volume_blocks(shape: tuple[int, ...], chunk: int = 1024) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(post-processing block, labels chunk) of a streamed (Z, Y, X) volume: ``VOLUME_BLOCK`` voxels
    per axis at most (``chunk`` caps every axis), never more than the volume holds."""
    block = tuple(max(1, min(b, chunk, n)) for b, n in zip(VOLUME_BLOCK, shape))
    return block, block


def streamed_summary(labels: Any, maps: Any | None, block: int = 1024) -> dict[str, float]:
    """Foreground fraction, mean object area (voxels in 3D) and mean (object) total uncertainty of
    on-disk outputs, read block by block: labels (*S), uncertainty ``maps`` (3, *S; total first) or None."""
    shape = tuple(labels.shape)
    if len(shape) == 3:
        block = min(block, 256)  # a (256, 256, 256) block of a volume
    fg = unc_sum = unc_fg = 0.0
    ids: set[int] = set()
    for _, box in block_grid(shape, block):
        lab = np.asarray(labels[box])
        mask = lab > 0
        fg += float(mask.sum())
        ids.update(np.unique(lab[mask]).tolist())
        if maps is not None:
            u = np.asarray(maps[(0, *box)], dtype=np.float64)
            unc_sum, unc_fg = unc_sum + float(u.sum()), unc_fg + float(u[mask].sum())
    total = float(np.prod(shape))
    row = {"foreground_fraction": round(fg / total, 5), "mean_area": round(fg / len(ids), 2) if ids else 0.0}
    if maps is not None:
        row["mean_uncertainty"] = round(unc_sum / total, 5)
        row["mean_object_uncertainty"] = round(unc_fg / fg, 5) if fg else 0.0
    return row
