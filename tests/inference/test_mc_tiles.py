"""MC-dropout maps of an image predicted in tiles equal those of one whole-image pass (no seams)."""

import numpy as np

from napari_unet.config import PredictConfig
from napari_unet.inference.predict import predict_image

from helpers import tiny_bundle


def test_tiled_mc_dropout_matches_whole_image(nuclei_pairs):
    bundle = tiny_bundle(dropout=0.5)
    image = nuclei_pairs[2][0]  # 360 x 360
    whole = predict_image(bundle, image, PredictConfig(mc_samples=4, tile_size=1024))
    tiled = predict_image(bundle, image, PredictConfig(mc_samples=4, tile_size=128, overlap=32))
    assert whole.uncertainty["epistemic"].max() > 1e-3  # dropout really varies between passes
    for kind in ("total", "aleatoric", "epistemic"):
        assert np.abs(whole.uncertainty[kind] - tiled.uncertainty[kind]).max() < 3e-3, kind
    assert np.abs(whole.probabilities - tiled.probabilities).max() < 3e-3
