"""napari writer contributions (npe2): save label layers as TIFF or OME-Zarr.

Plain functions with the npe2 single-layer writer signature ``(path, data, meta) -> [paths]``;
no Qt or napari import, so they are tested and usable headless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.files.io import labels_dtype, write_image
from napari_unet.files.omezarr import write_ome_zarr


def _label_array(data: Any) -> np.ndarray:
    """Full-resolution labels as a numpy array in the smallest unsigned type that fits."""
    if isinstance(data, (list, tuple)):  # multiscale layer: keep level 0
        data = data[0]
    array = np.asarray(data)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.size and array.min() < 0:
        return array.astype(np.int32)
    top = int(array.max()) if array.size else 0
    return array.astype(np.uint8 if top < 256 else labels_dtype(top), copy=False)


def write_labels_tif(path: str, data: Any, meta: dict) -> list[str]:
    """Write a label layer as a zlib-compressed TIFF; returns the written path."""
    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_name(target.name + ".tif")
    write_image(target, _label_array(data))
    return [str(target)]


def write_labels_ome_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """Write a label layer as an OME-Zarr (NGFF 0.4) label image, keeping the layer's scale."""
    target = Path(path)
    if not target.name.endswith(".zarr"):
        target = target.with_name(target.name + ".ome.zarr")
    labels = _label_array(data)
    scale = meta.get("scale") if meta else None
    if scale is not None and len(scale) != labels.ndim:
        scale = None
    write_ome_zarr(target, labels, labels=True, scale=scale)
    return [str(target)]
