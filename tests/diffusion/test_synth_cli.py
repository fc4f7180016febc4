import json

import numpy as np
import pytest

from napari_unet.cli import main
from napari_unet.files.io import read_image, read_mask, write_image


@pytest.fixture()
def folders(tmp_path, small_pairs):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i, (image, mask) in enumerate(small_pairs[:3]):
        write_image(images / f"n{i}.png", image[:64, :64])
        write_image(masks / f"n{i}.tif", mask[:64, :64])
    return images, masks


def test_synth_train_then_generate_from_masks_and_count(folders, small_pairs, tmp_path, monkeypatch, capsys):
    from napari_unet.diffusion.config import DiffusionConfig, DiffusionUNetConfig

    tiny = DiffusionUNetConfig(base_width=8, channel_mults=(1, 2), attention_levels=(1,), head_width=8,
                               context_dim=16, groups=4)

    def tiny_config(**kwargs):  # the CLI's defaults, with a tiny network so the test stays fast
        return DiffusionConfig(model=tiny, train_timesteps=100, low_precision=False, **kwargs)

    images, masks = folders
    model = tmp_path / "diff"
    with monkeypatch.context() as patch:
        patch.setattr("napari_unet.diffusion.config.DiffusionConfig", tiny_config)
        assert main(["synth", "train", str(images), str(masks), "--out", str(model), "--steps", "2",
                     "--crop-size", "32", "--batch-size", "2", "--auto-tags", "--quiet"]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["kind"] == "napari-unet/diffusion" and meta["training"]["steps"] == 2
    assert "saved diffusion model" in capsys.readouterr().out

    unannotated = tmp_path / "raw"
    for i, (image, _) in enumerate(small_pairs[-2:]):
        write_image(unannotated / f"raw{i}.png", image[:48, :80])
    with monkeypatch.context() as patch:
        patch.setattr("napari_unet.diffusion.config.DiffusionConfig", tiny_config)
        assert main(["synth", "train", str(images), str(masks), "--out", str(tmp_path / "diff2"), "--steps", "2",
                     "--crop-size", "32", "--batch-size", "2", "--unannotated", str(unannotated),
                     "--unannotated-share", "0.3", "--quiet"]) == 0
    meta = json.loads((tmp_path / "diff2" / "model.json").read_text())
    assert meta["training"]["images"] == 3 and meta["training"]["unannotated_images"] == 2
    assert meta["config"]["unannotated_share"] == 0.3

    out = tmp_path / "synth"
    assert main(["synth", "generate", str(model), "--masks", str(masks), "--out", str(out), "--steps", "3",
                 "--seed", "1", "--quiet"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["n0.tif", "n1.tif", "n2.tif"]
    img, mask = read_image(out / "images" / "n1.tif"), read_mask(out / "masks" / "n1.tif")
    assert img.shape == (64, 64) and img.dtype == np.uint8
    assert np.array_equal(mask, read_mask(masks / "n1.tif"))

    out2 = tmp_path / "auto"
    assert main(["synth", "generate", str(model), "--count", "2", "--size", "48", "--objects", "5",
                 "--out", str(out2), "--steps", "2", "--guidance", "1", "--quiet"]) == 0
    names = sorted(p.name for p in (out2 / "masks").iterdir())
    assert names == ["synth_0000.tif", "synth_0001.tif"]
    auto = read_mask(out2 / "masks" / names[0])
    assert auto.shape == (48, 48) and sorted(np.unique(auto).tolist()) == [0, 1, 2, 3, 4, 5]
    assert read_image(out2 / "images" / names[0]).shape == (48, 48)

    out3 = tmp_path / "varied"
    assert main(["synth", "generate", str(model), "--count", "3", "--size", "48", "--vary", "--density", "20",
                 "--out", str(out3), "--steps", "1", "--guidance", "1", "--quiet"]) == 0
    varied = [read_mask(path) for path in sorted((out3 / "masks").iterdir())]
    assert len(varied) == 3 and all(m.shape == (48, 48) and m.max() > 0 for m in varied)
    assert len({int(m.max()) for m in varied} | {int((m > 0).sum()) for m in varied}) > 1  # layouts differ
    assert main(["synth", "generate", str(model), "--count", "1", "--vary", "--objects", "3",
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "leave out --objects" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["synth", "generate", "{tmp}/nothing", "--count", "2", "--out", "{tmp}/o"], "no such model folder"),
    (["synth", "train", "{tmp}/none", "{tmp}/none", "--out", "{tmp}/d", "--steps", "1"], "no such file or folder"),
    (["synth", "train", "{images}", "{masks}", "--out", "{tmp}/d", "--time-limit", "-1"], "--time-limit must be positive"),
    (["synth", "train", "{images}", "{masks}", "--out", "{tmp}/d", "--unannotated", "{tmp}"], "no images found"),
    (["synth", "train", "{images}", "{masks}", "--out", "{tmp}/d", "--unannotated", "{images}",
      "--unannotated-share", "1"], "unannotated images must be in [0, 1)"),
])
def test_synth_bad_input_is_one_line_exit_2(argv, message, folders, tmp_path, capsys):
    images, masks = folders
    argv = [a.format(tmp=tmp_path, images=images, masks=masks) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_generate_refuses_a_segmentation_model(tmp_path, capsys):
    from napari_unet.files.io import save_model_folder
    import torch

    save_model_folder(tmp_path / "seg", {"w": torch.zeros(1)}, {"kind": "napari-unet/segmentation"})
    assert main(["synth", "generate", str(tmp_path / "seg"), "--count", "1", "--out", str(tmp_path / "o")]) == 2
    assert "not a diffusion model" in capsys.readouterr().err
