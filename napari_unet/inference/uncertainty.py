"""Uncertainty from Monte-Carlo dropout samples (Gal & Ghahramani 2016; BALD, Houlsby 2011)."""

from __future__ import annotations

import numpy as np

EPS = 1e-8


def entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy (nats) of a categorical distribution along ``axis``."""
    return -(probs * np.log(probs + EPS)).sum(axis=axis)


def mc_uncertainty(samples: np.ndarray) -> dict[str, np.ndarray]:
    """From (T, K, H, W) softmax samples: mean probabilities and three uncertainty maps.

    total = H[E p] (predictive entropy), aleatoric = E H[p] (expected entropy),
    epistemic = total - aleatoric (mutual information / BALD).
    """
    mean = samples.mean(axis=0)  # (K, H, W)
    total = entropy(mean)
    aleatoric = entropy(samples, axis=1).mean(axis=0)
    epistemic = np.clip(total - aleatoric, 0.0, None)
    return {"probabilities": mean.astype(np.float32), "total": total.astype(np.float32),
            "aleatoric": aleatoric.astype(np.float32), "epistemic": epistemic.astype(np.float32)}
