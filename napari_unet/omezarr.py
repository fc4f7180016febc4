"""Minimal OME-Zarr (NGFF 0.4, Zarr v2 layout) reading and writing with plain ``zarr``.

An OME-Zarr image here is a Zarr group with one full-resolution array ``0`` and the NGFF
``multiscales`` metadata (axes and a unit scale); label images also carry ``image-label``.
That is what napari-ome-zarr, Fiji's MoBIE/n5 readers and ``ome-zarr-py`` open. No pyramid
levels are written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_unet.errors import UserError

NGFF_VERSION = "0.4"


def default_axes(ndim: int, channels: bool = False) -> list[str]:
    """Axis names for an array of ``ndim`` dimensions: [c,] [z,] y, x."""
    spatial = ["z", "y", "x"][-(ndim - int(channels)):] if ndim - int(channels) <= 3 else None
    if spatial is None:
        raise UserError(f"cannot write a {ndim}D array as OME-Zarr (at most c, z, y, x)")
    return (["c"] if channels else []) + spatial


def multiscales_attrs(axes: Sequence[str], name: str = "", scale: Sequence[float] | None = None) -> dict[str, Any]:
    """NGFF 0.4 ``multiscales`` attributes for one resolution level stored at ``0``."""
    scale = [float(v) for v in scale] if scale is not None else [1.0] * len(axes)
    kinds = {"c": "channel", "t": "time"}
    return {"multiscales": [{
        "version": NGFF_VERSION,
        "name": name,
        "axes": [{"name": a, "type": kinds.get(a, "space")} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]}


def create_ome_zarr(path: str | os.PathLike, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                    axes: Sequence[str] | None = None, labels: bool = False, name: str = "",
                    scale: Sequence[float] | None = None) -> Any:
    """Create (overwrite) an OME-Zarr group at ``path``; return its writable array ``0``."""
    import zarr

    axes = list(axes or default_axes(len(shape)))
    try:
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        array = group.create_array("0", shape=tuple(shape), chunks=tuple(chunks), dtype=np.dtype(dtype),
                                   fill_value=0)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    attrs = multiscales_attrs(axes, name or Path(path).name, scale)
    if labels:
        attrs["image-label"] = {"version": NGFF_VERSION}
    group.attrs.update(attrs)
    return array


def write_ome_zarr(path: str | os.PathLike, data: np.ndarray, axes: Sequence[str] | None = None,
                   labels: bool = False, chunk: int = 1024, scale: Sequence[float] | None = None) -> Path:
    """Write ``data`` as an OME-Zarr group; built beside ``path`` and renamed, so it is never half-written."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    axes = list(axes or default_axes(data.ndim))
    chunks = [1 if a == "c" else min(chunk, s) for a, s in zip(axes, data.shape)]
    array = create_ome_zarr(staging, data.shape, data.dtype, chunks, axes, labels, path.name, scale)
    array[...] = data
    if path.exists():
        shutil.rmtree(path)
    os.replace(staging, path)
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
