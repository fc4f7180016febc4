"""bioimage.io packages: a tiny model is exported, validated by bioimageio.spec, run by
bioimageio.core like napari-unet runs it, and read back by `predict`."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import zipfile

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("bioimageio.core")

from napari_unet.cli import main  # noqa: E402
from napari_unet.config import PredictConfig  # noqa: E402
from napari_unet.errors import UserError  # noqa: E402
from napari_unet.files.bioimage_io import is_package, read_package_config, validate_package  # noqa: E402
from napari_unet.files.io import read_image  # noqa: E402
from napari_unet.inference.predict import predict_probabilities  # noqa: E402
from napari_unet.models.bundle import load_bundle, save_bundle  # noqa: E402

from helpers import tiny_bundle  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model folder and the package `export-model --format bioimageio` made of it (CLI output too)."""
    root = tmp_path_factory.mktemp("bioimageio")
    bundle = tiny_bundle()
    bundle.meta["postprocess"] = {"seed_threshold": 0.55, "fg_threshold": 0.45}
    save_bundle(bundle, root / "model")
    err, out = io.StringIO(), io.StringIO()  # a module fixture cannot use capsys
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(["export-model", str(root / "model"), "--format", "bioimageio", "--out", str(root / "tiny.zip"),
                   "--tile", "64", "--author", "Test Author", "--quiet"])
    return root, rc, out.getvalue() + err.getvalue()


def test_export_validates_and_passes_its_own_test(exported):
    root, rc, output = exported
    assert rc == 0, output
    assert "bioimage.io validation (bioimageio.spec, format and files): valid-format" in output
    assert "bioimage.io model test (bioimageio.core, onnx, torchscript): passed" in output
    summary = validate_package(root / "tiny.zip")  # again, from the file alone, offline
    assert summary.status == "valid-format" and not [e for d in summary.details for e in d.errors]


def test_package_describes_axes_normalisation_weights_and_our_config(exported):
    root, _, _ = exported
    rdf = read_package_config(root / "tiny.zip")
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5")
    (inp,), (outp,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert [a.get("id") for a in inp["axes"][2:]] == ["y", "x"] and inp["axes"][2]["size"] == {"min": 4, "step": 4}
    scale = [p for p in inp["preprocessing"] if p["id"] == "scale_range"][0]["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"]) == (1.0, 99.8) and scale["axes"] == ["y", "x"]
    assert outp["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    assert set(rdf["weights"]) == {"torchscript", "onnx"} and rdf["weights"]["onnx"]["parent"] == "torchscript"
    assert rdf["license"] == "CC-BY-4.0" and rdf["authors"] == [{"name": "Test Author"}]
    assert "10.1007/978-3-319-24574-4_28" in [c.get("doi") for c in rdf["cite"]]  # Ronneberger et al. 2015
    ours = rdf["config"]["napari-unet"]
    assert ours["output"] == "softmax probabilities" and ours["postprocess"] == {"seed_threshold": 0.55,
                                                                                  "fg_threshold": 0.45}
    names = set(zipfile.ZipFile(root / "tiny.zip").namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy", ours["model_json"],
            ours["weights"]} <= names
    readme = zipfile.ZipFile(root / "tiny.zip").read("README.md").decode()
    assert "## Validation" in readme and "softmax probabilities" in readme


@pytest.mark.parametrize("weight_format", ["torchscript", "onnx"])
def test_bioimageio_core_reproduces_our_prediction(exported, weight_format, monkeypatch):
    """The package run by bioimageio.core (its own scale_range preprocessing, our exported weights)
    gives napari-unet's probabilities on an image that is not the test tensor: to float32 rounding
    against our float32 path, and within bf16 rounding against our default (bf16 autocast where
    the CPU has it)."""
    import napari_unet.inference.predict as predict_module
    from napari_unet.files.bioimage_io import require_spec

    require_spec()  # bioimageio.spec 0.5.12 needs our pydantic 2.14 fix before it loads a description
    from bioimageio.core import create_prediction_pipeline, load_description, predict

    root, _, _ = exported
    bundle = load_bundle(root / "model")
    rng = np.random.default_rng(3)
    image = (rng.gamma(2.0, 20.0, (40, 52)) + 100 * (np.hypot(*np.mgrid[-20:20, -26:26]) < 12)).astype(np.float32)
    default = predict_probabilities(bundle, image, PredictConfig(tile_size=64))  # (K, H, W)
    monkeypatch.setattr(predict_module, "low_precision_dtype", lambda device, wanted: None)
    fp32 = predict_probabilities(bundle, image, PredictConfig(tile_size=64))
    model = load_description(root / "tiny.zip")
    pipeline = create_prediction_pipeline(model, weight_format=weight_format, devices=["cpu"])
    sample = predict(model=pipeline, inputs={"raw": image[None, None]})
    theirs = np.asarray(sample.members["probabilities"].data)[0]
    assert theirs.shape == fp32.shape == (3, 40, 52)
    assert np.abs(theirs - fp32).max() < 1e-5
    assert np.abs(theirs - default).max() < 2e-2


def test_predict_accepts_the_package_like_the_folder(exported, tmp_path, capsys):
    root, _, _ = exported
    assert is_package(root / "tiny.zip") and not is_package(root / "model")
    from_package = load_bundle(root / "tiny.zip")
    assert from_package.postprocess == {"seed_threshold": 0.55, "fg_threshold": 0.45}  # our post-processing travels
    for a, b in zip(from_package.net.state_dict().values(), load_bundle(root / "model").net.state_dict().values()):
        assert torch.equal(a, b)
    image = tmp_path / "in" / "nuclei.tif"
    image.parent.mkdir()
    import tifffile

    from napari_unet.data.samples import load_sample

    tifffile.imwrite(image, load_sample()[0][:64, :80])
    assert main(["predict", str(root / "tiny.zip"), str(image.parent), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["predict", str(root / "model"), str(image.parent), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert np.array_equal(read_image(tmp_path / "a" / "nuclei.tif"), read_image(tmp_path / "b" / "nuclei.tif"))


def test_foreign_packages_and_bad_input_are_one_line_errors(exported, tmp_path, capsys):
    root, _, _ = exported
    foreign = tmp_path / "zoo.zip"
    with zipfile.ZipFile(foreign, "w") as archive:  # a zoo model napari-unet did not write
        archive.writestr("rdf.yaml", yaml.safe_dump({"type": "model", "format_version": "0.5.4", "name": "other"}))
    image = tmp_path / "x.tif"
    import tifffile

    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    capsys.readouterr()
    assert main(["predict", str(foreign), str(image), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "napari-unet did not export" in err and "\n" not in err and "Traceback" not in err
    assert main(["export-model", str(root / "model"), "--format", "bioimageio", "--out", str(tmp_path / "m.zip"),
                 "--license", "NOT-A-LICENCE", "--tile", "16", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("napari-unet: error: licence 'NOT-A-LICENCE' is not an SPDX licence id")
    assert not (tmp_path / "m.zip").exists()
    assert main(["export-model", str(root / "model"), "--format", "bioimageio", "--out", str(tmp_path / "m.tar"),
                 "--quiet"]) == 2
    assert ".zip" in capsys.readouterr().err


def test_missing_extra_names_it(monkeypatch):
    from napari_unet.files.bioimage_io import require_spec

    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # as if not installed
    with pytest.raises(UserError, match=r"napari-unet\[bioimageio\]"):
        require_spec()


def test_shipped_nuclei_model_is_packaged_as_cc0_with_its_card():
    from napari_unet.workflows.bioimage_io_export import package_info
    from napari_unet.pretrained import available, model_folder

    if "nuclei" not in available():
        pytest.skip("pretrained:nuclei not shipped in this checkout")
    info = package_info(model_folder("nuclei"))
    assert info.license == "CC0-1.0" and "DSB 2018" in info.name and info.card.startswith("# `pretrained:nuclei`")
    assert "10.1038/s41592-019-0612-7" in [doi for _, doi in info.citations]  # the data (BBBC038 / DSB 2018)
    assert package_info(model_folder("nuclei"), license="MIT").license == "MIT"
    json.dumps(info.__dict__)  # plain data


@pytest.mark.parametrize("model", [{"padding": "valid"}, {"dims": 3}])
def test_valid_and_3d_networks_make_valid_packages(model, tmp_path):
    """Fixed-size axes for valid networks (the output is the input's centre), z/y/x axes for 3D."""
    from helpers import drain

    from napari_unet.workflows.bioimage_io_export import export_bioimageio

    path = drain(export_bioimageio(tiny_bundle(**model), tmp_path / "m.zip", tile=16, run_test=False))
    assert validate_package(path).status == "valid-format"
    rdf = read_package_config(path)
    in_axes, out_axes = rdf["inputs"][0]["axes"], rdf["outputs"][0]["axes"]
    if model.get("dims") == 3:
        assert [a.get("id") for a in in_axes[2:]] == ["z", "y", "x"]
    else:
        assert all(isinstance(a["size"], int) for a in in_axes[2:] + out_axes[2:])
        assert out_axes[2]["size"] < in_axes[2]["size"]


@pytest.mark.parametrize("head, rule, n_channels, value_range", [
    ("star", {"prob_threshold": 0.5, "nms_threshold": 0.4}, 36, [0.0, None]),
    ("flow", {"prob_threshold": 0.5, "flow_threshold": 0.4}, 6, [-1.0, 1.0]),
])
def test_instance_head_model_packages_its_maps_and_predicts_the_same_labels(tmp_path, small_pairs, head, rule,
                                                                             n_channels, value_range):
    """A star-head model: 36 output channels (classes, object probability, rays in pixels); a
    flow-head model: 6 (classes, object probability, flows in [-1, 1]). The package passes
    bioimageio.core's own test and reads back to the same labels."""
    from helpers import drain

    from napari_unet.workflows.bioimage_io_export import export_bioimageio
    from napari_unet.config import TrainConfig, UNetConfig
    from napari_unet.inference.predict import predict_image
    from napari_unet.models.bundle import ModelBundle, build_network

    torch.manual_seed(0)
    cfg = TrainConfig(instance_head=head, model=UNetConfig(depth=2, base_width=4))
    bundle = ModelBundle(build_network(cfg).eval(), cfg, {"postprocess": rule})
    path = drain(export_bioimageio(bundle, tmp_path / f"{head}.zip"))
    assert validate_package(path).status == "valid-format"
    rdf = read_package_config(path)
    channels = rdf["outputs"][0]["axes"][1]["channel_names"]
    assert len(channels) == n_channels and list(rdf["outputs"][0]["data"]["range"]) == value_range
    again = load_bundle(path)
    image = small_pairs[0][0]
    assert again.config.instance_head == head
    np.testing.assert_array_equal(predict_image(again, image).labels, predict_image(bundle, image).labels)
