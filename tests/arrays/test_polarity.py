"""Image polarity: the shipped nuclei model inverts bright-background images (stained, brightfield)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet import pretrained
from napari_unet.arrays.normalize import normalize, prepare_image
from napari_unet.config import TrainConfig, from_dict, to_dict
from napari_unet.data.samples import SHOWCASE, STAINED, load_sample
from napari_unet.inference.large import ChannelsFirst, Normalized, sampled_percentiles
from napari_unet.inference.predict import predict_image
from napari_unet.metrics import evaluate_instances
from napari_unet.workflows.model_spec import resolve_model


def blobs(bright_objects: bool) -> np.ndarray:
    """A 64x80 image: background 40 (or 200) with two discs of 200 (or 40)."""
    yy, xx = np.mgrid[:64, :80]
    discs = ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 40) ** 2 + (xx - 55) ** 2 < 81)
    low, high = (40, 200) if bright_objects else (200, 40)
    return np.where(discs, high, low).astype(np.uint8) + np.random.default_rng(0).integers(0, 5, (64, 80), np.uint8)


@pytest.fixture(scope="module")
def nuclei():
    torch.set_num_threads(2)
    return resolve_model("pretrained:nuclei")


def test_auto_inverts_only_a_bright_background():
    dark, bright = blobs(True)[None], blobs(False)[None]
    assert np.array_equal(normalize(dark, polarity="auto"), normalize(dark))
    np.testing.assert_allclose(normalize(bright, polarity="auto"), 1 - normalize(bright), atol=1e-6)
    seen = normalize(bright, polarity="auto")[0]
    assert seen[20, 20] > 0.9 and seen[2, 2] < 0.1  # the objects come out bright
    assert np.array_equal(prepare_image(blobs(False), 1, (1.0, 99.8)), normalize(bright))  # "keep" is the default


def test_streamed_normalisation_inverts_like_the_whole_image():
    colour = np.stack([blobs(False)] * 3, axis=-1)  # channels last, as a user's RGB file
    view = ChannelsFirst(colour, 3)
    streamed = Normalized(view, sampled_percentiles(view, (1.0, 99.8), polarity="auto"))[(slice(None),) * 3]
    np.testing.assert_allclose(streamed, prepare_image(colour, 3, (1.0, 99.8), polarity="auto"), atol=1e-5)


def test_old_model_folders_keep_their_images_as_they_are():
    data = to_dict(TrainConfig())
    del data["polarity"]  # written before the setting existed
    assert from_dict(TrainConfig, data).polarity == "keep"


def test_shipped_model_finds_dark_nuclei_on_a_light_background(nuclei):
    assert nuclei.config.polarity == "auto"
    image, truth = load_sample(STAINED)
    found = evaluate_instances([(predict_image(nuclei, image[..., :3]).labels, truth)])["ap50"]
    kept = replace(nuclei, config=replace(nuclei.config, polarity="keep"))
    blind = evaluate_instances([(predict_image(kept, image[..., :3]).labels, truth)])["ap50"]
    assert found > 0.45 and blind < 0.1  # 0.563 and 0.000 measured


def test_shipped_model_sees_an_inverted_fluorescence_image_as_the_original(nuclei):
    image, _ = load_sample(SHOWCASE)
    labels = predict_image(nuclei, image).labels
    inverted = predict_image(nuclei, image.max() - image).labels
    assert evaluate_instances([(inverted, labels)])["ap50"] > 0.85  # 0.947 measured


def test_fine_tuning_keeps_the_users_images_as_they_are(nuclei):
    assert pretrained.fine_tune_config(TrainConfig(), nuclei).polarity == "keep"
