"""What an instance head is: one interface for what an instance model outputs and what follows.

An instance head decides everything that depends on the meaning of an instance model's output
channels: their names and activation (``maps``), the training targets it makes from the warped
instance ids and its loss, how instances come out of its maps (whole images and block-wise for
images larger than memory), how a trained model is scored and its post-processing thresholds
searched, its extra MC-dropout uncertainty maps, the dimensions it supports and what an exported
model says about its outputs. The rest of the package asks the head of a config
(``heads.of(cfg)``) instead of testing its name.

Partial annotations (0 unannotated, 1 background, 2.. objects) reach a head as the class targets
(``IGNORE`` where unannotated) and the instance ids (0 on background and unannotated pixels): a
loss counts annotated pixels only (``annotated``).

The machinery heads share lives beside them: ``losses`` (the weighted cross-entropy), ``watershed``,
``blockwise`` and ``calibrate`` (the threshold search); ``data``, ``training`` and ``inference``
import the registry from above. Heads import them inside methods, where first needed (scikit-image
loads then, not with the registry).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Generator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from napari_unet.config import MIN_SIZE, SHAPE  # SHAPE: the uncertainty map of a head drawing outlines (rays, flows)
from napari_unet.errors import UserError
from napari_unet.events import Progress

EPS = 1e-8  # keeps log(p) finite in the entropies of uncertainty maps


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) of a Bernoulli(p)."""
    return -(p * np.log(p + EPS) + (1 - p) * np.log(1 - p + EPS))


class Head:
    """The interface of an instance head, with defaults a small head can keep.

    Register an instance with ``heads.register``; ``TrainConfig.instance_head`` names it. A head
    must define ``name``, ``channel_names``, ``maps``, ``loss`` and ``instances``; everything
    else has a working default (no extra targets, whole-image block-wise fallback, AP@0.5 of the
    default rule as validation score, a grid search over ``threshold_grid``, no extra uncertainty).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line for the CLI's --help and the Train widget's tooltip
    dims: ClassVar[tuple[int, ...]] = (2,)  # spatial dimensions it supports (``check_dims``)
    n_classes: ClassVar[int] = 3  # leading softmax channels of its maps (the 3-class targets' classes)
    needs_ids: ClassVar[bool] = True  # training batches carry the warped instance ids for ``targets``
    rule_keys: ClassVar[tuple[str, ...]] = ()  # post-processing thresholds a model folder may carry
    default_rule: ClassVar[Mapping[str, float]] = {}  # thresholds of ``instances`` before any calibration
    # the calibration's grid: (threshold name, values) per threshold; the first is refined by +-0.05
    threshold_grid: ClassVar[tuple[tuple[str, tuple[float, ...]], ...]] = ()
    tunes_in_sample: ClassVar[bool] = True  # with no held-out images, thresholds are chosen on training images
    uncertainty_kinds: ClassVar[tuple[str, ...]] = ()  # MC-dropout maps beyond total/aleatoric/epistemic
    output_range: ClassVar[tuple[float, float | None]] = (0.0, 1.0)  # of the maps, for exported models
    output_description: ClassVar[str] = "softmax probabilities per class (channels sum to 1)"

    # -- output channels -------------------------------------------------------------------------
    def channel_names(self, cfg: Any) -> list[str]:
        """A name for every channel of the output maps of a model trained with ``cfg`` (``TrainConfig``)."""
        raise NotImplementedError

    def n_channels(self, cfg: Any) -> int:
        """Output channels of the network (and of its maps)."""
        return len(self.channel_names(cfg))

    def side_channels(self, cfg: Any) -> int:
        """How many of them (the last ones) come from the half-resolution side branch (``UNet``)."""
        return 0

    def maps(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *S) float32 -> maps (B, K, *S): what tiling blends and ``instances`` reads.
        Traced into exported models: tensor operations only."""
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------------
    def targets(self, ids: np.ndarray, cfg: Any) -> tuple[np.ndarray, ...]:
        """Training targets from the warped instance ids (B, *P) (0: background or unannotated)."""
        return ()

    def loss(self, logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor,
             targets: Sequence[torch.Tensor], cfg: Any) -> torch.Tensor:
        """The training loss: ``logits`` (B, K, *P); ``classes`` (B, *P) the 3-class targets with
        ``IGNORE`` on unannotated pixels; ``weights`` (B, *P) the border-weight map; ``targets``
        this head's ``targets`` as tensors on the device."""
        raise NotImplementedError

    # -- instances ---------------------------------------------------------------------------------
    def instances(self, maps: np.ndarray, min_size: int = MIN_SIZE, **rule: Any) -> np.ndarray:
        """Maps (K, *S) -> instance labels (*S), consecutive ids; ``rule``: thresholds (``rule_keys``).
        A head with 3 in ``dims`` is also given ``spacing=`` for volumes whose voxels are not cubes
        (``volumes.anisotropic_spacing``: pixel size per axis in pixel widths), and so are its
        ``score`` and ``tune``: distances it measures should be physical."""
        raise NotImplementedError

    def instances_blockwise(self, maps: Any, labels: Any, block: int = 1024, halo: int = 64, min_size: int = MIN_SIZE,
                            scratch: Path | None = None, **rule: Any) -> Generator[Progress, None, int]:
        """Instances of on-disk maps (K, H, W) into ``labels`` (H, W) block by block, seam-free;
        ``scratch``: a path the head may create a scratch store at (the caller removes it).
        Returns the number of objects. This default holds the whole maps in memory at once."""
        start = time.perf_counter()
        whole = self.instances(np.asarray(maps[:], dtype=np.float32), min_size, **rule)
        labels[:] = whole.astype(labels.dtype)
        yield Progress(1, 1, time.perf_counter() - start, "objects")
        return int(whole.max()) if whole.size else 0

    # -- validation and calibration ------------------------------------------------------------------
    def score(self, maps: Sequence[np.ndarray], truths: Sequence[np.ndarray],
              keep: dict | None = None, spacing: Sequence[float] | None = None,
              min_size: int = MIN_SIZE) -> dict[str, float]:
        """Validation metrics (``score``: the one keep-best compares) of the maps against the true
        ids (-1 unannotated); ``keep`` receives the per-image TP/FP/FN ``counts`` at IoU 0.5.
        ``min_size``: the smallest object kept, as the trained model's labels will keep it."""
        # deferred: scipy.sparse loads at first use
        from napari_unet.metrics import evaluate_instances

        told = {} if spacing is None else {"spacing": spacing}
        metrics = evaluate_instances([(self.instances(m, min_size, **told, **self.default_rule), g)
                                      for m, g in zip(maps, truths)])
        scores = {"ap50": float(metrics["ap50"]), "map": float(metrics["map"]), "dice": float(metrics["dice"])}
        scores["score"] = scores["ap50"]
        if keep is not None:
            keep["counts"] = np.array([[r["tp50"], r["fp50"], r["fn50"]] for r in metrics["per_image"]], np.float64)
        return scores

    def tune(self, maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], known: dict | None = None,
             should_stop: Callable[[], bool] | None = None, spacing: Sequence[float] | None = None,
             min_size: int = MIN_SIZE) -> dict | None:
        """Post-processing thresholds chosen on held-out maps (with their ``ap50`` and the search's
        figures), or None to keep the default rule. ``known``: the per-rule counts ``score`` kept;
        ``spacing``: as for ``instances`` (this threshold grid search does not use it);
        ``min_size``: as for ``score``."""
        if not self.threshold_grid:
            return None
        # deferred: scikit-image loads at first use
        from napari_unet.heads.calibrate import tune_head_thresholds

        return tune_head_thresholds(self, maps, truths, should_stop, min_size)

    def tune_message(self, tuned: dict, n_images: int, which: str) -> str:
        """One line on what ``tune`` chose (``which``: the kind of images it was chosen on)."""
        # deferred: scikit-image loads at first use
        from napari_unet.heads.calibrate import CONFIDENCE

        how = "searched" if tuned["confidence"] >= CONFIDENCE else "default (none clearly better)"
        shown = ", ".join(f"{key} {tuned[key]}" for key, _ in self.threshold_grid)
        return (f"{self.name} post-processing on {n_images} {which} image(s): AP@0.5 {tuned['ap50_default']:.3f} "
                f"(default) -> {tuned['ap50']:.3f} with the {how} thresholds ({shown})")

    # -- uncertainty ---------------------------------------------------------------------------------
    def uncertainty(self, samples: np.ndarray, mean: np.ndarray) -> dict[str, np.ndarray]:
        """From MC-dropout samples (T, K, *S) of the maps and their ``mean``: this head's terms added
        to the classes' ``total`` and ``aleatoric`` entropies, and its ``uncertainty_kinds`` maps."""
        return {}

    # -- dimensions ----------------------------------------------------------------------------------
    def check_dims(self, dims: int) -> None:
        """``UserError`` when this head cannot run in ``dims`` D."""
        if dims in self.dims:
            return
        from napari_unet.heads import names_for_dims  # here: heads/__init__ imports this module

        which = " or ".join(names_for_dims(dims))
        raise UserError(f"the {self.name!r} instance head is {'/'.join(f'{d}D' for d in self.dims)} only; "
                        f"{dims}D models use the {which} head")

    def __repr__(self) -> str:
        return f"<instance head {self.name!r}>"


class OutputMaps(nn.Module):
    """Logits (B, K, *S) -> maps (B, K, *S): the head's ``maps``, or a softmax over the first
    ``n_classes`` channels for a semantic model (``head`` None). No parameters: weights files
    are the same with or without it."""

    def __init__(self, n_classes: int, head: Head | None = None) -> None:
        super().__init__()
        self.n_classes, self.head = n_classes, head

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.head is None:
            return torch.softmax(logits[:, :self.n_classes], dim=1)
        return self.head.maps(logits)


def annotated(classes: torch.Tensor) -> torch.Tensor:
    """(B, *P) float: 1 on annotated pixels (class target not ``IGNORE``), 0 elsewhere."""
    # deferred: scikit-image loads at first use
    from napari_unet.data.targets import IGNORE

    return (classes != IGNORE).float()


class ObjectMapHead(Head):
    """A head that keeps the 3 classes and adds an object probability and side-branch maps
    (``side_names``) from which its instances come: the star and flow heads.

    Layout: ``[0:3]`` class softmax, ``[3]`` sigmoid object probability, ``[4:]`` the side maps.
    Loss: the classes' border-weighted cross-entropy (+ Dice), the object probability's BCE on
    annotated pixels, plus ``side_loss``. Uncertainty: the Bernoulli object probability adds its
    entropy terms, and ``shape`` is the spread of the side maps weighted by the mean probability.
    """

    needs_ids = True
    uncertainty_kinds = (SHAPE,)
    maps_description: ClassVar[str] = ""  # what follows "the object probability and" in exports

    def side_names(self, cfg: Any) -> list[str]:
        """Names of the side-branch channels."""
        raise NotImplementedError

    def side_maps(self, side: torch.Tensor) -> torch.Tensor:
        """Side-branch logits (B, S, *P) -> their maps."""
        raise NotImplementedError

    def side_loss(self, logits: torch.Tensor, prob: torch.Tensor, valid: torch.Tensor,
                  targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """The side maps' term: ``logits`` (B, 3 + 1 + S, H, W) float, ``prob`` the object
        probability target, ``valid`` the annotated pixels, ``targets[1:]`` the side targets."""
        raise NotImplementedError

    def channel_names(self, cfg: Any) -> list[str]:
        # deferred: scikit-image loads at first use
        from napari_unet.data.targets import INSTANCE_CLASSES

        return [*INSTANCE_CLASSES, "object probability", *self.side_names(cfg)]

    def side_channels(self, cfg: Any) -> int:
        return len(self.side_names(cfg))

    @property
    def output_description(self) -> str:  # type: ignore[override]
        return f"softmax probabilities of the classes, then the object probability and {self.maps_description}"

    def maps(self, logits: torch.Tensor) -> torch.Tensor:
        k = self.n_classes
        classes = torch.softmax(logits[:, :k], dim=1)  # (B, k, *S)
        prob = torch.sigmoid(logits[:, k:k + 1])  # (B, 1, *S)
        return torch.cat([classes, prob, self.side_maps(logits[:, k + 1:])], dim=1)

    def loss(self, logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor,
             targets: Sequence[torch.Tensor], cfg: Any) -> torch.Tensor:
        import torch.nn.functional as F

        # deferred: scikit-image loads at first use
        from napari_unet.data.targets import unannotated_pull
        from napari_unet.heads.losses import segmentation_loss

        logits, k, prob, pull = logits.float(), self.n_classes, targets[0], unannotated_pull(cfg)
        loss = segmentation_loss(logits[:, :k], classes, weights, cfg.loss.dice_weight, pull)
        valid = annotated(classes)  # (B, H, W)
        bce = F.binary_cross_entropy_with_logits(logits[:, k], prob, reduction="none")  # (B, H, W)
        # the unannotated pixels' pull towards "no object", as for the classes (``weighted_cross_entropy``)
        prior = (1 - valid) * (weights > 0) * pull
        no_object = F.binary_cross_entropy_with_logits(logits[:, k], torch.zeros_like(prob), reduction="none")
        loss = loss + ((bce * valid).sum() + (no_object * prior).sum()) / (valid.sum() + prior.sum()).clamp(min=1)
        return loss + self.side_loss(logits, prob, valid, targets)

    def uncertainty(self, samples: np.ndarray, mean: np.ndarray) -> dict[str, np.ndarray]:
        k = self.n_classes
        prob = samples[:, k]  # (T, H, W)
        return {"total": binary_entropy(prob.mean(axis=0)), "aleatoric": binary_entropy(prob).mean(axis=0),
                SHAPE: (samples[:, k + 1:].std(axis=0).mean(axis=0) * mean[k]).astype(np.float32)}

    def rule_text(self, tuned: dict) -> str:
        """The second threshold in words, for ``tune_message``."""
        raise NotImplementedError

    def tune_message(self, tuned: dict, n_images: int, which: str) -> str:
        # deferred: scikit-image loads at first use
        from napari_unet.heads.calibrate import CONFIDENCE

        how = "searched" if tuned["confidence"] >= CONFIDENCE else "default (none clearly better)"
        return (f"{self.name} post-processing on {n_images} {which} image(s): AP@0.5 {tuned['ap50_default']:.3f} "
                f"(default) -> {tuned['ap50']:.3f} with the {how} thresholds (probability > "
                f"{tuned['prob_threshold']}, {self.rule_text(tuned)})")
