"""Minimal OME-Zarr (NGFF 0.4, Zarr v2 layout) reading and writing with plain ``zarr``.

An OME-Zarr image here is a Zarr group holding a resolution pyramid: array ``0`` at full
resolution and ``1``, ``2``, ... each halving the y and x axes (other axes, channels and z, are
kept) until the smaller of y, x is at most ``min_size`` pixels, with the NGFF ``multiscales``
metadata (axes; per level a ``scale`` and, for averaged levels, a half-pixel ``translation``).
Label images are subsampled (level n+1 = level n[..., ::2, ::2], so ids are never blended) and
carry ``image-label``; other images are 2x2 means. Levels are built block by block from the
level above, so memory holds one block whatever the image size. That is what
napari-ome-zarr, napari's built-in Zarr reader (a list of arrays: multiscale), Fiji's
MoBIE/n5 readers and ``ome-zarr-py`` open.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Generator, Literal, Sequence

import numpy as np

from napari_unet.errors import OutputError, UserError
from napari_unet.events import Progress
from napari_unet.files.io import replace_folder as replace_store

NGFF_VERSION = "0.4"
MIN_LEVEL_SIZE = 1024  # pyramids stop once the smaller of y, x is at most this many pixels
Downsample = Literal["nearest", "mean"]


def default_axes(ndim: int, channels: bool = False) -> list[str]:
    """Axis names for an array of ``ndim`` dimensions: [c,] [z,] y, x."""
    spatial = ["z", "y", "x"][-(ndim - int(channels)):] if ndim - int(channels) <= 3 else None
    if spatial is None:
        raise UserError(f"cannot write a {ndim}D array as OME-Zarr (at most c, z, y, x)")
    return (["c"] if channels else []) + spatial


def level_shapes(shape: Sequence[int], min_size: int = MIN_LEVEL_SIZE) -> list[tuple[int, ...]]:
    """Shapes of the pyramid levels of ``shape``: the last two axes halved (rounding up) while
    the smaller of them exceeds ``min_size``."""
    shapes = [tuple(int(s) for s in shape)]
    while min(shapes[-1][-2:]) > max(min_size, 1):
        *lead, h, w = shapes[-1]
        shapes.append((*lead, -(-h // 2), -(-w // 2)))
    return shapes


def multiscales_attrs(axes: Sequence[str], name: str = "", scale: Sequence[float] | None = None,
                      levels: int = 1, downsample: Downsample = "nearest") -> dict[str, Any]:
    """NGFF 0.4 ``multiscales`` attributes for ``levels`` resolution levels stored at ``0``, ``1``, ...

    Level ``i`` has the base ``scale`` with y and x multiplied by ``2**i``; averaged (``mean``)
    levels are shifted by half a level-0 pixel per halving, where their pixel centres lie."""
    base = [float(v) for v in scale] if scale is not None else [1.0] * len(axes)
    kinds = {"c": "channel", "t": "time"}
    datasets = []
    for i in range(levels):
        factor = [2.0**i if a in ("y", "x") else 1.0 for a in axes]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [b * f for b, f in zip(base, factor)]}]
        if downsample == "mean" and i > 0:
            transforms.append({"type": "translation", "translation": [b * (f - 1) / 2 for b, f in zip(base, factor)]})
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    entry = {"version": NGFF_VERSION, "name": name,
             "axes": [{"name": a, "type": kinds.get(a, "space")} for a in axes], "datasets": datasets}
    if levels > 1:
        entry["type"] = downsample
    return {"multiscales": [entry]}


def create_ome_zarr(path: str | os.PathLike, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                    axes: Sequence[str] | None = None, labels: bool = False, name: str = "",
                    scale: Sequence[float] | None = None) -> Any:
    """Create (overwrite) an OME-Zarr group at ``path``; return its writable array ``0``
    (add the lower resolutions with ``build_pyramid`` once it is filled)."""
    import zarr

    axes = list(axes or default_axes(len(shape)))
    try:
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        array = group.create_array("0", shape=tuple(shape), chunks=tuple(chunks), dtype=np.dtype(dtype),
                                   fill_value=0)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    attrs = multiscales_attrs(axes, name or Path(path).name, scale)
    if labels:
        attrs["image-label"] = {"version": NGFF_VERSION}
    group.attrs.update(attrs)
    return array


def halve(block: np.ndarray, how: Downsample) -> np.ndarray:
    """(..., h, w) -> (..., ceil(h/2), ceil(w/2)): every other pixel, or the mean of each 2x2
    cell (of the pixels it has, at odd edges), in ``block``'s dtype."""
    if how == "nearest":
        return block[..., ::2, ::2]
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    values = np.pad(block.astype(np.float32), pad)
    counts = np.pad(np.ones((h, w), np.float32), pad[-2:])
    sums = values[..., ::2, ::2] + values[..., 1::2, ::2] + values[..., ::2, 1::2] + values[..., 1::2, 1::2]
    n = counts[::2, ::2] + counts[1::2, ::2] + counts[::2, 1::2] + counts[1::2, 1::2]
    return (sums / n).astype(block.dtype)


def build_pyramid(path: str | os.PathLike, how: Downsample | None = None,
                  min_size: int = MIN_LEVEL_SIZE) -> Generator[Progress, None, int]:
    """Add levels ``1``, ``2``, ... below array ``0`` of the OME-Zarr group ``path`` and update its
    ``multiscales``; ``how`` defaults to ``nearest`` for label images, else ``mean``. Each level is
    written in blocks of its chunk size (y, x) read from the level above. Yields ``Progress`` per
    block; returns the number of levels."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    ms = group.attrs["multiscales"][0]
    how = how or ("nearest" if "image-label" in group.attrs else "mean")
    shapes = level_shapes(group["0"].shape, min_size)
    chunks = group["0"].chunks
    steps = [(i, y, x) for i in range(1, len(shapes))
             for y in range(0, shapes[i][-2], chunks[-2]) for x in range(0, shapes[i][-1], chunks[-1])]
    start, previous = time.perf_counter(), None
    for n, (i, y, x) in enumerate(steps):
        if i != previous:
            source = group[str(i - 1)]
            target = group.create_array(str(i), shape=shapes[i], chunks=tuple(min(c, s) for c, s in zip(chunks, shapes[i])),
                                        dtype=source.dtype, fill_value=0, overwrite=True)
            previous = i
        ys, xs = slice(y, y + chunks[-2]), slice(x, x + chunks[-1])
        block = np.asarray(source[..., 2 * y: 2 * ys.stop, 2 * x: 2 * xs.stop])  # (..., 2 * chunk, 2 * chunk)
        target[..., ys, xs] = halve(block, how)
        yield Progress(n + 1, len(steps), time.perf_counter() - start, "pyramid")
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    attrs = multiscales_attrs([a["name"] for a in ms["axes"]], ms.get("name", ""), scale, len(shapes), how)
    group.attrs.update(attrs)
    return len(shapes)


def write_ome_zarr(path: str | os.PathLike, data: np.ndarray, axes: Sequence[str] | None = None,
                   labels: bool = False, chunk: int = 1024, scale: Sequence[float] | None = None,
                   min_size: int = MIN_LEVEL_SIZE) -> Path:
    """Write ``data`` as an OME-Zarr group with its pyramid down to ``min_size``; built beside
    ``path`` and renamed, so it is never half-written."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    axes = list(axes or default_axes(data.ndim))
    chunks = [1 if a == "c" else min(chunk, s) for a, s in zip(axes, data.shape)]
    try:
        array = create_ome_zarr(staging, data.shape, data.dtype, chunks, axes, labels, path.name, scale)
        array[...] = data
        for _ in build_pyramid(staging, min_size=min_size):
            pass
        replace_store(staging, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left when something failed
    return path


def open_ome_zarr(path: str | os.PathLike) -> Any:
    """The full-resolution array of an OME-Zarr group (or a plain Zarr array), opened lazily."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise UserError(f"cannot open {path} as Zarr: {type(exc).__name__}: {exc}".split("\n")[0]) from None
    if hasattr(node, "shape"):
        return node
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    key = multiscales[0]["datasets"][0]["path"] if multiscales else "0"
    if key not in node:
        raise UserError(f"{path} is a Zarr group without an image array '{key}'")
    return node[key]


def open_pyramid(path: str | os.PathLike) -> list[Any]:
    """All resolution levels of an OME-Zarr group, largest first, opened lazily (what napari
    takes as a multiscale layer)."""
    import zarr

    node = zarr.open_group(str(path), mode="r")
    return [node[d["path"]] for d in node.attrs["multiscales"][0]["datasets"]]
