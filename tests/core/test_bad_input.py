"""Bad input gets one clear line, everywhere: a table of cases through the CLI and the core API.

CLI cases assert exit code 2, exactly one line on stderr and no traceback; an input file of a
``predict`` batch that cannot be read or predicted is one line of its own and exit code 1 (the
other files are still predicted, tests/workflows/test_batch.py); inputs that are merely unusual (NaN
pixels, constant images, other dtypes, colour, tiny or odd sizes) must work.
docs/usage.md ("What happens with bad input") lists the same table.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.data.dataset import prepare_pairs
from napari_unet.errors import UserError
from napari_unet.files.io import read_image, read_mask
from napari_unet.inference.predict import predict_image
from napari_unet.models.bundle import ModelBundle, build_network, load_bundle, save_bundle
from napari_unet.workflows.model_spec import batch_source, resolve_model

RNG = np.random.default_rng(0)
MASK = np.zeros((40, 40), np.uint16)
MASK[4:14, 5:17], MASK[20:34, 18:30] = 1, 2
IMAGE = ((MASK > 0) * 0.6 + RNG.random(MASK.shape) * 0.4).astype(np.float32)
TINY = ["--steps", "1", "--init", "none", "--depth", "2", "--base-width", "4", "--patch-size", "32",
        "--batch-size", "2", "--checkpoint-every", "0", "--quiet"]


def _nan(image: np.ndarray, fraction: float) -> np.ndarray:
    out = image.copy()
    out[RNG.random(image.shape) < fraction] = np.nan
    return out


# inputs that are unusual but fine: each must be accepted for training and prediction
ACCEPTED = {
    "nan-pixels": _nan(IMAGE, 0.05),
    "inf-pixels": np.where(RNG.random(IMAGE.shape) < 0.05, np.inf, IMAGE).astype(np.float32),
    "constant": np.full(MASK.shape, 7, np.uint16),
    "uint16": (IMAGE * 4000).astype(np.uint16),
    "float64": IMAGE.astype(np.float64),
    "bool": IMAGE > 0.5,
    "rgb": np.stack([IMAGE] * 3, -1),
    "rgba": np.concatenate([np.stack([IMAGE] * 3, -1), np.ones((*IMAGE.shape, 1), np.float32)], -1),
    "channels-first": np.stack([IMAGE] * 2, 0),
}
SIZES = {"tiny-5x7": (5, 7), "one-pixel": (1, 1), "odd-37x23": (37, 23)}  # smaller than 2**depth, odd


def _write_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    tifffile.imwrite(root / "images" / f"{name}.tif", image)
    tifffile.imwrite(root / "masks" / f"{name}.tif", mask)


@pytest.fixture()
def dataset(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _write_pair(tmp_path, "good", IMAGE, MASK)
    return tmp_path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4))
    return save_bundle(ModelBundle(build_network(cfg).eval(), cfg, {}), tmp_path_factory.mktemp("m") / "model")


def _one_line_exit_2(capsys, argv: list[str], expected: str) -> None:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err


def _one_file_fails(capsys, argv: list[str], expected: str) -> None:
    """A batch of one bad file: exit 1, its one-line reason, the count, no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert len(err) == 2 and "Traceback" not in "\n".join(err), err
    assert err[0].startswith("failed: ") and expected in err[0], err
    assert err[1].startswith("napari-unet: 1 of 1 files failed"), err


def test_unusual_inputs_train_and_predict(dataset, model, tmp_path, capsys):
    for name, image in ACCEPTED.items():
        _write_pair(dataset, name, image, MASK)
    for name, (h, w) in SIZES.items():
        _write_pair(dataset, name, IMAGE[:h, :w], MASK[:h, :w])
    assert main(["train", str(dataset / "images"), str(dataset / "masks"), "--out", str(tmp_path / "m"), *TINY]) == 0
    out = capsys.readouterr()
    assert "NaN/Inf pixels" in out.out and "Traceback" not in out.err
    assert load_bundle(tmp_path / "m").meta["training"]["steps"] == 1
    assert main(["predict", str(model), str(dataset / "images"), "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    for path in sorted((dataset / "images").glob("*.tif")):
        shape = tifffile.imread(path).shape
        labels = read_mask(tmp_path / "pred" / path.name)
        assert labels.shape == (shape[1:] if path.stem == "channels-first" else shape[:2])


def _corrupt_png(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)


def _truncated_tif(path: Path) -> None:
    tifffile.imwrite(path, RNG.random((64, 64)).astype(np.float32))
    path.write_bytes(path.read_bytes()[:1500])


# (case, image, mask, extra CLI options, expected message); None = keep the good pair
TRAIN_CASES = [
    ("shape-mismatch", IMAGE, MASK[:20], [], "does not match image shape"),
    ("no-objects", IMAGE, np.zeros_like(MASK), [], "masks hold no objects"),
    ("unannotated-scribbles", IMAGE, np.zeros_like(MASK), ["--task", "semantic", "--sparse", "--n-classes", "2"],
     "nothing is annotated"),
    ("single-class", IMAGE, np.ones_like(MASK), ["--task", "semantic", "--n-classes", "2"], "single class"),
    ("all-nan", np.full(MASK.shape, np.nan, np.float32), MASK, [], "no finite pixel values"),
    ("3d-into-2d", np.stack([IMAGE] * 6), np.stack([MASK] * 6), [], "3D stack or has more than 4 channels"),
    ("7-channels", np.stack([IMAGE] * 7, -1), MASK, [], "3D stack or has more than 4 channels"),
    ("fractional-mask", IMAGE, MASK * 0.5, [], "must hold whole numbers"),
    ("negative-instances", IMAGE, MASK.astype(np.int16) - 1, [], "must be >= 0"),
]


@pytest.mark.parametrize("case, image, mask, options, expected", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_data(dataset, tmp_path, capsys, case, image, mask, options, expected):
    _write_pair(dataset, "good", image, mask)
    _one_line_exit_2(capsys, ["train", dataset / "images", dataset / "masks", "--out", tmp_path / "m", *TINY,
                              *options], expected)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("damage, expected", [(_corrupt_png, "cannot read bad.png"),
                                              (_truncated_tif, "cannot read bad.tif")], ids=["corrupt-png", "truncated-tif"])
def test_train_corrupt_files(dataset, tmp_path, capsys, damage, expected):
    damage(dataset / "images" / f"bad{expected[-4:]}")
    tifffile.imwrite(dataset / "masks" / "bad.tif", MASK)
    _one_line_exit_2(capsys, ["train", dataset / "images", dataset / "masks", "--out", tmp_path / "m", *TINY], expected)


def _model_variant(model: Path, tmp_path: Path, change: str) -> Path:
    folder = tmp_path / f"model-{change}"
    folder.mkdir()
    for f in model.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    meta = json.loads((folder / "model.json").read_text())
    if change == "diffusion":
        meta["kind"] = "napari-unet/diffusion"
    elif change == "newer":
        meta["format_version"] = 99
    elif change == "truncated":
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("change, expected", [
    ("diffusion", "not a segmentation model"), ("newer", "newer format"), ("truncated", "corrupt or truncated"),
    ("empty-folder", "not a napari-unet model folder"), ("a-file", "is a file"),
])
def test_wrong_model_folder(model, tmp_path, capsys, change, expected):
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, IMAGE)
    if change == "empty-folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif change == "a-file":
        folder = image
    else:
        folder = _model_variant(model, tmp_path, change)
    _one_line_exit_2(capsys, ["predict", folder, image, "--out", tmp_path / "o", "--quiet"], expected)
    if change == "diffusion":  # the same model as a starting point for training
        _one_line_exit_2(capsys, ["train", tmp_path, tmp_path, "--out", tmp_path / "m", "--init", folder,
                                  "--steps", "1", "--quiet"], expected)


@pytest.mark.parametrize("spec, expected", [
    ("none", "a model is required"), ("pretrained:em", "unknown starting model 'pretrained:em'"),
    ("missing", "no such model folder"), ("empty", "not a napari-unet model folder"),
])
def test_bad_model_spec_is_the_same_line_everywhere(dataset, tmp_path, capsys, spec, expected):
    """``workflows.model_spec`` is the one rule: the widgets' call and each CLI command that takes
    a model say the same line (train's ``--init none`` is a run from scratch, not an error)."""
    (tmp_path / "empty").mkdir()
    spec = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty")}.get(spec, spec)
    with pytest.raises(UserError, match=expected) as err:
        resolve_model(spec)  # the Predict widget's worker; Batch export goes through batch_source
    line = f"napari-unet: error: {err.value}"
    commands = [["predict", spec, dataset / "images", "--out", tmp_path / "o", "--quiet"],
                ["export-model", spec, "--out", tmp_path / "m.pt", "--quiet"]]
    if spec != "none":
        commands.append(["train", dataset / "images", dataset / "masks", "--out", tmp_path / "m", "--init", spec,
                         "--steps", "1", "--quiet"])
    for argv in commands:
        _one_line_exit_2(capsys, argv, expected)
        assert main([str(a) for a in argv]) == 2 and capsys.readouterr().err.strip() == line, argv[0]
    if spec != str(tmp_path / "empty"):  # a folder is only opened by the batch's workers
        with pytest.raises(UserError, match=expected):
            batch_source(spec)


PREDICT_CASES = [
    ("all-nan", np.full((16, 16), np.nan, np.float32), "no finite pixel values"),
    ("zero-size", np.zeros((0, 12), np.float32), "the image is empty"),
    ("5d", np.zeros((2, 2, 3, 16, 16), np.float32), "expected a 2D image"),
]


@pytest.mark.parametrize("case, image, expected", PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_predict_bad_images(model, tmp_path, capsys, case, image, expected):
    np.save(tmp_path / "x.npy", image)  # tifffile refuses some of these shapes, so go through the API too
    with pytest.raises(UserError, match=expected):
        predict_image(load_bundle(model), image)
    if image.size:
        tifffile.imwrite(tmp_path / "x.tif", image)
        _one_file_fails(capsys, ["predict", model, tmp_path / "x.tif", "--out", tmp_path / "o", "--quiet"], expected)


@pytest.mark.parametrize("damage, name", [(_corrupt_png, "bad.png"), (_truncated_tif, "bad.tif"),
                                          (lambda p: p.write_bytes(b""), "empty.tif")])
def test_predict_corrupt_files(model, tmp_path, capsys, damage, name):
    damage(tmp_path / name)
    _one_file_fails(capsys, ["predict", model, tmp_path / name, "--out", tmp_path / "o", "--quiet"],
                    f"cannot read {name}")
    with pytest.raises(UserError, match=f"cannot read {name}"):
        read_image(tmp_path / name)


def _deny(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fault, expected", [("read-only", "read-only"), ("disk-full", "disk is full"),
                                             ("out-is-a-file", "exists and is not a folder")])
def test_output_folder_faults(model, dataset, tmp_path, capsys, monkeypatch, fault, expected):
    out = tmp_path / "out"
    if fault == "out-is-a-file":
        out.write_bytes(b"x")
    elif fault == "read-only" and os.geteuid() != 0:
        out.mkdir()
        out.chmod(0o500)
    elif fault == "read-only":  # root ignores permissions: fail where a read-only folder fails first
        monkeypatch.setattr("tempfile.mkstemp", _deny)
        monkeypatch.setattr("tempfile.mkdtemp", _deny)
    else:  # the disk fills while the data is flushed
        monkeypatch.setattr("napari_unet.files.io.os.fsync", _disk_full)
    _one_line_exit_2(capsys, ["predict", model, dataset / "images", "--out", out, "--quiet"], expected)
    _one_line_exit_2(capsys, ["train", dataset / "images", dataset / "masks", "--out", out, *TINY], expected)
    if out.is_dir():
        assert list(out.iterdir()) == []  # no temporary or half-written file left behind


def test_host_memory_error_is_a_message(dataset, model, tmp_path, capsys, monkeypatch):
    def no_ram(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("napari_unet.training.engine.Trainer._step", no_ram)
    _one_line_exit_2(capsys, ["train", dataset / "images", dataset / "masks", "--out", tmp_path / "m", *TINY],
                     "out of memory (RAM)")
    monkeypatch.setattr("napari_unet.inference.predict.predict_tiled", no_ram)
    _one_file_fails(capsys, ["predict", model, dataset / "images", "--out", tmp_path / "o", "--quiet"],
                    "out of memory (RAM)")


CORE_CASES = [
    ("shape-mismatch", [(IMAGE, MASK[:, :20])], TrainConfig(), "does not match"),
    ("no-pairs", [], TrainConfig(), "no training pairs"),
    ("no-objects", [(IMAGE, np.zeros_like(MASK))], TrainConfig(), "no objects"),
    ("unannotated", [(IMAGE, np.zeros_like(MASK))], TrainConfig(task="semantic", sparse=True), "nothing is annotated"),
    ("single-class", [(IMAGE, np.ones_like(MASK))], TrainConfig(task="semantic"), "single class"),
    ("all-inf", [(np.full(MASK.shape, np.inf), MASK)], TrainConfig(), "no finite pixel"),
    ("3d-into-2d", [(np.stack([IMAGE] * 6), np.stack([MASK] * 6))], TrainConfig(), "3D stack"),
    ("strings", [(np.full(MASK.shape, "a"), MASK)], TrainConfig(), "cannot use pixels of type"),
]


@pytest.mark.parametrize("case, pairs, cfg, expected", CORE_CASES, ids=[c[0] for c in CORE_CASES])
def test_core_api_raises_user_errors(case, pairs, cfg, expected):
    with pytest.raises(UserError, match=expected) as info:
        prepare_pairs(pairs, cfg)
    assert "\n" not in str(info.value)


def test_core_api_accepts_unusual_images(model):
    bundle = load_bundle(model)
    for name, image in {**ACCEPTED, **{k: IMAGE[:h, :w] for k, (h, w) in SIZES.items()}}.items():
        labels = predict_image(bundle, image, PredictConfig()).labels
        assert labels.shape == (image.shape[1:] if name == "channels-first" else image.shape[:2]), name
        h, w = labels.shape
        prepared = prepare_pairs([(image, MASK[:h, :w]), (IMAGE, MASK)], TrainConfig())[0]
        assert prepared.image.dtype == np.float32 and np.isfinite(prepared.image).all(), name
