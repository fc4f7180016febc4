"""Reading and writing images, label masks and model folders.

Model folders hold ``model.safetensors`` (weights) and ``model.json`` (configuration,
normalisation, metrics): nothing in them is ever unpickled. Every write is atomic: we write
next to the target and rename, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from napari_unet.errors import UserError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def list_images(inputs: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files and folders into a sorted list of image files."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found += sorted(p for p in path.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"no such file or folder: {path}")
    return found


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a numpy array (2D, or channels last for colour)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except Exception as exc:  # corrupt or unsupported files come in many exception types
        raise UserError(f"cannot read {path.name}: {type(exc).__name__}: {exc}".split("\n")[0]) from None
    return np.asarray(data)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask: integer array, colour masks reduced to their first channel."""
    mask = read_image(path)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = mask[..., 0]
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        if not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask)):
            raise UserError(f"{Path(path).name}: a mask must hold whole numbers (labels)")
        mask = mask.astype(np.int64)
    return mask


def pair_files(images_dir: str | os.PathLike, masks_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Match image and mask files by file stem (``a.png`` with ``a.tif``, ``a_mask.tif``...)."""
    images = list_images([images_dir])
    masks = list_images([masks_dir])
    if not images:
        raise UserError(f"no images found in {images_dir}")
    by_stem = {m.stem: m for m in masks}
    for suffix in ("_mask", "_masks", "_labels", "_label", "_gt"):
        for m in masks:
            if m.stem.endswith(suffix):
                by_stem.setdefault(m.stem[: -len(suffix)], m)
    pairs = [(img, by_stem[img.stem]) for img in images if img.stem in by_stem]
    if not pairs:
        raise UserError(f"no mask in {masks_dir} matches an image in {images_dir} by file name")
    return pairs


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_atomic_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to ``path`` so that readers see the old or the new file, never half of one."""
    path = Path(path)
    try:
        tmp = _atomic_target(path)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_image(path: str | os.PathLike, data: np.ndarray) -> None:
    """Write an array as TIFF (``.tif``) or PNG (``.png``), atomically."""
    import io as _io

    path = Path(path)
    buf = _io.BytesIO()
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(buf, data, compression="zlib")
    else:
        import imageio.v3 as iio

        iio.imwrite(buf, data, extension=path.suffix.lower())
    write_atomic_bytes(path, buf.getvalue())


def labels_dtype(max_label: int) -> type:
    """Smallest unsigned type that holds labels up to ``max_label`` (at least uint16)."""
    return np.uint16 if max_label < 2**16 else np.uint32


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    write_atomic_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


def save_model_folder(folder: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write weights (safetensors) and metadata (JSON) into ``folder`` atomically.

    The folder is assembled beside the target and swapped in, so an interrupted save leaves
    the previous model intact.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / WEIGHTS_FILE))
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except OSError as exc:
        raise UserError(f"cannot save model to {folder}: {exc.strerror or exc}") from None
    return folder


def load_model_folder(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read (tensors, metadata) from a model folder; never unpickles anything."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise UserError(f"no such model folder: {folder}")
    if not meta_path.is_file() or not weights_path.is_file():
        raise UserError(f"{folder} is not a napari-unet model folder (needs {META_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(weights_path))
    except Exception as exc:
        raise UserError(f"cannot read model in {folder}: {type(exc).__name__}: {exc}".split("\n")[0]) from None
    return tensors, meta
