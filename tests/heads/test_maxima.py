"""The h-maxima from the maxima's dynamics mark exactly what scikit-image's reconstruction marks."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import h_maxima as reference

from napari_unet.heads.maxima import h_maxima
from napari_unet.heads.watershed import interior_distance


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_fields_match_scikit_image(ndim):
    rng = np.random.default_rng(ndim)
    shape = (48, 40) if ndim == 2 else (14, 22, 18)
    for trial in range(30):
        field = ndi.gaussian_filter(rng.normal(size=shape), rng.uniform(0.5, 3))
        if trial % 3 == 0:
            field = np.maximum(field, np.quantile(field, 0.5))  # a flat floor between regions
        if trial % 4 == 0:
            field = np.round(field * 20) / 20  # plateaus and maxima of equal height
        h = rng.uniform(0.02, 1.0) * np.ptp(field)
        expected = reference(field, h).astype(bool)
        assert expected.any()
        np.testing.assert_array_equal(h_maxima(field, h), expected)


def test_touching_objects_distance_map_matches():
    """The split at saddles' own input: the smoothed distance map of touching discs of a volume."""
    zz, yy, xx = np.ogrid[:24, :64, :64]
    interior = np.zeros((24, 64, 64), bool)
    for z, y, x, r in [(12, 20, 20, 9), (12, 20, 35, 8), (10, 45, 40, 10), (14, 50, 22, 6)]:
        interior |= ((zz - z) * 2.0) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < r * r
    distance = interior_distance(interior, (2.0, 1.0, 1.0))
    for h in (0.5, 1.0, 3.0):
        marks = h_maxima(distance, h)
        np.testing.assert_array_equal(marks, reference(distance, h).astype(bool))
    assert ndi.label(h_maxima(distance, 1.0), np.ones((3, 3, 3)))[1] == 4  # one marker per disc


def test_flat_and_empty_images_have_no_maxima():
    assert not h_maxima(np.zeros((5, 6)), 1.0).any()
    assert not h_maxima(np.arange(12.0).reshape(3, 4), 20.0).any()  # h above the image's range
    single = np.zeros((7, 7))
    single[3, 3] = 2.0
    np.testing.assert_array_equal(h_maxima(single, 1.0), single > 0)
    with pytest.raises(ValueError):
        h_maxima(single, 0.0)
