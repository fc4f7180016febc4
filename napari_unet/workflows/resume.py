"""Which files of a batch are already done, told from the output folder alone.

Every output is written under a temporary name and renamed (``io.write_image``,
``omezarr.write_ome_zarr``, the staged streamed stores), so a final name only ever holds a whole
file. After the last output of an input is in place, a small *record* is written atomically to
``OUT/.napari-unet-batch/<stem>.json``: the input's size and modification time, a key of the
model weights and output settings, the outputs and the summary row. An input counts as complete
when its record exists, the input, model and settings still match, and every recorded output
exists; a run killed at any moment leaves at most one input per worker (the ones in flight)
without a record, and only those are predicted again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from napari_unet.config import to_dict
from napari_unet.files.io import write_json

RECORDS = ".napari-unet-batch"  # hidden folder inside the output folder
RECORD_VERSION = 1


def run_key(bundle: Any, settings: dict[str, Any]) -> str:
    """A short hash of the model (weights, configuration, post-processing) and of ``settings``
    (what changes the outputs): a re-run with another model or other settings redoes every file."""
    import torch


    digest = hashlib.sha256()
    for name, tensor in sorted(bundle.net.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    described = {"config": to_dict(bundle.config), "postprocess": bundle.postprocess,
                 "classes": bundle.class_names, "settings": settings}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def record_path(out_dir: Path, rel: str | Path) -> Path:
    """Where the record of the input with output stem ``rel`` lives."""
    return Path(out_dir) / RECORDS / f"{rel}.json"


def _stamp(path: Path) -> list[int]:
    """(size, modification time in ns) of an input file or Zarr folder."""
    info = path.stat()
    return [int(info.st_size), int(info.st_mtime_ns)]


def completed_row(out_dir: Path, rel: str | Path, image: Path, key: str) -> dict[str, Any] | None:
    """The summary row of ``image`` if its outputs in ``out_dir`` are complete for ``key``, else None."""
    try:
        record = json.loads(record_path(out_dir, rel).read_text())
        if (record.get("version") != RECORD_VERSION or record.get("key") != key
                or record.get("input") != _stamp(image)):
            return None
        if not all((Path(out_dir) / name).exists() for name in record["outputs"]):
            return None
        return dict(record["row"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no record, unreadable, or from another version: predict again


def forget(out_dir: Path, rel: str | Path) -> None:
    """Drop the record before an input's outputs are rewritten (a kill then leaves it 'not done')."""
    record_path(out_dir, rel).unlink(missing_ok=True)


def write_record(out_dir: Path, rel: str | Path, image: Path, key: str, outputs: Iterable[Path],
                 row: dict[str, Any]) -> None:
    """Mark ``image`` complete; call after every output of it is in place."""
    out_dir = Path(out_dir)
    names = [str(Path(p).relative_to(out_dir)) for p in outputs]
    write_json(record_path(out_dir, rel), {"version": RECORD_VERSION, "key": key, "input": _stamp(image),
                                           "outputs": names, "row": row})


def clear_leftovers(out_dir: Path, rel: str | Path, names: Iterable[str]) -> None:
    """Remove what a killed run left behind for the input with output stem ``rel``: beside its
    outputs ``names`` temporary files (``.NAME.XXXXXXXX.tmp``) and staging stores (``.NAME.tmp``,
    ``.NAME.work``, ``.NAME.seeds``, ``.NAME.partial``, ``.NAME.old``), and its record's temporary.
    Call before any worker starts writing."""
    folder = (Path(out_dir) / rel).parent
    for name in names:
        for path in (folder / f".{name}{end}" for end in (".tmp", ".work", ".seeds", ".partial", ".old")):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink(missing_ok=True)
        _remove_temporaries(folder, name)
    record = record_path(out_dir, rel)
    _remove_temporaries(record.parent, record.name)


def _remove_temporaries(folder: Path, name: str) -> None:
    """``io.write_atomic_bytes`` temporaries of ``folder/name`` (``.NAME.`` + 8 random characters + ``.tmp``)."""
    for stale in glob.glob(os.path.join(glob.escape(str(folder)), f".{glob.escape(name)}.{'?' * 8}.tmp")):
        Path(stale).unlink(missing_ok=True)
