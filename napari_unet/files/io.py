"""Reading and writing images, label masks and model folders.

Model folders hold ``model.safetensors`` (weights) and ``model.json`` (configuration,
normalisation, metrics): nothing in them is ever unpickled. Every write is atomic: we write
next to the target and rename, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from napari_unet import __version__
from napari_unet.config import to_dict
from napari_unet.errors import OutputError, UserError

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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _atomic_target(path: Path) -> Path:
    """A temporary file beside ``path`` with the permissions a plain ``open`` would give it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it private (0600)
    except (OSError, AttributeError):  # no fchmod (Windows) or a file system without modes
        pass
    finally:
        os.close(fd)
    return Path(tmp)


def write_atomic_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to ``path`` so that readers see the old or the new file, never half of one."""
    path = Path(path)
    tmp: Path | None = None
    try:
        tmp = _atomic_target(path)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)  # a full disk must not also keep a half-written temporary
        raise OutputError(f"cannot write {path}: {_os_reason(exc)}") from None


def _os_reason(exc: OSError) -> str:
    """A short reason for a failed write, with a hint for the common cases."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return f"{reason} (the disk is full; free space or choose another folder)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason} (the folder is read-only; choose another output folder)"
    return reason


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


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort; not every platform can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _recover_model_folder(folder: Path) -> None:
    """Finish a swap that a crash interrupted: restore ``.NAME.old`` when ``NAME`` is missing."""
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and (old / META_FILE).is_file():
        os.replace(old, folder)


def replace_folder(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder ``source`` to ``target``, replacing what is there; readers see the
    old folder, none, or the new one, never a partly written one (model folders, OME-Zarr stores)."""
    source, target = Path(source), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def recover_model_folder(folder: str | os.PathLike) -> None:
    """Finish a model-folder swap a crash interrupted, for readers of other files in the folder."""
    try:
        _recover_model_folder(Path(folder))
    except OSError:
        pass


def save_model_folder(folder: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any],
                      extra: dict[str, bytes] | None = None) -> Path:
    """Write weights (safetensors) and metadata (JSON) into ``folder`` atomically.

    ``extra``: more files (name -> bytes) written in the same swap, such as a run's training state.

    The folder is assembled (and fsynced) in a hidden staging folder beside the target, then
    swapped in with renames: readers see the previous model or the new one, never a mix. A
    crash between the two renames leaves ``.NAME.old``, which the next load or save restores.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    staging: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _recover_model_folder(folder)
        for stale in folder.parent.glob(f".{folder.name}.stage-*"):  # left by a killed save
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stage-", dir=folder.parent))
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / WEIGHTS_FILE))
        with open(staging / META_FILE, "w") as fh:
            fh.write(json.dumps(meta, indent=2, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
        for name, data in (extra or {}).items():
            with open(staging / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        with open(staging / WEIGHTS_FILE, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        replace_folder(staging, folder)
        staging = None
        _fsync_dir(folder.parent)
    except OSError as exc:
        raise UserError(f"cannot save model to {folder}: {_os_reason(exc)}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def stamp_model_meta(meta: dict[str, Any], kind: str, format_version: int, config: Any) -> dict[str, Any]:
    """A copy of ``meta`` with what every model folder records: kind, format, version, time, config."""
    import copy
    import datetime as _dt


    stamped = copy.deepcopy(meta)
    stamped.update(kind=kind, format_version=format_version, napari_unet_version=__version__,
                   saved=_dt.datetime.now().isoformat(timespec="seconds"), config=to_dict(config))
    return stamped


def check_model_meta(meta: dict[str, Any], folder: str | os.PathLike, kind: str, format_version: int,
                     what: str) -> None:
    """``UserError`` unless ``meta`` is a ``kind`` model (``what``: 'segmentation'...) this version reads."""

    if meta.get("kind") != kind:
        raise UserError(f"{folder} holds a {meta.get('kind', 'unknown')!r} model, not a {what} model")
    if int(meta.get("format_version", 0)) > format_version:
        raise UserError(f"{folder} was saved by napari-unet {meta.get('napari_unet_version', '?')} in a newer "
                        f"format; upgrade napari-unet (this is {__version__})")


LEGACY_WEIGHTS = ("model.pt", "model.pth")


def _load_legacy_weights(path: Path) -> dict[str, Any]:
    """Tensors from a PyTorch ``.pt``/``.pth`` state dict, unpickled only by torch's weights-only loader.

    ``weights_only=True`` refuses any pickle that would build objects other than tensors and
    plain containers, so a crafted file cannot run code; we refuse it with a clear message.
    """
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"refusing to load {path.name}: it is not a plain PyTorch state dict "
                        f"(only tensors are accepted; nothing was executed): {first}"[:300]) from None
    except Exception as exc:
        raise UserError(f"cannot read {path}: {type(exc).__name__}: {exc}".split("\n")[0]) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path.name} does not hold a state dict of tensors")
    return dict(state)


def load_model_folder(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read (tensors, metadata) from a model folder; never runs code from the files.

    Weights come from ``model.safetensors``; a legacy ``model.pt``/``model.pth`` state dict is
    accepted only through ``torch.load(weights_only=True)``.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.exists():
        try:
            _recover_model_folder(folder)
        except OSError:
            pass
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if folder.is_file():
        raise UserError(f"{folder} is a file; a model is a folder holding {META_FILE} and {WEIGHTS_FILE}")
    if not folder.is_dir():
        raise UserError(f"no such model folder: {folder}")
    legacy = [folder / name for name in LEGACY_WEIGHTS if (folder / name).is_file()]
    if not meta_path.is_file() or not (weights_path.is_file() or legacy):
        raise UserError(f"{folder} is not a napari-unet model folder (needs {META_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {meta_path}: {type(exc).__name__}: {exc}".split("\n")[0]) from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} is not a napari-unet model description (expected a JSON object)")
    if not weights_path.is_file():
        return _load_legacy_weights(legacy[0]), meta
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:
        raise UserError(f"cannot read {weights_path} (corrupt or truncated?): {type(exc).__name__}: {exc}"
                        .split("\n")[0]) from None
    return tensors, meta
