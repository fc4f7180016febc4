"""Side-by-side overview pictures (image | prediction | uncertainty) as RGB arrays."""

from __future__ import annotations

import numpy as np

# A dark-to-bright ramp (black, purple, orange, yellow) that reads well for uncertainty.
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def to_uint8(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """Contrast-stretch a 2D image (or RGB) to uint8."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, percentiles)
    return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def grey_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) image -> (H, W, 3) uint8."""
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1) if image.shape[-1] in (3, 4) else image[0]
    return np.repeat(to_uint8(image)[..., None], 3, axis=-1)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map a float map to RGB with the ramp above, scaled to its own 99th percentile."""
    top = max(float(np.percentile(values, 99.5)), 1e-6)
    t = np.clip(values / top, 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    f = (t - i)[..., None]
    return ((1 - f) * _RAMP[i] + f * _RAMP[i + 1]).astype(np.uint8)


def overlay_labels(image_rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Random-colour instance overlay with outlined objects."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    blended = label2rgb(labels, image=image_rgb, alpha=alpha, bg_label=0, image_alpha=1.0)
    out = (np.clip(blended, 0, 1) * 255).astype(np.uint8)
    out[find_boundaries(labels, mode="outer") & (labels == 0)] = (255, 255, 255)
    return out


def overview(image: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray | None = None, gap: int = 8) -> np.ndarray:
    """Panels side by side, separated by white gaps: image | prediction | uncertainty."""
    base = grey_rgb(image)
    panels = [base, overlay_labels(base, labels)]
    if uncertainty is not None:
        panels.append(colorize(uncertainty))
    spacer = np.full((base.shape[0], gap, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [spacer, p]
    return np.concatenate(row, axis=1)
