"""Exported TorchScript / ONNX files reproduce the network outside napari-unet."""

import json

import numpy as np
import pytest
import torch

from napari_unet.cli import main
from napari_unet.models.bundle import ModelBundle, save_bundle
from napari_unet.workflows.export import export_model, run_exported

from helpers import drain, tiny_bundle

torch.set_num_threads(2)


def _bundle(padding: str = "same") -> ModelBundle:
    return tiny_bundle(padding=padding)


_drain = drain


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_same_network_any_multiple_size(fmt, tmp_path):
    bundle = _bundle()
    path = _drain(export_model(bundle, tmp_path / f"m.{fmt}", fmt))
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["classes"] == bundle.class_names and meta["size_multiple"] == 4
    for shape in [(1, 1, 32, 48), (2, 1, 64, 20)]:  # sizes other than the export example
        x = np.random.default_rng(1).random(shape).astype(np.float32)
        with torch.no_grad():
            ref = torch.softmax(bundle.net(torch.from_numpy(x)), 1).numpy()
        assert np.abs(run_exported(path, x) - ref).max() < 1e-4


def test_export_valid_network_fixed_size(tmp_path):
    bundle = _bundle("valid")
    path = _drain(export_model(bundle, tmp_path / "v.pt", "torchscript", tile=60))
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    x = np.random.default_rng(2).random((1, 1, meta["input_size"], meta["input_size"])).astype(np.float32)
    out = run_exported(path, x)
    assert out.shape[-1] == meta["input_size"] - 2 * meta["output_margin"]


def test_cli_export_model(tmp_path, capsys):
    save_bundle(_bundle(), tmp_path / "model")
    assert main(["export-model", str(tmp_path / "model"), "--format", "onnx", "--quiet"]) == 0
    assert (tmp_path / "model" / "model.onnx").is_file()
    assert main(["export-model", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert "no such model folder" in capsys.readouterr().err
