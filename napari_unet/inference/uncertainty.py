"""Uncertainty from Monte-Carlo dropout samples (Gal & Ghahramani 2016; BALD, Houlsby 2011)."""

from __future__ import annotations

import numpy as np

from napari_unet import heads
from napari_unet.errors import UserError
from napari_unet.heads.base import EPS
from napari_unet.heads.base import SHAPE  # noqa: F401  (re-exported: the star / flow heads' outline spread)


def entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy (nats) of a categorical distribution along ``axis``."""
    return -(probs * np.log(probs + EPS)).sum(axis=axis)


CLASS_KINDS = ("total", "aleatoric", "epistemic")  # the maps every model gives


def uncertainty_kinds(cfg) -> tuple[str, ...]:
    """The MC-dropout maps a model trained with ``cfg`` (``TrainConfig``) gives, in the order batch
    outputs stack them: total, aleatoric, epistemic, then its instance head's own (``shape`` for
    a star or flow head)."""
    head = heads.of(cfg)
    return CLASS_KINDS + (head.uncertainty_kinds if head is not None else ())


def check_uncertainty_kind(kind: str, cfg) -> None:
    """``UserError`` when the ``kind`` uncertainty cannot come from a model trained with ``cfg``
    (``TrainConfig``): a head's own maps (``shape``) need that head."""
    if kind in uncertainty_kinds(cfg):
        return
    givers = heads.uncertainty_givers().get(kind)
    if givers:
        model = f"the {cfg.instance_head} head" if cfg.task == "instances" else f"a {cfg.task} model"
        raise UserError(f"the {kind} uncertainty comes from the {' or '.join(givers)} head's own maps; "
                        f"this is {model}: pick epistemic, total or aleatoric")


def mc_uncertainty(samples: np.ndarray, head=None) -> dict[str, np.ndarray]:
    """From (T, K, H, W) MC-dropout samples of the output maps: their mean and uncertainty maps.

    The classes' channels (``head.n_classes`` of an instance ``heads.Head``; every channel when
    ``head`` is None, as for a semantic model) are softmax samples: total = H[E p] (predictive
    entropy), aleatoric = E H[p] (expected entropy), epistemic = total - aleatoric (mutual
    information / BALD). The head adds its own terms and maps (``Head.uncertainty``): a star or
    flow head's Bernoulli object probability adds its three terms, and ``shape`` is the spread of
    its rays (in pixels) or flows (in units of the unit flow vector) over the samples, weighted
    by the mean object probability.
    """
    k = samples.shape[1] if head is None else head.n_classes
    mean = samples.mean(axis=0)  # (K, H, W)
    total = entropy(mean[:k])
    aleatoric = entropy(samples[:, :k], axis=1).mean(axis=0)
    out = {"probabilities": mean.astype(np.float32)}
    if head is not None:
        own = head.uncertainty(samples, mean)
        if "total" in own or "aleatoric" in own:
            total, aleatoric = total + own.pop("total", 0.0), aleatoric + own.pop("aleatoric", 0.0)
        out.update(own)
    epistemic = np.clip(total - aleatoric, 0.0, None)
    out.update(total=total.astype(np.float32), aleatoric=aleatoric.astype(np.float32),
               epistemic=epistemic.astype(np.float32))
    return out
