"""Model files never execute code, load or fail with one clear message, and are saved atomically."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.errors import UserError
from napari_unet.files.io import load_model_folder
from napari_unet.models.bundle import FORMAT_VERSION, ModelBundle, build_network, load_bundle, save_bundle


class WritesAFile:
    """Unpickling this object would run ``exec`` and create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.fixture(scope="module")
def tiny_bundle() -> ModelBundle:
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4))
    torch.manual_seed(0)
    return ModelBundle(build_network(cfg).eval(), cfg, {"note": "tiny"})


@pytest.fixture()
def saved(tmp_path, tiny_bundle):
    return save_bundle(tiny_bundle, tmp_path / "model")


def test_roundtrip_gives_identical_outputs(saved, tiny_bundle):
    loaded = load_bundle(saved)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.net(x), tiny_bundle.net(x))
    assert loaded.meta["note"] == "tiny" and loaded.meta["format_version"] == FORMAT_VERSION
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]  # no staging or .old folder left


def _legacy_folder(saved, state) -> None:
    (saved / "model.safetensors").unlink()
    torch.save(state, saved / "model.pt")


def test_legacy_pt_state_dict_loads_with_weights_only(saved, tiny_bundle):
    _legacy_folder(saved, {"state_dict": tiny_bundle.net.state_dict()})
    loaded = load_bundle(saved)
    for key, value in tiny_bundle.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_and_nothing_runs(saved, tmp_path, writer):
    marker = tmp_path / "marker.txt"
    payload = {"encoders.0.weight": WritesAFile(str(marker))}
    (saved / "model.safetensors").unlink()
    if writer == "torch.save":
        torch.save(payload, saved / "model.pt")
    else:
        (saved / "model.pt").write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="refusing to load model.pt") as info:
        load_bundle(saved)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # the payload is real: an unrestricted unpickler would have written the marker
    if writer == "torch.save":
        torch.load(saved / "model.pt", weights_only=False)
    else:
        pickle.loads((saved / "model.pt").read_bytes())
    assert marker.read_text() == "pwned"


def _edit_meta(folder, **changes) -> None:
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: _edit_meta(f, format_version=FORMAT_VERSION + 1), "newer format; upgrade napari-unet"),
        (lambda f: _edit_meta(f, kind="napari-unet/diffusion"), "'napari-unet/diffusion' model, not a segmentation"),
        (lambda f: _edit_meta(f, config=None), "has no training configuration"),
        (lambda f: _edit_meta(f, config={"model": {"depth": "four"}}), "invalid configuration"),
        (lambda f: _edit_meta(f, config={"model": {"depth": 2, "base_width": 8}}), "do not fit its configuration: size mismatch"),
        (lambda f: (f / "model.json").write_text((f / "model.json").read_text()[:40]), "cannot read .*model.json: JSONDecodeError"),
        (lambda f: (f / "model.json").write_text("[1, 2]"), "expected a JSON object"),
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:200]), "corrupt or truncated"),
        (lambda f: (f / "model.safetensors").write_bytes(b""), "corrupt or truncated"),
        (lambda f: (f / "model.safetensors").unlink(), "not a napari-unet model folder"),
        (lambda f: shutil.rmtree(f), "no such model folder"),
    ],
    ids=["newer", "kind", "no-config", "bad-config", "shape", "truncated-json", "json-list", "truncated-weights",
         "empty-weights", "no-weights", "missing"],
)
def test_broken_model_folders_give_one_line(saved, damage, message):
    damage(saved)
    with pytest.raises(UserError, match=message) as info:
        load_bundle(saved)
    assert "\n" not in str(info.value)


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"II*\0")
    with pytest.raises(UserError, match="is a file; a model is a folder"):
        load_model_folder(tmp_path / "x.tif")


def test_interrupted_swap_is_recovered(saved, tiny_bundle):
    # a crash between the two renames of a re-save leaves only .model.old
    old = saved.with_name(".model.old")
    saved.rename(old)
    assert load_bundle(saved).meta["note"] == "tiny"
    assert saved.is_dir() and not old.exists()


def test_resave_replaces_and_failed_save_keeps_previous(saved, tiny_bundle, monkeypatch):
    import errno

    import napari_unet.files.io as io

    save_bundle(ModelBundle(tiny_bundle.net, tiny_bundle.config, {"note": "second"}), saved)
    assert load_bundle(saved).meta["note"] == "second"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(UserError, match="disk is full"):
        save_bundle(ModelBundle(tiny_bundle.net, tiny_bundle.config, {"note": "third"}), saved)
    assert load_bundle(saved).meta["note"] == "second"
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]  # staging folder cleaned up
    assert io.WEIGHTS_FILE == "model.safetensors"
