"""Shared fixtures: small real images from the bundled DSB2018 sample data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.data.samples import load_sample, training_samples


def pytest_configure(config):
    config.addinivalue_line("markers", "wheel: builds the wheel and runs the plugin from a fresh venv "
                                       "(about half a minute, no network; deselect with -m 'not wheel')")


@pytest.fixture(scope="session")
def nuclei_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Seven real (image, instance mask) pairs, 256² to 520x696."""
    return [(image, mask) for _, image, mask in training_samples()]


@pytest.fixture(scope="session")
def small_pairs(nuclei_pairs) -> list[tuple[np.ndarray, np.ndarray]]:
    """128x128 crops of four real images, for fast training tests."""
    return [(im[:128, :128], m[:128, :128]) for im, m in nuclei_pairs[:4]]


@pytest.fixture(scope="session")
def showcase() -> tuple[np.ndarray, np.ndarray]:
    return load_sample()
