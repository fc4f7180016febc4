"""Streaming prediction's extra outputs: resolution pyramids and MC-dropout uncertainty that
equals the whole-image uncertainty although the image is predicted in many tiles."""

import csv

import numpy as np
import pytest
import torch
import zarr

from napari_unet.cli import main
from napari_unet.config import PredictConfig
from napari_unet.files.omezarr import open_ome_zarr, open_pyramid
from napari_unet.inference.large import predict_large
from napari_unet.inference.predict import predict_image
from napari_unet.models.bundle import ModelBundle, save_bundle

from helpers import drain, tiny_bundle

torch.set_num_threads(1)


def _bundle(dropout: float = 0.3) -> ModelBundle:
    return tiny_bundle(dropout=dropout)


_drain = drain


@pytest.fixture(scope="module")
def image(nuclei_pairs):
    return nuclei_pairs[2][0][:200, :250]


def test_streamed_outputs_carry_pyramids(tmp_path, image):
    out = tmp_path / "big.ome.zarr"
    result = _drain(predict_large(_bundle(), image, out, PredictConfig(), probabilities=True, chunk=64, tile=64,
                                  halo=16, min_level_size=64))
    labels = open_pyramid(out)
    assert [a.shape for a in labels] == [(200, 250), (100, 125), (50, 63)]
    assert np.array_equal(labels[1][:], labels[0][::2, ::2]) and np.array_equal(labels[2][:], labels[0][::4, ::4])
    assert labels[0][:].max() == result.objects > 0
    meta = zarr.open_group(str(out), mode="r").attrs["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in meta["datasets"]] == [[1, 1], [2, 2], [4, 4]]
    probs = open_pyramid(result.probabilities)
    assert [a.shape for a in probs] == [(3, 200, 250), (3, 100, 125), (3, 50, 63)]
    assert np.allclose(probs[1][:].astype(np.float32).sum(0), 1, atol=5e-3)  # means of distributions
    assert np.asarray(open_ome_zarr(out)).shape == (200, 250)  # level 0 for readers that want one array


def test_streamed_uncertainty_equals_whole_image_uncertainty(tmp_path, image):
    bundle = _bundle()
    cfg = PredictConfig(mc_samples=4)
    result = _drain(predict_large(bundle, image, tmp_path / "u.ome.zarr", cfg, probabilities=True, chunk=64,
                                  tile=64, halo=16, min_level_size=64))  # 4 x 4 tiles of 64 px
    maps = np.asarray(open_ome_zarr(result.uncertainty), np.float32)  # (total, aleatoric, epistemic)
    whole = predict_image(bundle, image, PredictConfig(mc_samples=4, tile_size=2048))  # one tile per pass
    expected = np.stack([whole.uncertainty[k] for k in ("total", "aleatoric", "epistemic")])
    assert maps.shape == (3, 200, 250) and np.isfinite(maps).all() and (maps >= 0).all()
    assert expected[2].max() > 0.05  # the dropout passes really disagree somewhere
    assert np.abs(maps - expected).max() < 3e-3  # float16 storage; tiles draw the same masks as the whole image
    probs = np.asarray(open_ome_zarr(result.probabilities), np.float32)
    assert np.abs(probs - whole.probabilities).max() < 3e-3  # labels come from the MC-dropout mean
    assert len(open_pyramid(result.uncertainty)) == 3
    assert not bundle.net.training  # MC-dropout mode switched off again


def test_cli_streams_zarr_input_with_uncertainty(tmp_path, image):
    save_bundle(_bundle(), tmp_path / "model")
    grey = image.mean(-1).astype(np.uint8) if image.ndim == 3 else image
    source = zarr.open_array(str(tmp_path / "scan.zarr"), mode="w", shape=grey.shape, chunks=(64, 64),
                             dtype=np.uint8, zarr_format=2)
    source[:] = grey  # Zarr inputs always take the streaming path
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "scan.zarr"), "--out", str(out), "--uncertainty",
                 "--mc-samples", "2", "--quiet"]) == 0
    maps = np.asarray(open_ome_zarr(out / "scan_uncertainty.ome.zarr"), np.float32)
    labels = np.asarray(open_ome_zarr(out / "scan.ome.zarr"))
    assert maps.shape == (3, *grey.shape) and labels.shape == grey.shape and (maps >= 0).all()
    with open(out / "summary.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["mean_uncertainty"]) == pytest.approx(float(maps[0].mean()), abs=1e-3)
    fg = labels > 0
    assert float(row["foreground_fraction"]) == pytest.approx(fg.mean(), abs=1e-5)
    assert float(row["mean_object_uncertainty"]) == pytest.approx(float(maps[0][fg].mean()), abs=1e-3)
