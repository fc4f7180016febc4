import subprocess
import sys

import numpy as np
import pytest

from napari_unet.cli import main
from napari_unet.files.io import read_mask, write_image


@pytest.fixture()
def folders(tmp_path, small_pairs):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i, (image, mask) in enumerate(small_pairs):
        write_image(images / f"n{i}.png", image)
        write_image(masks / f"n{i}.tif", mask)
    return images, masks


def test_train_predict_evaluate_end_to_end(folders, tmp_path, capsys):
    images, masks = folders
    model = tmp_path / "model"
    assert main(["train", str(images), str(masks), "--out", str(model), "--steps", "40", "--depth", "2",
                 "--base-width", "8", "--patch-size", "64", "--quiet"]) == 0
    assert (model / "model.safetensors").is_file() and (model / "model.json").is_file()
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(images), "--out", str(out), "--quiet"]) == 0
    written = sorted(out.glob("*.tif"))
    assert [p.stem for p in written] == ["n0", "n1", "n2", "n3"]
    labels = read_mask(written[0])
    assert labels.dtype in (np.uint16, np.uint32) and labels.shape == (128, 128) and labels.max() > 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(masks)]) == 0
    report = capsys.readouterr().out
    ap = float(next(line.split()[1] for line in report.splitlines() if line.startswith("ap50")))
    assert 0.0 < ap <= 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "{missing}", "{missing}", "--out", "{tmp}/m"], "no such file"),
        (["predict", "{tmp}", "{tmp}", "--out", "{tmp}/o"], "not a napari-unet model folder"),
        (["predict", "{missing}", "x.png", "--out", "{tmp}/o"], "no such model folder"),
        (["evaluate", "{tmp}", "{tmp}"], "no images"),
    ],
)
def test_bad_input_one_line_exit_2(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, missing=tmp_path / "missing") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_module_entry_point_runs_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "napari_unet", "predict", str(tmp_path), "x", "--out", "o"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_train_mixes_synthetic_pairs(folders, tmp_path, capsys):
    images, masks = folders
    synth = tmp_path / "synth"
    for name in ("n0", "n1"):  # stands in for a `synth generate` output folder
        write_image(synth / "images" / f"{name}.tif", read_mask(masks / f"{name}.tif").astype(np.uint8) * 80)
        write_image(synth / "masks" / f"{name}.tif", read_mask(masks / f"{name}.tif"))
    assert main(["train", str(images), str(masks), "--out", str(tmp_path / "m"), "--steps", "3", "--init", "none",
                 "--depth", "2", "--base-width", "8", "--patch-size", "64", "--synthetic", str(synth),
                 "--synthetic-ratio", "0.25", "--quiet"]) == 0
    out = capsys.readouterr()
    assert "2 synthetic pair(s) supply 25% of the patches" in out.out + out.err
    assert main(["train", str(images), str(masks), "--out", str(tmp_path / "m2"), "--synthetic", str(synth),
                 "--synthetic-ratio", "1.5", "--quiet"]) == 2
