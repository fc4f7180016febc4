"""Applying a trained model to images, files and folders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from napari_unet import heads
from napari_unet.arrays.layout import array_layout
from napari_unet.arrays.normalize import has_nonfinite, prepare_image
from napari_unet.config import PredictConfig
from napari_unet.errors import UserError
from napari_unet.events import Finished, Message, Progress, run_to_end
from napari_unet.files.io import labels_dtype, read_image, write_image
from napari_unet.inference import size, volume_scale
from napari_unet.inference.labels import labels_for
from napari_unet.inference.tiling import AllowedFn, TileFn, TileSpec, predict_tiled, round_up
from napari_unet.inference.uncertainty import CLASS_KINDS, mc_uncertainty
from napari_unet.models import enable_mc_dropout
from napari_unet.models.bundle import ModelBundle
from napari_unet.models.unet import _valid_input_size, _valid_output_size
from napari_unet.runtime import sizes
from napari_unet.runtime.device import autocast, channels_last_format, low_precision_dtype, volume_forward_budget

_log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Result for one image: probabilities (K, H, W), labels (H, W), optional uncertainty maps."""

    probabilities: np.ndarray
    labels: np.ndarray
    uncertainty: dict[str, np.ndarray] = field(default_factory=dict)
    sizing: size.Sizing | None = None  # how object size was treated (None: not asked)


def network_forward(net: torch.nn.Module, batch: np.ndarray, dtype: torch.dtype | None = None) -> np.ndarray:
    """Output maps for a batch (B, C, H, W) -> (B, K, H, W), on the network's device: softmax
    probabilities, or the maps of the model's instance head (``heads.Head.maps``)."""
    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    if dtype is not None and (x.ndim == 4 or (x.ndim == 5 and device.type == "cpu")):
        x = x.contiguous(memory_format=channels_last_format(x.ndim - 2))
    with torch.inference_mode(), autocast(device, dtype):
        logits = net(x)
        activation = getattr(net, "activation", None)  # set by build_network: the head's output maps
        maps = activation(logits) if activation is not None else logits.float().softmax(dim=1)
    return maps.cpu().numpy()


def tile_geometry(net: torch.nn.Module, cfg: PredictConfig,
                  shape: Sequence[int] | None = None) -> tuple[TileSpec, AllowedFn]:
    """Overlap-tile geometry for ``net``: mirrored margin for valid networks, a halo of at least
    the receptive radius for same 2D networks, tile starts on the pooling grid. 3D networks: a halo
    of ``cfg.volume_context`` voxels (at most the receptive radius) and tiles of
    ``cfg.volume_tile_size``, or (0) sized by memory for the volume's spatial ``shape``
    (``runtime.sizes.volume_tile``)."""
    ucfg = getattr(net, "cfg", None)
    if ucfg is None:  # an arbitrary callable network: plain tiles
        return TileSpec(cfg.tile_size, cfg.overlap), lambda n: n
    depth, align = ucfg.depth, 2**ucfg.depth
    probe = _valid_input_size(1, depth)
    radius = (probe - _valid_output_size(probe, depth)) // 2  # pixels each output sees per side
    extra = align if (ucfg.attention or ucfg.upsample == "interpolate") else 1  # linear resampling reach
    context = round_up(radius + extra, align)
    if ucfg.dims == 3:  # a 3D tile costs the cube of its side plus halo: sized by memory
        context = min(context, round_up(cfg.volume_context, align))
        cfg = replace(cfg, tile_size=min(cfg.tile_size, cfg.volume_tile_size or volume_tile_size(
            net, radius if ucfg.padding == "valid" else context, align, shape)))
    if ucfg.padding == "valid":
        def allowed(n: int) -> int:
            return _valid_output_size(_valid_input_size(n, depth), depth)
        return TileSpec(allowed(cfg.tile_size), cfg.overlap, margin=radius, align=align), allowed
    return TileSpec(round_up(cfg.tile_size, align), cfg.overlap, context=context, align=align), \
        (lambda n: round_up(n, align))


def volume_tile_size(net: torch.nn.Module, halo: int, align: int, shape: Sequence[int] | None = None) -> int:
    """The 3D tile side whose forward pass (with ``halo`` voxels per side) fits the memory budget of
    the network's device (``runtime.sizes.volume_tile``)."""
    device = next(net.parameters()).device
    low = low_precision_dtype(device, None) is not None
    return sizes.volume_tile(volume_forward_budget(device), sizes.forward_bytes_per_voxel(net.cfg.base_width, low),
                             halo, align, shape)


def network_tile_fn(net: torch.nn.Module, dtype: torch.dtype | None, seed: int | None = None) -> TileFn:
    """The network as a tile function: (B, C, *S_in) -> softmax (B, K, *S_out).

    ``seed`` (MC-dropout passes): every tile is run on its own after seeding the RNG, so all
    tiles of one pass draw the same (channel) dropout mask and the blended maps have no seams.
    """
    if seed is None:
        return lambda batch: network_forward(net, batch, dtype)

    def seeded(batch: np.ndarray) -> np.ndarray:
        out = []
        for item in batch:
            torch.manual_seed(seed)
            out.append(network_forward(net, item[None], dtype))
        return np.concatenate(out)

    return seeded


def mc_dropout_tile_fn(net: torch.nn.Module, dtype: torch.dtype | None, samples: int, seed: int = 0,
                       kinds: Sequence[str] = CLASS_KINDS) -> TileFn:
    """MC-dropout as a tile function: (B, C, *S_in) -> (B, K + len(kinds), *S_out), the mean maps
    of ``samples`` dropout passes followed by the ``kinds`` uncertainty maps
    (``uncertainty.uncertainty_kinds`` of the model).

    Pass ``t`` of every tile is seeded ``seed + t``, so it draws the same (channel) dropout mask
    as pass ``t`` over the whole image in ``predict_probabilities``: overlapping tiles agree, the
    blended maps have no seams and equal the whole-image maps. ``net`` must be in MC-dropout mode
    (``models.enable_mc_dropout``)."""

    def fn(batch: np.ndarray) -> np.ndarray:
        out = []
        for item in batch:  # one item at a time: a batch would draw a different mask per item
            draws = []
            for t in range(samples):
                torch.manual_seed(seed + t)
                draws.append(network_forward(net, item[None], dtype)[0])  # (K, *S_out)
            maps = mc_uncertainty(np.stack(draws), getattr(getattr(net, "activation", None), "head", None))
            out.append(np.concatenate([maps["probabilities"], np.stack([maps[k] for k in kinds])]))
        return np.stack(out)  # (B, K + len(kinds), *S_out)

    return fn


MIN_OOM_TILE = 64  # the smallest tile tried after the GPU ran out of memory


def smaller_after_oom(cfg: PredictConfig) -> PredictConfig:
    """Half the batch, else half the tile (and keep the overlap below a quarter of it); ``UserError``
    when both are already minimal."""
    if cfg.batch_size > 1:
        return replace(cfg, batch_size=cfg.batch_size // 2)
    if cfg.tile_size > MIN_OOM_TILE:
        tile = max(cfg.tile_size // 2, MIN_OOM_TILE)
        return replace(cfg, tile_size=tile, overlap=min(cfg.overlap, tile // 4))
    raise UserError(f"the GPU ran out of memory even with {MIN_OOM_TILE}-pixel tiles; predict on the CPU")


def predict_normalized(net: torch.nn.Module, chw: np.ndarray, n_out: int, cfg: PredictConfig,
                       dtype: torch.dtype | None, seed: int | None = None) -> np.ndarray:
    """Probabilities (K, *S) of an already normalised (C, *S) image, tiled when large.

    When the GPU runs out of memory the batch, then the tile, is halved and the image retried.
    ``seed``: one MC-dropout pass with the same dropout mask in every tile.
    """
    while True:
        spec, allowed = tile_geometry(net, cfg, chw.shape[1:])
        try:
            return predict_tiled(network_tile_fn(net, dtype, seed), chw, n_out, spec.tile, spec.overlap,
                                 margin=spec.margin, batch_size=cfg.batch_size, context=spec.context,
                                 align=spec.align, allowed=allowed)
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            cfg = smaller_after_oom(cfg)
            _log.warning("GPU out of memory: retrying with tile %d, batch %d", cfg.tile_size, cfg.batch_size)


def predict_probabilities(bundle: ModelBundle, image: np.ndarray, cfg: PredictConfig = PredictConfig(),
                          mc_dropout: bool = False, seed: int = 0) -> np.ndarray:
    """Class probabilities (K, *S) for one raw image (2D, a 3D volume for a 3D model, or a
    (Z, H, W) stack predicted slice by slice by a 2D model); tiles large images."""
    mcfg = bundle.config.model
    if array_layout(image.shape, False, mcfg.in_channels, mcfg.dims).is_stack:  # a 2D model, slice by slice
        slices = [predict_probabilities(bundle, plane, cfg, mc_dropout, seed + z) for z, plane in enumerate(image)]
        return np.stack(slices, axis=1)  # (K, Z, H, W)
    chw = prepare_image(image, mcfg.in_channels, bundle.config.percentiles, mcfg.dims, bundle.config.polarity)
    device = next(bundle.net.parameters()).device
    dtype = low_precision_dtype(device, None)
    net = bundle.net
    net.eval()
    if mc_dropout:
        enable_mc_dropout(net)
    try:
        return predict_normalized(net, chw, bundle.n_outputs, cfg, dtype, seed if mc_dropout else None)
    finally:
        net.eval()


def predict_image(bundle: ModelBundle, image: np.ndarray, cfg: PredictConfig = PredictConfig(),
                  rgb: bool = False) -> Prediction:
    """Probabilities, labels and (with ``cfg.mc_samples`` > 0) MC-dropout uncertainty, with the
    image scaled so its objects come to the size the model learned (``cfg.diameter``,
    ``object_sizing``); the arrays are on the image's grid."""
    def unscaled(img: np.ndarray, c: PredictConfig) -> Generator[object, None, Prediction]:
        return predict_unscaled(bundle, img, c)
        yield  # a generator without events, for ``sized``

    return run_to_end(sized(bundle, image, cfg, rgb, unscaled))


def sized(bundle: ModelBundle, image: np.ndarray, cfg: PredictConfig, rgb: bool,
          unscaled: Callable[[np.ndarray, PredictConfig], Generator[object, None, Prediction]],
          ) -> Generator[object, None, Prediction]:
    """The object-size path of every in-memory prediction: measure (``object_sizing``), predict the
    scaled image with ``unscaled`` (a generator of events returning a ``Prediction``), keep it
    only when it is ``confirmed``, and bring it back to the image's grid; else the image as it is."""
    sizing, first = object_sizing(bundle, image, cfg, rgb)
    factors = volume_scale.factors_of(bundle.config)
    if factors is not None:  # a 3D model that works on scaled volumes (decided when it trained)
        return (yield from at_volume_scale(bundle, image, cfg, rgb, unscaled, factors))
    pred = None
    if sizing.factor != 1:
        axes, shape = spatial_axes(bundle, image.shape, rgb)
        scaled = yield from unscaled(size.rescale_image(image, sizing.factor, axes), scaled_config(cfg, sizing.factor))
        sizing = confirmed(sizing, scaled.labels)
        pred = restore(scaled, shape) if sizing.factor != 1 else None
    if pred is None:
        pred = first if first is not None and cfg.mc_samples == 0 else (yield from unscaled(image, cfg))
    pred.sizing = sizing
    return pred


def at_volume_scale(bundle: ModelBundle, image: np.ndarray, cfg: PredictConfig, rgb: bool,
                    unscaled: Callable[[np.ndarray, PredictConfig], Generator[object, None, Prediction]],
                    factors: tuple[float, ...]) -> Generator[object, None, Prediction]:
    """A volume predicted at its model's volume scale (``inference.volume_scale``), brought back to
    the volume's grid; the smallest object kept scales with the voxel volume."""
    axes, shape = spatial_axes(bundle, image.shape, rgb)
    small = replace(cfg, min_size=volume_scale.scaled_min_size(cfg.min_size, factors))
    pred = restore((yield from unscaled(size.rescale_image(image, factors, axes), small)), shape)
    pred.sizing = size.Sizing(f"the model's volume scale, x{factors[1]:.2f} along y/x and x{factors[0]:.2f} along z",
                              factors[1])
    return pred


def confirmed(sizing: size.Sizing, scaled_labels: np.ndarray) -> size.Sizing:
    """An auto ``sizing`` whose scaled prediction holds objects of about the learned size; else
    factor 1 (predict the image as it is): the first estimate was fooled (e.g. by a few merged
    clusters, or by noise predicted as specks on an image with hardly any objects)."""
    if sizing.how != size.AUTO:
        return sizing
    again, _ = size.diameter_of(scaled_labels > 0)
    if again is not None and size.factor_for(sizing.range or sizing.learned, again) == 1:
        return sizing
    return replace(sizing, how="not confirmed on the scaled image", factor=1.0)


def predict_unscaled(bundle: ModelBundle, image: np.ndarray, cfg: PredictConfig = PredictConfig()) -> Prediction:
    """``predict_image`` on the image as it is (no object-size rescaling)."""
    if cfg.mc_samples > 0:
        samples = np.stack([predict_probabilities(bundle, image, cfg, mc_dropout=True, seed=t)
                            for t in range(cfg.mc_samples)])
        maps = mc_uncertainty(samples, heads.of(bundle.config))
        probs = maps.pop("probabilities")
    else:
        probs, maps = predict_probabilities(bundle, image, cfg), {}
    return Prediction(probs, labels_for(bundle, probs, cfg.min_size), maps)


def spatial_axes(bundle: ModelBundle, shape: tuple[int, ...], rgb: bool = False) -> tuple[list[int], tuple[int, ...]]:
    """(the image axes of an array of ``shape``, the (H, W) or (Z, Y, X) they span) for ``bundle``'s model."""
    mcfg = bundle.config.model
    layout = array_layout(shape, rgb, mcfg.in_channels, mcfg.dims)
    return list(layout.spatial_axes), tuple(layout.spatial)


def scaled_config(cfg: PredictConfig, factor: float) -> PredictConfig:
    """``cfg`` for the image scaled by ``factor``: the smallest object kept scales with the area."""
    return replace(cfg, min_size=int(round(cfg.min_size * factor**2)))


def restore(pred: Prediction, shape: tuple[int, ...]) -> Prediction:
    """A prediction made on a scaled image, back on the image's (H, W) or (Z, Y, X) grid ``shape``:
    maps linearly, labels by nearest neighbour (ids kept)."""
    return Prediction(size.resize_maps(pred.probabilities, shape), size.resize_labels(pred.labels, shape),
                      {k: size.resize_maps(v, shape) for k, v in pred.uncertainty.items()})


def object_sizing(bundle: ModelBundle, image: np.ndarray, cfg: PredictConfig,
                  rgb: bool = False) -> tuple[size.Sizing, Prediction | None]:
    """How ``image`` is scaled for ``bundle`` under ``cfg.diameter``, and the plain one-pass
    prediction auto measured the objects on (None when it made none). Auto measures the union of
    that prediction's labels (``size.diameter_of``; for a stack, its middle image) and only
    shrinks images whose objects are larger than the model learned. A 3D model is never
    rescaled: auto is off for it and a given diameter a ``UserError``."""
    diameter = size.parse_diameter(cfg.diameter)
    learned = size.learned_diameter(bundle.meta)
    if diameter == size.OFF:
        return size.Sizing(size.OFF), None
    if bundle.config.model.dims == 3:
        if diameter != size.AUTO:
            raise UserError("a given object diameter rescales 2D images only; use diameter auto or off with a 3D model")
        return size.Sizing("off for 3D models"), None
    if learned is None:
        if diameter != size.AUTO:
            raise UserError("this model records no learned object size (trained before it was recorded, or a "
                            "semantic model): a given diameter cannot be compared with it; use diameter off")
        return size.Sizing("not recorded for this model"), None
    if diameter != size.AUTO:
        return size.Sizing("given", size.factor_for(learned, diameter, dead_zone=1.0), learned, diameter), None
    mcfg = bundle.config.model
    layout = array_layout(image.shape, rgb, mcfg.in_channels, mcfg.dims)
    probe = image[image.shape[0] // 2] if layout.is_stack else image
    first = predict_unscaled(bundle, probe, replace(cfg, mc_samples=0))
    seen, parts = size.diameter_of(first.labels > 0)
    if seen is None:
        return size.Sizing(f"too few objects to measure ({parts})", 1.0, learned), None if layout.is_stack else first
    span = size.learned_range(bundle.meta)
    factor = size.factor_for(span, seen)
    # auto only shrinks: enlarging objects seen smaller than learned lost AP@0.5 at the same
    # magnification (stained K=10 seed 1: 0.509 -> 0.437; docs/experiments.md); a given diameter enlarges
    why = size.AUTO if factor < 1 else "smaller than learned: not enlarged" if factor > 1 else "within the learned range"
    return size.Sizing(why, min(factor, 1.0), learned, seen, span), None if layout.is_stack else first


def output_path(out_dir: Path, image_path: Path, suffix: str = ".tif") -> Path:
    """Where the labels of ``image_path`` go: ``OUT_DIR/<stem>.tif``."""
    return out_dir / f"{image_path.stem}{suffix}"


def predict_files(bundle: ModelBundle, paths: Sequence[Path], out_dir: Path,
                  cfg: PredictConfig = PredictConfig()) -> Generator[object, None, list[Path]]:
    """Predict each file and write its labels; yields ``Progress`` per image, then ``Finished``."""
    import time


    start, written = time.perf_counter(), []
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"the output {out_dir} exists and is not a folder")
    for i, path in enumerate(paths):
        try:
            image = read_image(path)
            if has_nonfinite(image):
                yield Message(f"{Path(path).name}: NaN/Inf pixels replaced by the image median", level="warning")
            prediction = predict_image(bundle, image, cfg)
            if prediction.sizing is not None and prediction.sizing.how != size.OFF:
                yield Message(f"{Path(path).name}: {prediction.sizing.text}")
        except MemoryError:
            raise UserError(f"out of memory (RAM) predicting {Path(path).name}; use a smaller tile size") from None
        labels = prediction.labels
        if bundle.task == "instances":
            labels = labels.astype(labels_dtype(int(labels.max()) if labels.size else 0))
        target = output_path(out_dir, Path(path))
        write_image(target, labels)
        written.append(target)
        yield Progress(i + 1, len(paths), time.perf_counter() - start, Path(path).name)
    yield Finished({"images": len(written)})
    return written
