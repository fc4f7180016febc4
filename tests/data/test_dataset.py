import numpy as np
import pytest

from napari_unet.arrays.normalize import prepare_image, to_channels_first
from napari_unet.config import TrainConfig
from napari_unet.data.dataset import PatchSampler, prepare_pairs, split_validation
from napari_unet.data.targets import IGNORE, instance_classes, semantic_classes
from napari_unet.errors import UserError


@pytest.mark.parametrize(
    "shape, dtype, channels, expected",
    [
        ((20, 30), np.uint8, 1, (1, 20, 30)),
        ((20, 30), np.uint16, 1, (1, 20, 30)),
        ((20, 30), np.float64, 1, (1, 20, 30)),
        ((20, 30), bool, 1, (1, 20, 30)),
        ((20, 30, 3), np.uint8, 1, (1, 20, 30)),  # RGB -> grey
        ((20, 30, 4), np.uint8, 3, (3, 20, 30)),  # RGBA -> RGB
        ((2, 20, 30), np.float32, 2, (2, 20, 30)),  # channels first
        ((20, 30), np.uint8, 3, (3, 20, 30)),  # grey repeated
    ],
)
def test_channel_layouts(shape, dtype, channels, expected):
    image = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    assert to_channels_first(image, channels).shape == expected


def test_normalisation_percentiles_and_bad_values():
    image = np.linspace(0, 1000, 10000).reshape(100, 100)
    out = prepare_image(image, 1, (1.0, 99.0))
    assert out.dtype == np.float32 and abs(np.percentile(out, 1)) < 1e-3 and abs(np.percentile(out, 99) - 1) < 1e-3
    assert np.isfinite(prepare_image(np.full((8, 8), 7.0), 1, (1, 99))).all()  # constant image
    nan_image = image.copy()
    nan_image[0, :5] = np.nan
    assert np.isfinite(prepare_image(nan_image, 1, (1, 99))).all()
    with pytest.raises(UserError, match="no finite"):
        prepare_image(np.full((4, 4), np.nan), 1, (1, 99))
    with pytest.raises(UserError, match="channels"):
        to_channels_first(np.zeros((3, 8, 8)), 2)


def test_instance_classes_separate_touching_objects():
    labels = np.zeros((10, 12), int)
    labels[2:8, 1:6] = 1
    labels[2:8, 6:11] = 2  # touching object
    classes = instance_classes(labels)
    assert set(np.unique(classes)) == {0, 1, 2}
    assert (classes[:, 5] != 1).all() and (classes[:, 6] != 1).all()  # shared rim is boundary
    from scipy import ndimage as ndi

    assert ndi.label(classes == 1)[1] == 2  # interiors are not connected


def test_wider_boundaries_keep_a_seed_in_every_object():
    from scipy import ndimage as ndi

    labels = np.zeros((30, 40), int)
    labels[5:25, 2:20] = 1
    labels[5:25, 20:38] = 2  # touching object
    labels[1:4, 1:4] = 3  # 3x3: no interior left at width 2
    thin, wide = instance_classes(labels, 1), instance_classes(labels, 2)
    assert ((wide == 2) >= (thin == 2)).all() and (wide == 2).sum() > (thin == 2).sum()
    assert (wide[5:25, 18:22] == 2).all()  # two pixels on each side of the shared edge
    assert (wide[7:23, 4:18] == 1).all()  # the interior starts two pixels in
    assert wide[2, 2] == 1 and np.array_equal(wide[1:4, 1:4], thin[1:4, 1:4])  # falls back to the thin rim
    assert ndi.label(wide == 1)[1] == 3
    assert (wide > 0).sum() == (labels > 0).sum()


def test_class_balance_power_interpolates_between_none_and_full():
    from napari_unet.data.targets import class_balance_weights

    target = np.array([0] * 64 + [1] * 16 + [2] * 4 + [IGNORE] * 9)
    assert np.allclose(class_balance_weights(target, 3, 1.0), [1, 4, 10])  # 16x capped at 10
    assert np.allclose(class_balance_weights(target, 3, 0.5), [1, 2, 4])
    assert np.allclose(class_balance_weights(target, 3, 0.0), [1, 1, 1])


def test_semantic_classes_sparse_and_255():
    assert np.array_equal(semantic_classes(np.array([[0, 255]]), 2, False), [[0, 1]])
    assert np.array_equal(semantic_classes(np.array([[0, 1, 2]]), 2, True), [[IGNORE, 0, 1]])
    with pytest.raises(UserError):
        semantic_classes(np.array([[0, 5]]), 2, False)


def test_prepare_pairs_validates(nuclei_pairs):
    cfg = TrainConfig()
    image, mask = nuclei_pairs[0]
    with pytest.raises(UserError, match="does not match"):
        prepare_pairs([(image, mask[:-1])], cfg)
    with pytest.raises(UserError, match="hold no objects"):
        prepare_pairs([(image, np.zeros_like(mask))], cfg)
    sparse = TrainConfig(task="semantic", sparse=True)
    with pytest.raises(UserError, match="nothing is annotated"):
        prepare_pairs([(image, np.zeros_like(mask))], sparse)
    pairs = prepare_pairs([(image, mask)], cfg)
    p = pairs[0]
    assert p.image.shape == (1, *mask.shape) and p.target.shape == mask.shape
    assert p.weights.min() > 0 and p.weights.max() > 5  # border term present between nuclei


def test_patch_sampler_pads_small_images_with_ignore(nuclei_pairs):
    image, mask = nuclei_pairs[0]
    pairs = prepare_pairs([(image[:100, :90], mask[:100, :90])], TrainConfig())
    x, y, w = PatchSampler(pairs, 128, np.random.default_rng(0)).sample(3)
    assert x.shape == (3, 1, 128, 128) and y.shape == w.shape == (3, 128, 128)
    assert (y[:, 100:, :] == IGNORE).all() and (w[:, :, 90:] == 0).all()


def test_validation_split_is_by_image():
    items = list(range(10))
    train, val = split_validation(items, 0.2, seed=1)
    assert len(val) == 2 and sorted(train + val) == items
    assert split_validation([1, 2], 0.5, 0) == ([1, 2], [])
