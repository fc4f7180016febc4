import numpy as np
import pytest

from napari_unet.errors import UserError
from napari_unet.files.io import list_images, pair_files, read_image, read_mask, write_image


def test_write_read_roundtrip_tif_and_png(tmp_path):
    labels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 500
    write_image(tmp_path / "a.tif", labels)
    write_image(tmp_path / "b.png", labels)
    assert np.array_equal(read_mask(tmp_path / "a.tif"), labels)
    assert np.array_equal(read_mask(tmp_path / "b.png"), labels)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_pair_files_matches_by_stem_and_suffix(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for name in ("a", "b", "c"):
        write_image(tmp_path / "img" / f"{name}.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "msk" / "a.tif", np.zeros((4, 4), np.uint16))
    write_image(tmp_path / "msk" / "b_mask.png", np.zeros((4, 4), np.uint8))
    pairs = pair_files(tmp_path / "img", tmp_path / "msk")
    assert [(i.stem, m.name) for i, m in pairs] == [("a", "a.tif"), ("b", "b_mask.png")]


def test_bad_files_give_user_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(UserError, match="no such file"):
        list_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        pair_files(tmp_path / "empty", tmp_path)


def test_float_mask_with_fractions_is_rejected(tmp_path):
    write_image(tmp_path / "m.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(UserError, match="whole numbers"):
        read_mask(tmp_path / "m.tif")
