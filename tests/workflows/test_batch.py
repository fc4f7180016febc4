"""Batch prediction: formats, probabilities, uncertainty, recursion, summary CSV, dask cluster."""

import csv

import numpy as np
import pytest
import torch

from napari_unet.cli import main
from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.files.io import read_image, read_mask, write_image
from napari_unet.files.omezarr import open_ome_zarr
from napari_unet.models.bundle import ModelBundle, build_network, save_bundle
from napari_unet.workflows.batch import BatchConfig, collect_inputs, predict_batch

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
    assert rows[0]["output"].endswith("big.ome.zarr") and rows[0]["status"] == "ok"
    assert np.asarray(open_ome_zarr(tmp_path / "o" / "big.ome.zarr")).shape == (192, 192)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".napari-unet-batch", "big.ome.zarr", "summary.csv"]
    again = list_drain(predict_batch(model, inputs, tmp_path / "o", PredictConfig(), BatchConfig(large_pixels=1000)))
    assert again == rows  # complete: skipped, its recorded row reused


def test_dask_local_cluster_a_failing_task_does_not_stop_the_others(setup, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    model, images = setup
    (images / "bad.tif").write_bytes(b"II*\x00" + b"\x07" * 60)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / "dask"
        assert main(["predict", str(model), str(images), "--out", str(out), "--scheduler", cluster.scheduler_address,
                     "--quiet"]) == 1
        assert "1 of 3 files failed" in capsys.readouterr().err
        assert sorted(p.name for p in out.glob("*.tif")) == ["n0.tif", "n1.tif"]
        assert [r["status"] for r in _rows(out / "summary.csv")] == ["failed", "ok", "ok"]
        (images / "bad.tif").unlink()  # the re-run finds both files complete (recorded by the worker)
        assert main(["predict", str(model), str(images), "--out", str(out), "--scheduler", cluster.scheduler_address,
                     "--quiet"]) == 0
    assert "skipping 2 file(s)" in capsys.readouterr().out and len(_rows(out / "summary.csv")) == 2


def test_bad_scheduler_and_duplicate_outputs(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("napari_unet.workflows.batch.SCHEDULER_TIMEOUT", "1s")
    model, images = setup
    assert main(["predict", str(model), str(images), "--out", str(tmp_path / "x"), "--scheduler",
                 "tcp://127.0.0.1:9", "--quiet"]) == 2
    assert "cannot reach the dask scheduler" in capsys.readouterr().err
    write_image(images / "n0.tif", np.zeros((8, 8), np.uint8))
    assert main(["predict", str(model), str(images), "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "same output" in capsys.readouterr().err


list_drain = drain


def _bad_folder(images):
    """Two good images (n0, n1 from ``setup``) next to a corrupt TIFF, an empty TIFF and a corrupt PNG."""
    (images / "sub" / "n2.png").unlink()
    write_image(images / "a_corrupt.tif", np.full((64, 64), 7, np.uint16))
    (images / "a_corrupt.tif").write_bytes((images / "a_corrupt.tif").read_bytes()[:60])  # truncated
    (images / "b_empty.tif").write_bytes(b"")
    (images / "z_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return ["a_corrupt.tif", "b_empty.tif", "z_bad.png"]


def _mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_files_are_reported_and_the_others_predicted(setup, tmp_path, capsys, workers):
    model, images = setup
    bad = _bad_folder(images)
    out = tmp_path / "out"
    argv = ["predict", str(model), str(images), "--out", str(out), "--workers", workers, "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert "Traceback" not in "\n".join(err)
    assert sorted(line.split(":")[1].strip() for line in err if line.startswith("failed: ")) == bad
    assert err[-1].startswith("napari-unet: 3 of 5 files failed")
    assert sorted(_mtimes(out)) == ["n0.tif", "n1.tif"]
    rows = {r["file"].rsplit("/", 1)[1]: r for r in _rows(out / "summary.csv")}
    assert [rows[n]["status"] for n in sorted(rows)] == ["failed", "failed", "ok", "ok", "failed"]
    assert all(f"cannot read {n}" in rows[n]["error"] and rows[n]["output"] == "" for n in bad)
    assert all(rows[n]["error"] == "" and int(rows[n]["objects"]) == len(np.unique(read_mask(out / f"{n[:-4]}.tif"))) - 1
               for n in ("n0.png", "n1.png"))


def test_rerun_skips_complete_files_and_redoes_the_rest(setup, tmp_path, capsys):
    model, images = setup
    _bad_folder(images)
    out = tmp_path / "out"
    argv = ["predict", str(model), str(images), "--out", str(out), "--quiet"]
    assert main(argv) == 1
    first, reference = _mtimes(out), {n: read_mask(out / n) for n in _mtimes(out)}
    capsys.readouterr()
    assert main(argv) == 1  # the bad files are tried again and fail again; the good ones are not redone
    assert "skipping 2 file(s)" in capsys.readouterr().out and _mtimes(out) == first
    assert len(_rows(out / "summary.csv")) == 5  # rebuilt from the complete files and this run's failures
    write_image(images / "a_corrupt.tif", read_image(images / "n0.png"))  # fixed: predicted, the rest skipped
    (images / "b_empty.tif").unlink()
    (images / "z_bad.png").unlink()
    assert main(argv) == 0
    assert _mtimes(out).items() >= first.items() and np.array_equal(read_mask(out / "a_corrupt.tif"), reference["n0.tif"])
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["ok"] * 3
    (out / "n1.tif").unlink()  # a missing output makes its file not done
    assert main(argv) == 0 and np.array_equal(read_mask(out / "n1.tif"), reference["n1.tif"])
    assert _mtimes(out)["n0.tif"] == first["n0.tif"]
    assert main([*argv, "--overwrite"]) == 0
    assert all(_mtimes(out)[n] > first[n] for n in ("n0.tif", "n1.tif"))
    assert {n: read_mask(out / n) for n in first}.keys() == reference.keys()
    assert all(np.array_equal(read_mask(out / n), reference[n]) for n in reference)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".napari-unet-batch"]


def test_other_settings_or_model_redo_complete_files(setup, tmp_path, capsys):
    model, images = setup
    (images / "sub" / "n2.png").unlink()
    out = tmp_path / "out"
    argv = ["predict", str(model), str(images), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    first = _mtimes(out)
    assert main([*argv, "--probabilities"]) == 0  # other outputs asked for: both files again
    assert all(_mtimes(out)[n] > first[n] for n in first) and len(list(out.glob("*_probabilities.tif"))) == 2
    second = _mtimes(out)
    torch.manual_seed(1)  # retrained into the same folder: other weights, predicted again
    cfg = TrainConfig(model=UNetConfig(depth=2, base_width=4))
    save_bundle(ModelBundle(build_network(cfg).eval(), cfg), model)
    capsys.readouterr()
    assert main([*argv, "--probabilities"]) == 0
    assert "skipping" not in capsys.readouterr().out and all(_mtimes(out)[n] > second[n] for n in second)


def test_stopping_a_batch_keeps_the_summary_of_finished_files(setup, tmp_path):
    from napari_unet.events import Message, Progress

    model, images = setup
    inputs = collect_inputs([images], recursive=True)
    gen = predict_batch(model, inputs, tmp_path / "o")
    assert next(event for event in gen if isinstance(event, Progress)).done == 1
    gen.close()  # what Cancel in the widget does: stop at the next yield
    assert [r["file"].rsplit("/", 1)[1] for r in _rows(tmp_path / "o" / "summary.csv")] == ["n0.png"]
    assert not (tmp_path / "o" / "n1.tif").exists()
    events = []
    gen = predict_batch(model, inputs, tmp_path / "o")
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        rows = stop.value
    texts = [e.text for e in events if isinstance(e, Message)]
    assert texts[0].startswith("skipping 1 file(s)") and texts[1].startswith("predicting 2 file(s)")
    assert [r["status"] for r in rows] == ["ok"] * 3 and events[-1].summary["skipped"] == 1
