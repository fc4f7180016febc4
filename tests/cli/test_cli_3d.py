"""``napari-unet train --dims 3`` on folders of 3D TIFFs, then ``predict`` with the 3D model."""

import json

import numpy as np

from napari_unet.cli import main
from napari_unet.data.samples import ball_volume
from napari_unet.files.io import read_mask, write_image

Z_SCALE = 2.0


def test_train_dims_3_then_predict_volumes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(2):
        image, mask = ball_volume(rng, z_scale=Z_SCALE, n=6)
        write_image(images / f"v{i}.tif", image)
        write_image(masks / f"v{i}.tif", mask)
    held_out, truth = ball_volume(np.random.default_rng(5), z_scale=Z_SCALE, n=6)
    write_image(tmp_path / "new.tif", held_out)
    model = tmp_path / "model"
    assert main(["train", str(images), str(masks), "--out", str(model), "--dims", "3", "--z-scale", str(Z_SCALE),
                 "--steps", "5", "--depth", "2", "--base-width", "4", "--patch-size", "32", "--batch-size", "2",
                 "--checkpoint-every", "0", "--quiet"]) == 0
    config = json.loads((model / "model.json").read_text())["config"]
    assert config["model"]["dims"] == 3 and config["z_scale"] == Z_SCALE

    out = tmp_path / "pred"
    assert main(["predict", str(model), str(tmp_path / "new.tif"), "--out", str(out), "--quiet"]) == 0
    labels = read_mask(out / "new.tif")
    assert labels.shape == truth.shape and labels.dtype in (np.uint16, np.uint32)
    # (that a 3D model learns anisotropic balls is tests/core/test_volumes.py's check: too slow for the CLI's)

    capsys.readouterr()
    write_image(images / "flat.tif", held_out[0])  # a 2D image among the volumes
    write_image(masks / "flat.tif", truth[0])
    assert main(["train", str(images), str(masks), "--out", str(tmp_path / "m2"), "--dims", "3", "--steps", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "3D model needs (Z, Y, X) volumes" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert main(["train", str(images), str(masks), "--out", str(tmp_path / "m3"), "--dims", "3",
                 "--instance-head", "star", "--steps", "1", "--quiet"]) == 2
    assert "2D only" in capsys.readouterr().err
