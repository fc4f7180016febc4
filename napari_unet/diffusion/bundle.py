"""A trained diffusion model: network (EMA weights), tag encoder, configuration; save and load.

On disk it is a model folder like the segmentation one (``model.safetensors`` + ``model.json``,
written atomically, nothing unpickled); the JSON carries the ``DiffusionConfig`` and the tag
vocabulary, so the folder alone rebuilds the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet.diffusion.config import DiffusionConfig, diffusion_config_from_dict
from napari_unet.diffusion.schedulers import NoiseSchedule
from napari_unet.diffusion.text import TagEncoder
from napari_unet.diffusion.unet import DiffusionUNet
from napari_unet.errors import UserError
from napari_unet.files.io import check_model_meta, load_model_folder, save_model_folder, stamp_model_meta

MODEL_KIND = "napari-unet/diffusion"
FORMAT_VERSION = 1


@dataclass
class DiffusionBundle:
    """Everything needed to sample: denoiser, tag encoder, configuration, metadata.

    ``shapes`` (N, S, S) uint8 holds annotated object shapes for automatic mask prompts
    (``prompts.unpack_shapes``); ``meta["density"]`` their median objects per 10,000 px.
    """

    net: torch.nn.Module
    encoder: TagEncoder
    config: DiffusionConfig
    meta: dict[str, Any] = field(default_factory=dict)
    shapes: np.ndarray | None = None

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.config.schedule, self.config.train_timesteps, self.config.prediction)

    def to(self, device: torch.device | str) -> "DiffusionBundle":
        self.net.to(device)
        self.encoder.to(device)
        return self


def build_models(cfg: DiffusionConfig) -> tuple[torch.nn.Module, TagEncoder]:
    """A fresh denoiser and tag encoder for ``cfg``."""
    return DiffusionUNet(cfg.model), TagEncoder(cfg.tags, cfg.model.context_dim, cfg.max_tags)


def save_diffusion(bundle: DiffusionBundle, folder: str | os.PathLike) -> Path:
    """Write the diffusion model folder atomically."""
    meta = stamp_model_meta(bundle.meta, MODEL_KIND, FORMAT_VERSION, bundle.config)
    state = {f"net.{k}": v for k, v in bundle.net.state_dict().items()}
    state.update({f"encoder.{k}": v for k, v in bundle.encoder.state_dict().items()})
    if bundle.shapes is not None:
        state["prompt_shapes"] = torch.from_numpy(np.ascontiguousarray(bundle.shapes, dtype=np.uint8))
    state = {k: (v.float() if v.is_floating_point() else v).detach().cpu() for k, v in state.items()}
    return save_model_folder(folder, state, meta)


def load_diffusion(folder: str | os.PathLike, device: str | torch.device = "cpu") -> DiffusionBundle:
    """Rebuild a diffusion model from its folder; clear errors for other kinds of folders."""
    tensors, meta = load_model_folder(folder)
    check_model_meta(meta, folder, MODEL_KIND, FORMAT_VERSION, "diffusion")
    cfg = diffusion_config_from_dict(meta.get("config", {}))
    net, encoder = build_models(cfg)
    try:
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        encoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
    except RuntimeError as exc:
        raise UserError(f"the weights in {folder} do not fit its configuration: {str(exc).splitlines()[0]}") from None
    net.eval()
    encoder.eval()
    shapes = tensors["prompt_shapes"].numpy() if "prompt_shapes" in tensors else None
    return DiffusionBundle(net, encoder, cfg, meta, shapes).to(device)
