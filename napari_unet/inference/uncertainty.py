"""Uncertainty from Monte-Carlo dropout samples (Gal & Ghahramani 2016; BALD, Houlsby 2011)."""

from __future__ import annotations

import numpy as np

EPS = 1e-8


def entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy (nats) of a categorical distribution along ``axis``."""
    return -(probs * np.log(probs + EPS)).sum(axis=axis)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) of a Bernoulli(p)."""
    return -(p * np.log(p + EPS) + (1 - p) * np.log(1 - p + EPS))


SHAPE = "shape"  # the spread of a star head's rays or a flow head's flows: where the object's outline is unsure
CLASS_KINDS = ("total", "aleatoric", "epistemic")  # the maps every model gives


def uncertainty_kinds(cfg) -> tuple[str, ...]:
    """The MC-dropout maps a model trained with ``cfg`` (``TrainConfig``) gives, in the order batch
    outputs stack them: total, aleatoric, epistemic, and ``shape`` for a star or flow head."""
    from napari_unet.models.heads import has_instance_maps

    return CLASS_KINDS + ((SHAPE,) if has_instance_maps(cfg) else ())


def check_uncertainty_kind(kind: str, cfg) -> None:
    """``UserError`` when the ``kind`` uncertainty cannot come from a model trained with ``cfg``
    (``TrainConfig``): the ``shape`` map needs a star or flow head."""
    from napari_unet.errors import UserError

    if kind == SHAPE and SHAPE not in uncertainty_kinds(cfg):
        model = f"the {cfg.instance_head} head" if cfg.task == "instances" else f"a {cfg.task} model"
        raise UserError(f"the shape uncertainty is the spread of a star or flow head's rays or flows; "
                        f"this is {model}: pick epistemic, total or aleatoric")


def mc_uncertainty(samples: np.ndarray, n_classes: int | None = None) -> dict[str, np.ndarray]:
    """From (T, K, H, W) MC-dropout samples of the output maps: their mean and uncertainty maps.

    The first ``n_classes`` channels (all when None) are softmax samples: total = H[E p]
    (predictive entropy), aleatoric = E H[p] (expected entropy), epistemic = total - aleatoric
    (mutual information / BALD). A star head's maps follow (object probability, then rays):
    the Bernoulli object probability adds its own three terms, and ``shape`` is the spread of
    the ray lengths (mean over rays of their standard deviation over samples, in pixels),
    weighted by the mean object probability. A flow head's maps (object probability, then the
    two flows) give the same terms, ``shape`` then holding the spread of the flows (in units of
    the unit flow vector) weighted by the object probability.
    """
    k = samples.shape[1] if n_classes is None else n_classes
    mean = samples.mean(axis=0)  # (K, H, W)
    total = entropy(mean[:k])
    aleatoric = entropy(samples[:, :k], axis=1).mean(axis=0)
    out = {"probabilities": mean.astype(np.float32)}
    if samples.shape[1] > k:  # star head: object probability and rays
        prob = samples[:, k]  # (T, H, W)
        total_p, aleatoric_p = binary_entropy(prob.mean(axis=0)), binary_entropy(prob).mean(axis=0)
        total, aleatoric = total + total_p, aleatoric + aleatoric_p
        out["shape"] = (samples[:, k + 1:].std(axis=0).mean(axis=0) * mean[k]).astype(np.float32)
    epistemic = np.clip(total - aleatoric, 0.0, None)
    out.update(total=total.astype(np.float32), aleatoric=aleatoric.astype(np.float32),
               epistemic=epistemic.astype(np.float32))
    return out
