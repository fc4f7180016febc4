"""Starting models shipped inside the package, by name.

A starting model is an ordinary model folder (``model.safetensors`` + ``model.json`` +
``MODEL_CARD.md``) under this package; ``model_folder(name)`` finds it. What a user typed
(``pretrained:nuclei``, ``none``, a folder) is read by ``workflows.model_spec.model_path``, the
one rule the CLI and the widgets share. Only models whose training
data allows redistribution are shipped (the ISBI 2012 EM data is non-commercial: no EM model).

Importing this module does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_unet.errors import UserError

PREFIX = "pretrained:"
FINE_TUNE_LR = 0.2  # fine-tuning learning rate relative to training from scratch (5e-3 -> 1e-3)
# share of the fine-tuned weights in the returned model, the rest the start's: None = by how far the two
# agree on the annotated images (``training.finish.keep_by_agreement``; docs/benchmarks.md, "Gentle fine-tuning")
FINE_TUNE_KEEP = None
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class StartingModel:
    """One registry entry: where the folder is and what it is for."""

    name: str
    folder: Path
    task: str
    description: str
    data_licence: str


REGISTRY: dict[str, StartingModel] = {
    "nuclei": StartingModel(
        name="nuclei",
        folder=HERE / "nuclei",
        task="instances",
        description="fluorescence nuclei, instance segmentation (DSB 2018 stage 1, fluorescence subset)",
        data_licence="CC0",
    ),
}


def available() -> list[str]:
    """Names of the shipped starting models whose folder is present."""
    return [name for name, entry in REGISTRY.items() if (entry.folder / "model.json").is_file()]


def default_init(task: str) -> str:
    """The ``--init`` used when none is given: ``pretrained:nuclei`` for instances, else ``none``."""
    return f"{PREFIX}nuclei" if task == "instances" and "nuclei" in available() else "none"


def model_folder(name: str) -> Path:
    """Folder of the starting model ``name``; ``UserError`` naming the available ones otherwise."""
    entry = REGISTRY.get(name)
    if entry is None or name not in available():
        names = ", ".join(PREFIX + n for n in available()) or "none shipped"
        raise UserError(f"unknown starting model {PREFIX + name!r}; available: {names}")
    return entry.folder


def fine_tune_config(cfg: Any, init: Any) -> Any:
    """``cfg`` (a ``TrainConfig``) adapted to start from ``init`` (a ``ModelBundle``).

    Takes the starting model's architecture and normalisation percentiles, keeping this task's
    input channels (the Trainer re-initialises what then does not fit: first layer, head), and
    scales the learning rate by ``FINE_TUNE_LR``: a trained network needs smaller steps. From a
    shipped starting model (one with a record on a validation split, ``meta["val_split"]``, written
    by ``install_bundle``) the returned weights are blended back towards it (``FINE_TUNE_KEEP``): in
    the domain it knows, ten painted objects pulled it 0.02 below itself on other images. A user's
    own model is not: a run that starts from it to learn a few corrections keeps them. Not its
    ``polarity``: the fine-tuned model keeps the images as they are, and the Trainer inverts the
    first layer when the annotated objects are darker than their background
    (``checkpoint.transfer_input_layer``), which the user's annotations tell for sure.
    """
    from dataclasses import replace

    model = replace(init.config.model, in_channels=cfg.model.in_channels)
    return replace(cfg, model=model, percentiles=init.config.percentiles,
                   learning_rate=cfg.learning_rate * FINE_TUNE_LR,
                   fine_tune_keep=FINE_TUNE_KEEP if init.meta.get("val_split") else 1.0)


def install_bundle(bundle: Any, name: str, figures: dict[str, float] | None = None) -> Path:
    """Write ``bundle`` as the starting model ``name`` with float16 weights (halves the size).

    The weights load back as float32 (``load_state_dict`` casts); ``model.json`` records
    ``weights_dtype`` and the val-split ``figures``. The model card is written by hand.
    """
    import json

    import torch
    from safetensors.torch import save_file

    import dataclasses

    # deferred: imports torch
    from napari_unet.models.bundle import save_bundle

    folder = REGISTRY[name].folder
    card = folder / "MODEL_CARD.md"
    card_text = card.read_text() if card.is_file() else None
    if figures is not None:
        bundle.meta["val_split"] = figures
    save_bundle(dataclasses.replace(bundle, resume=None), folder)  # the whole folder, atomically; no training state
    if card_text is not None:
        card.write_text(card_text)
    state = {k: (v.to(torch.float16) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in bundle.net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    os.chmod(folder / "model.safetensors", 0o644)
    meta = json.loads((folder / "model.json").read_text())
    meta["weights_dtype"] = "float16"
    (folder / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder
