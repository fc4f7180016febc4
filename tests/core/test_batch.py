"""Batch prediction: formats, probabilities, uncertainty, recursion, summary CSV, dask cluster."""

import csv

import numpy as np
import pytest
import torch

from napari_unet.batch import BatchConfig, collect_inputs, predict_batch
from napari_unet.cli import main
from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.io import read_image, read_mask, write_image
from napari_unet.omezarr import open_ome_zarr
from napari_unet.training.checkpoint import ModelBundle, build_network, save_bundle

from helpers import drain

torch.set_num_threads(2)


@pytest.fixture()
def setup(tmp_path, small_pairs):
    torch.manual_seed(0)
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4))
    save_bundle(ModelBundle(build_network(cfg).eval(), cfg), tmp_path / "model")
    images = tmp_path / "images"
    for i, (image, _) in enumerate(small_pairs[:3]):
        write_image(images / ("sub" if i == 2 else "") / f"n{i}.png", image[:64, :96])
    return tmp_path / "model", images


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_cli_predict_ome_zarr_probabilities_uncertainty_recursive(setup, tmp_path):
    model, images = setup
    out = tmp_path / "out"
    assert main(["predict", str(model), str(images), "--out", str(out), "--recursive", "--format", "ome-zarr",
                 "--probabilities", "--uncertainty", "--mc-samples", "2", "--workers", "2", "--quiet"]) == 0
    labels = np.asarray(open_ome_zarr(out / "sub" / "n2.ome.zarr"))
    assert labels.shape == (64, 96) and labels.dtype in (np.uint16, np.uint32)
    probs = np.asarray(open_ome_zarr(out / "n0_probabilities.ome.zarr"))
    assert probs.shape == (3, 64, 96) and np.allclose(probs.sum(0), 1, atol=1e-4)
    unc = np.asarray(open_ome_zarr(out / "n1_uncertainty.ome.zarr"))
    assert unc.shape == (3, 64, 96) and (unc >= 0).all() and np.allclose(unc[0], unc[1] + unc[2], atol=1e-4)
    rows = _rows(out / "summary.csv")
    assert [r["file"].endswith(n) for r, n in zip(rows, ["n0.png", "n1.png", "sub/n2.png"])] == [True] * 3
    row = next(r for r in rows if r["file"].endswith("n1.png"))
    assert int(row["objects"]) == len(np.unique(np.asarray(open_ome_zarr(out / "n1.ome.zarr")))) - 1
    assert float(row["mean_uncertainty"]) == pytest.approx(float(unc[0].mean()), abs=1e-4)


@pytest.mark.parametrize("fmt", ["tif", "png"])
def test_cli_predict_flat_formats(setup, tmp_path, fmt):
    model, images = setup
    out = tmp_path / fmt
    assert main(["predict", str(model), str(images / "n0.png"), "--out", str(out), "--format", fmt, "--quiet"]) == 0
    assert read_mask(out / f"n0.{fmt}").shape == (64, 96) and (out / "summary.csv").is_file()


def test_streamed_large_input_through_batch(setup, tmp_path):
    model, images = setup
    big = tmp_path / "big.tif"
    grey = read_image(images / "n0.png")
    grey = grey[..., 0] if grey.ndim == 3 else grey
    write_image(big, np.tile(grey, (3, 2)))  # 192 x 192
    inputs = collect_inputs([big])
    gen = predict_batch(model, inputs, tmp_path / "o", PredictConfig(), BatchConfig(large_pixels=1000))
    rows = list_drain(gen)
    assert rows[0]["output"].endswith("big.ome.zarr")
    assert np.asarray(open_ome_zarr(tmp_path / "o" / "big.ome.zarr")).shape == (192, 192)


def test_dask_local_cluster(setup, tmp_path):
    distributed = pytest.importorskip("distributed")
    model, images = setup
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / "dask"
        assert main(["predict", str(model), str(images), "--out", str(out), "--scheduler", cluster.scheduler_address,
                     "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.tif")) == ["n0.tif", "n1.tif"] and len(_rows(out / "summary.csv")) == 2


def test_bad_scheduler_and_duplicate_outputs(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("napari_unet.batch.SCHEDULER_TIMEOUT", "1s")
    model, images = setup
    assert main(["predict", str(model), str(images), "--out", str(tmp_path / "x"), "--scheduler",
                 "tcp://127.0.0.1:9", "--quiet"]) == 2
    assert "cannot reach the dask scheduler" in capsys.readouterr().err
    write_image(images / "n0.tif", np.zeros((8, 8), np.uint8))
    assert main(["predict", str(model), str(images), "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "same output" in capsys.readouterr().err


list_drain = drain
