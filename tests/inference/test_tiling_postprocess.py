import numpy as np

from napari_unet.heads.watershed import instances_from_probabilities
from napari_unet.inference.tiling import predict_tiled, tile_starts


def test_tile_starts_cover_and_overlap():
    for size, tile, overlap in [(100, 100, 10), (101, 50, 10), (1000, 256, 32), (30, 64, 8)]:
        starts = tile_starts(size, tile, overlap)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and size <= starts[-1] + min(tile, size) < size + tile  # the last tile may run into the mirror
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_pointwise_function_is_exact():
    image = np.random.default_rng(0).random((2, 300, 410)).astype(np.float32)
    fn = lambda b: np.stack([b[:, 0] * 2, b[:, 1] + b[:, 0]], axis=1)  # noqa: E731
    out = predict_tiled(fn, image, 2, tile=128, overlap=32, batch_size=3)
    assert np.allclose(out[0], image[0] * 2, atol=1e-5) and np.allclose(out[1], image[1] + image[0], atol=1e-5)


def test_tiled_valid_margin_uses_mirrored_context():
    image = np.random.default_rng(1).random((1, 200, 150)).astype(np.float32)
    fn = lambda b: b[:, :, 5:-5, 5:-5]  # a "valid" network that crops 5 px per side  # noqa: E731
    out = predict_tiled(fn, image, 1, tile=64, overlap=16, margin=5)
    assert np.allclose(out, image, atol=1e-5)


def test_instances_from_probabilities_splits_touching_objects():
    h, w = 40, 60
    probs = np.zeros((3, h, w), np.float32)
    probs[0] = 1
    for x0 in (5, 25):  # two touching squares 20 px wide, shared rim at x = 24/25
        probs[:, 10:30, x0:x0 + 20] = 0
        probs[2, 10:30, x0:x0 + 20] = 1
        probs[2, 11:29, x0 + 1:x0 + 19] = 0
        probs[1, 11:29, x0 + 1:x0 + 19] = 1
    labels = instances_from_probabilities(probs, min_size=10)
    assert labels.max() == 2
    assert (labels[10:30, 5:45] > 0).all()  # boundary pixels assigned to an object
    assert labels[20, 10] != labels[20, 35]
