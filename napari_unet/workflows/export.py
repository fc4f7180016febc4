"""Exporting a trained network to TorchScript or ONNX so it runs without napari-unet.

The exported graph maps a normalised image (B, C, *S) to softmax probabilities (B, K, *S_out).
A ``<file>.json`` beside it records what a caller needs: normalisation percentiles, class names,
the size multiple and, for ``valid`` networks, the margin each side loses.

``same`` networks accept any spatial size that is a multiple of ``2**depth`` (pad with mirrored
pixels, then crop); ``valid`` networks are exported for one input size (``tile``), because
their crop offsets are fixed at export time.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Generator, Literal

import numpy as np
import torch
from torch import nn

from napari_unet.errors import UserError
from napari_unet.events import Finished, Message, Progress
from napari_unet.models.bundle import ModelBundle

ExportFormat = Literal["torchscript", "onnx"]
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}


class Probabilities(nn.Module):
    """The U-Net followed by its output maps in float32: a softmax over classes, or the maps of
    the model's instance head (``heads.Head.maps``, e.g. then a star head's object probability
    and ray lengths in pixels)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, K, *S_out)."""
        activation = getattr(self.net, "activation", None)
        logits = self.net(x).float()
        return activation(logits) if activation is not None else torch.softmax(logits, dim=1)


def example_input(bundle: ModelBundle, tile: int | None = None) -> torch.Tensor:
    """A (1, C, *S) example: ``tile`` rounded to the network's sizes (64 for same networks)."""
    net, mcfg = bundle.net, bundle.config.model
    multiple = 2**mcfg.depth
    if mcfg.padding == "valid":
        size = net.valid_input_size(tile or 128)
    else:
        size = -(-(tile or 64) // multiple) * multiple
    return torch.zeros((1, mcfg.in_channels, *([size] * mcfg.dims)), dtype=torch.float32)


def export_metadata(bundle: ModelBundle, fmt: str, example: torch.Tensor) -> dict:
    """What a caller needs to use the exported file correctly."""
    mcfg = bundle.config.model
    size = int(example.shape[-1])
    valid = mcfg.padding == "valid"
    return {
        "format": fmt, "task": bundle.task, "classes": bundle.class_names, "outputs": bundle.output_names, "dims": mcfg.dims,
        "in_channels": mcfg.in_channels, "percentiles": list(bundle.config.percentiles),
        "normalisation": "per channel: (x - p_low) / (p_high - p_low), percentiles of the whole image"
                         + ("; then 1 - x for the whole image when the median of the channel mean lies nearer its"
                            " p_high than its p_low (a bright background)" if bundle.config.polarity == "auto" else ""),
        "polarity": bundle.config.polarity,
        "input": "float32 (B, C, *S)", "output": "float32 softmax probabilities (B, K, *S_out)",
        "size_multiple": 2**mcfg.depth,
        "input_size": size if valid else None,
        "output_margin": bundle.net.output_crop(size) if valid else 0,
    }


def export_model(bundle: ModelBundle, out: str | os.PathLike, fmt: ExportFormat = "torchscript",
                 tile: int | None = None) -> Generator[object, None, Path]:
    """Write the network as ``out`` (TorchScript ``.pt`` or ``.onnx``) plus ``out.json``;
    checks the file reproduces the network's output before returning its path."""
    if fmt not in SUFFIXES:
        raise UserError(f"unknown export format {fmt!r}; use torchscript or onnx")
    out = Path(out)
    start = time.perf_counter()
    wrapper = Probabilities(bundle.net.float().cpu().eval()).eval()
    example = example_input(bundle, tile)
    dynamic = bundle.config.model.padding == "same"
    yield Message(f"exporting {fmt} ({'any multiple of ' + str(2 ** bundle.config.model.depth) if dynamic else 'input ' + str(example.shape[-1])} px)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks frozen at export, documented
            if fmt == "torchscript":
                with torch.no_grad():
                    traced = torch.jit.trace(wrapper, example, check_trace=False)
                traced.save(str(tmp))
            else:
                _export_onnx(wrapper, example, tmp, dynamic)
    except ImportError as exc:
        raise UserError(f"ONNX export needs the optional packages: pip install 'napari-unet[onnx]' ({exc.name})") from None
    yield Progress(1, 2, time.perf_counter() - start, "exported")
    os.replace(tmp, out)
    meta = export_metadata(bundle, fmt, example)
    out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=2))
    check = example + torch.rand(example.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = wrapper(check).numpy()
    error = float(np.abs(run_exported(out, check.numpy()) - expected).max())
    if error > 1e-3:
        raise UserError(f"the exported {fmt} model differs from the original by {error:.2e}")
    yield Progress(2, 2, time.perf_counter() - start, "checked")
    yield Finished({"format": fmt, "max_abs_difference": error})
    return out


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    """TorchScript-based ONNX export (opset 17); spatial axes dynamic for same networks."""
    import onnx  # noqa: F401  (fail early with a clear message when missing)

    names = ["height", "width"] if example.ndim == 4 else ["depth", "height", "width"]
    axes = {0: "batch", **({i + 2: n for i, n in enumerate(names)} if dynamic else {})}
    with torch.no_grad():
        torch.onnx.export(wrapper, (example,), str(path), input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": axes, "probabilities": axes}, opset_version=17, dynamo=False)


def run_exported(path: str | os.PathLike, batch: np.ndarray) -> np.ndarray:
    """Run an exported file on a (B, C, *S) float32 batch, the way an outside user would."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": batch.astype(np.float32)})[0]
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(batch.astype(np.float32))).numpy()
