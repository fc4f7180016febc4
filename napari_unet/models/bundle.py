"""A trained model with everything needed to use it again: network, config, metadata.

It lives beside the networks so training and inference both import it downward (no cycle).

On disk a model folder holds ``model.safetensors`` and ``model.json``; the JSON carries the
full ``TrainConfig`` (architecture, task, normalisation), so the network is rebuilt from the
folder alone and no pickle is involved. A folder a training run wrote also holds the run's
training state (``training.state``: two more files), which ``--resume`` continues from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_unet import heads
from napari_unet.config import TrainConfig, from_dict
from napari_unet.errors import UserError
from napari_unet.files.bioimage_io import is_package, read_package_model
from napari_unet.files.io import check_model_meta, load_model_folder, save_model_folder, stamp_model_meta
from napari_unet.heads.base import OutputMaps
from napari_unet.models import UNet

MODEL_KIND = "napari-unet/segmentation"
FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    """A segmentation network and the configuration it was trained with."""

    net: torch.nn.Module
    config: TrainConfig
    meta: dict[str, Any] = field(default_factory=dict)
    resume: Any = None  # the run's ``training.state.TrainingState`` (saved beside the weights), or None

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def head(self):
        """The instance head (``heads.Head``) of this model; None for a semantic one."""
        return heads.of(self.config)

    @property
    def postprocess(self) -> dict[str, float]:
        """Instance post-processing tuned for this model: the thresholds of its head's ``rule_keys``
        in ``meta["postprocess"]``."""
        known = self.head.rule_keys if self.head is not None else ()
        return {k: v for k, v in (self.meta.get("postprocess") or {}).items() if k in known}

    @property
    def n_outputs(self) -> int:
        """Channels of the network's output maps (classes, or the instance head's maps)."""
        return heads.n_output_channels(self.config)

    @property
    def output_names(self) -> list[str]:
        """A name for every channel of the output maps: the classes, or the instance head's maps."""
        if self.head is not None:
            return self.head.channel_names(self.config)
        return self.class_names

    @property
    def class_names(self) -> list[str]:
        """The softmax classes of the output maps (an instance head's first ``n_classes`` channels)."""
        if self.head is not None:
            return self.head.channel_names(self.config)[:self.head.n_classes]
        return self.meta.get("class_names") or [f"class {i}" for i in range(self.config.n_classes)]


def build_network(cfg: TrainConfig) -> torch.nn.Module:
    """A fresh U-Net whose output channels fit the task."""
    from dataclasses import replace

    head = heads.of(cfg)
    side = head.side_channels(cfg) if head is not None else 0  # e.g. star rays / flows: the half-resolution side branch
    net = UNet(replace(cfg.model, out_channels=heads.n_output_channels(cfg) - side, side_channels=side))
    net.activation = OutputMaps(heads.n_output_classes(cfg), head)  # no parameters: the weights file is unchanged
    return net


def cpu_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights (used to keep the best model while training)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def save_bundle(bundle: ModelBundle, folder: str | os.PathLike) -> Path:
    """Write the model folder atomically (with the run's training state, when the bundle has one)."""
    meta = stamp_model_meta(bundle.meta, MODEL_KIND, FORMAT_VERSION, bundle.config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in cpu_state_dict(bundle.net).items()}
    return save_model_folder(folder, state, meta, bundle.resume.files() if bundle.resume is not None else None)


def read_model(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a model folder, or of a bioimage.io package napari-unet exported
    (its attachments hold the same two files)."""
    return read_package_model(path) if is_package(path) else load_model_folder(path)


def load_bundle(folder: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild a model from its folder (or bioimage.io package); clear errors for other kinds or
    newer formats."""
    tensors, meta = read_model(folder)
    check_model_meta(meta, folder, MODEL_KIND, FORMAT_VERSION, "segmentation")
    if not isinstance(meta.get("config"), dict):
        raise UserError(f"{folder}/model.json has no training configuration")
    try:
        cfg = from_dict(TrainConfig, meta["config"])
        net = build_network(cfg)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UserError(f"{folder}/model.json holds an invalid configuration: {type(exc).__name__}: {exc}"
                        .split("\n")[0]) from None
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise UserError(f"the weights in {folder} do not fit its configuration: {_first_reason(exc)}") from None
    net.to(device).eval()
    return ModelBundle(net, cfg, meta)


def _first_reason(exc: Exception) -> str:
    """The first informative line of a ``load_state_dict`` error (its first line is a header)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:200]
