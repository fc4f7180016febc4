"""Which model a user's choice names: ``pretrained:NAME``, a model folder, a bioimage.io package
(zip or folder with ``rdf.yaml``, exported by napari-unet), or the model in memory (``CURRENT``).

The one rule for every front end: the CLI's ``train --init``, ``predict MODEL`` and
``export-model MODEL`` and the Train, Predict and Batch export widgets all go through here.
``model_path`` turns the text into a folder or package (``pretrained`` only keeps the registry of
shipped models), ``resolve_model`` loads it (``load_bundle`` checks what it holds), ``batch_source``
hands it to ``batch.predict_batch``. A bad spec is the same one-line ``UserError`` everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from napari_unet.errors import UserError
from napari_unet.pretrained import PREFIX, available, default_init, model_folder
from napari_unet.workflows.classes import config_task

CURRENT = "current model"  # the model trained or loaded in this viewer
SCRATCH = ("", "none", "scratch")  # no model: train from scratch


def model_path(spec: str | os.PathLike | None, required: bool = True) -> Path | None:
    """The folder or package ``spec`` names: ``pretrained:NAME`` the shipped folder, ``none`` /
    ``scratch`` / empty / None no model (an error when ``required``), anything else an existing path.

    Whether the path really holds a model is checked by ``load_bundle``. ``CURRENT`` names no path:
    ``resolve_model`` and ``batch_source`` take it before asking here.
    """
    text = "" if spec is None else os.fspath(spec).strip()
    if text.lower() in SCRATCH:
        if required:
            raise UserError("a model is required: give a model folder or "
                            + " / ".join(PREFIX + n for n in available()))
        return None
    if text.startswith(PREFIX):
        return model_folder(text[len(PREFIX):])
    path = Path(text).expanduser()
    if not path.exists():
        names = "".join(f", {PREFIX}{n}" for n in available())
        raise UserError(f"no such model folder: {text} (starting models: none{names})")
    return path


def resolve_model(spec: str | os.PathLike | None, current: Any = None, device: Any = "cpu",
                  required: bool = True) -> Any:
    """The ``ModelBundle`` ``spec`` names (``CURRENT``: ``current``) on ``device``; ``none`` gives
    None unless ``required``. Bad specs raise a one-line ``UserError``."""
    # deferred: imports torch
    from napari_unet.models.bundle import load_bundle

    if spec is not None and os.fspath(spec) == CURRENT:
        if current is None:
            raise UserError("no model yet: train one, load one, or choose a pretrained model")
        return current
    folder = model_path(spec, required)
    return None if folder is None else load_bundle(folder, device)


def batch_source(spec: str | os.PathLike, current: Any = None, device: Any = None) -> tuple[str, Any]:
    """(model text for ``batch.predict_batch``, preloaded bundle or None): the in-memory model
    travels as an object, any other spec as its folder, which batch workers (remote ones too) load
    themselves. With a ``device`` the folder's model is also loaded here, once (the CLI: a folder
    that holds no model fails before any file is read)."""
    if os.fspath(spec) == CURRENT:
        return CURRENT, resolve_model(spec, current)
    folder = model_path(spec)
    return str(folder), (None if device is None else resolve_model(folder, device=device))


def start_model(spec: str | None, task: str, architecture: dict[str, int] | None = None, current: Any = None,
                shown: Callable[[str], str] = lambda field: field.replace("_", " "),
                hint: str = "train from scratch for another architecture") -> Any:
    """The model a training run starts from, or None for scratch.

    No ``spec`` means the task's default (``pretrained:nuclei`` for instances, scratch otherwise),
    or scratch when an ``architecture`` (``depth``/``base_width``/``dims``) is asked for: a starting model
    keeps its own, so asking for another one together with a starting model is an error
    (``shown`` names a field in that message, ``hint`` says what to do instead).
    """

    architecture = architecture or {}
    if spec is None:
        spec = "none" if architecture else default_init(config_task(task))
    start = resolve_model(spec, current, required=False)
    if start is None:
        return None
    clash = [f"{shown(k)} {v}" for k, v in architecture.items() if getattr(start.config.model, k) != v]
    if clash:
        raise UserError(f"{' '.join(clash)} does not match the starting model {spec} "
                        f"(depth {start.config.model.depth}, base width {start.config.model.base_width}, "
                        f"{start.config.model.dims}D); "
                        f"{hint}")
    return start
