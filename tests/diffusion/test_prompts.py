import numpy as np
import pytest
import torch

from napari_unet.diffusion.prompts import (
    auto_masks,
    auto_tags,
    layout_shapes,
    mask_channels,
    object_shapes,
    pack_shapes,
    prompt_layouts,
    unpack_shapes,
)
from napari_unet.diffusion.text import TagEncoder
from napari_unet.errors import UserError


def _disc_mask() -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    mask = np.zeros((64, 64), np.uint16)
    for k, (cy, cx, r) in enumerate([(15, 15, 6), (40, 20, 8), (30, 45, 5)], start=1):
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return mask


def test_mask_channels_foreground_boundary_present():
    mask = np.zeros((10, 10), np.uint16)
    mask[2:6, 2:5], mask[2:6, 5:8] = 1, 2  # two touching objects
    ch = mask_channels(mask)
    assert ch.shape == (3, 10, 10) and ch.dtype == np.float32
    assert ch[0].sum() == 24 and (ch[2] == 1).all()
    assert ch[1][3, 4] == 1 and ch[1][3, 5] == 1  # the shared edge is boundary on both sides
    assert ch[1][mask == 0].sum() == 0


@pytest.mark.parametrize("count", [0, 1, 12])
def test_auto_masks_requested_count_and_distinct_ids(count):
    out = auto_masks([_disc_mask()], (96, 80), count=count, seed=3)
    assert out.shape == (96, 80) and out.dtype == np.uint16
    assert sorted(np.unique(out[out > 0]).tolist()) == list(range(1, count + 1))
    from scipy import ndimage as ndi

    for k in range(1, count + 1):  # every id is one connected object
        assert ndi.label(out == k)[1] == 1
    # objects keep a gap: growing one object never touches another
    for k in range(1, count + 1):
        grown = ndi.binary_dilation(out == k)
        assert set(np.unique(out[grown]).tolist()) <= {0, k}


def test_auto_masks_density_seed_and_errors():
    a = auto_masks([_disc_mask()], (100, 100), density=5.0, seed=1)
    assert a.max() == 5
    assert np.array_equal(a, auto_masks([_disc_mask()], (100, 100), density=5.0, seed=1))
    assert not np.array_equal(a, auto_masks([_disc_mask()], (100, 100), density=5.0, seed=2))
    with pytest.raises(UserError, match="could place only"):
        auto_masks([_disc_mask()], (32, 32), count=200)
    with pytest.raises(UserError, match="no object shapes"):
        auto_masks([np.zeros((20, 20), np.uint16)], (32, 32), count=1)


def test_shapes_pack_roundtrip_and_tags():
    shapes = object_shapes([_disc_mask()])
    assert len(shapes) == 3
    back = unpack_shapes(pack_shapes(shapes))
    assert sorted(s.sum() for s in back) == sorted(s.sum() for s in shapes)
    assert layout_shapes(back, (64, 64), count=4).max() == 4
    assert auto_tags(_disc_mask())[0] in ("dense", "medium", "sparse")


def test_tag_encoder_tokens_and_unknown_tag():
    enc = TagEncoder(["dense", "dim"], dim=8, max_tags=2)
    tokens, valid = enc.encode([["dense"], [], ["dim", "dense", "dim"]], torch.device("cpu"))
    assert tokens.shape == (3, 3, 8)
    assert valid.tolist() == [[True, True, False], [True, False, False], [True, True, True]]
    assert torch.equal(tokens[0, 1], tokens[2, 2])
    with pytest.raises(UserError, match="unknown tag 'bright'"):
        enc.encode([["bright"]], torch.device("cpu"))


def test_varied_layouts_vary_in_count_and_size_and_cut_edges():
    from napari_unet.diffusion.prompts import varied_layouts

    shapes = object_shapes([_disc_mask()])
    layouts = varied_layouts(shapes, (96, 96), 8, density=6.0, seed=0)
    assert len(layouts) == 8 and all(m.shape == (96, 96) and m.dtype == np.uint16 for m in layouts)
    for m in layouts:  # ids are 1..k without holes in the numbering
        assert sorted(np.unique(m[m > 0]).tolist()) == list(range(1, int(m.max()) + 1))
    counts = [int(m.max()) for m in layouts]
    mean_areas = [(m > 0).sum() / max(m.max(), 1) for m in layouts]
    assert len(set(counts)) > 2 and max(mean_areas) > 1.5 * min(mean_areas)
    assert any(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for m in layouts)  # cut by edges
    again = varied_layouts(shapes, (96, 96), 8, density=6.0, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(layouts, again))


def test_prompt_layouts_plain_and_varied():
    shapes = object_shapes([_disc_mask()])
    plain = prompt_layouts(shapes, 96, 2, density=2.0, seed=4, objects=3)
    assert [int(m.max()) for m in plain] == [3, 3] and not np.array_equal(plain[0], plain[1])
    assert np.array_equal(plain[1], layout_shapes(shapes, (96, 96), 3, seed=5))  # layout k: seed + k
    assert int(prompt_layouts(shapes, 96, 1, density=2.0)[0].max()) == 2  # 2 per 10,000 px of 96²
    varied = prompt_layouts(shapes, 96, 3, density=4.0, seed=1, vary=True)
    assert len(varied) == 3 and all(m.shape == (96, 96) for m in varied)
    with pytest.raises(UserError, match="object count"):
        prompt_layouts(shapes, 96, 1, density=4.0, objects=2, vary=True)
