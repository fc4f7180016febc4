"""The 3-class head (the default): background / interior / boundary softmax + seeded watershed.

Trained with the border-weighted cross-entropy of the U-Net paper (plus optional soft Dice) on
the class targets alone, so its batches need no instance ids. Instances: seeds of confident
interior grown over the foreground by a watershed on the boundary probability
(``heads.watershed.instances_from_probabilities``; block-wise and seam-free in
``heads.blockwise``). It is the one head that runs in 3D. Its post-processing rule (seed
threshold, split height, foreground threshold) is chosen after training on whole held-out
images only (``heads.calibrate.tune_thresholds``): a rule fitted on a few objects does not carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from napari_unet.config import MIN_SIZE
from napari_unet.events import Progress
from napari_unet.heads.base import Head

# Besides the argmax rule, the keep-best score tries these (seed threshold, split height) rules:
# the post-processing chosen after training usually splits interiors, and a model whose boundary
# class grows stronger can lose AP under the argmax rule while gaining under the chosen one.
SCORE_RULES = ((0.5, 1.0), (0.7, 1.0))


class ThreeClassHead(Head):
    """Background / interior / boundary classes + seeded watershed (see the module docstring)."""

    name = "3class"
    description = "interior/boundary classes + watershed"
    dims = (2, 3)
    needs_ids = False
    rule_keys = ("seed_threshold", "fg_threshold", "split_height")
    default_rule = {}  # the argmax rule: seeds where interior is the likeliest class, foreground > 0.5
    tunes_in_sample = False

    def channel_names(self, cfg: Any) -> list[str]:
        # deferred: scikit-image loads at first use
        from napari_unet.data.targets import INSTANCE_CLASSES

        return list(INSTANCE_CLASSES)

    def maps(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits[:, :self.n_classes], dim=1)

    def loss(self, logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor,
             targets: Sequence[torch.Tensor], cfg: Any) -> torch.Tensor:
        # deferred: scikit-image loads at first use
        from napari_unet.data.targets import unannotated_pull
        from napari_unet.heads.losses import segmentation_loss

        return segmentation_loss(logits, classes, weights, cfg.loss.dice_weight, unannotated_pull(cfg))

    def instances(self, maps: np.ndarray, min_size: int = MIN_SIZE, spacing: Sequence[float] | None = None,
                  **rule: Any) -> np.ndarray:
        # deferred: scikit-image loads at first use
        from napari_unet.heads.watershed import instances_from_probabilities

        return instances_from_probabilities(maps[:3], min_size, spacing=spacing, **rule)

    def instances_blockwise(self, maps: Any, labels: Any, block: Any = 1024, halo: Any = 64, min_size: int = MIN_SIZE,
                            scratch: Path | None = None, spacing: Sequence[float] | None = None,
                            **rule: Any) -> Generator[Progress, None, int]:
        """Seam-free watershed block by block (``heads.blockwise``), in 2D or 3D (``block`` and
        ``halo``: one extent or one per axis; ``spacing``: an anisotropic volume's voxel size);
        provisional seeds go to a uint32 Zarr array created at ``scratch``."""
        import zarr

        # deferred: scikit-image loads at first use
        from napari_unet.heads.blockwise import instances_blockwise, per_axis

        seeds = zarr.open_array(str(scratch), mode="w", shape=labels.shape, chunks=per_axis(block, labels.ndim),
                                dtype=np.uint32, zarr_format=2)
        return (yield from instances_blockwise(maps, labels, seeds, block, halo, min_size, spacing=spacing, **rule))

    def score(self, maps: Sequence[np.ndarray], truths: Sequence[np.ndarray],
              keep: dict | None = None, spacing: Sequence[float] | None = None,
              min_size: int = MIN_SIZE) -> dict[str, float]:
        """AP@0.5 (objects pooled); ``score`` is the best of the argmax rule and ``SCORE_RULES``.
        ``keep`` also receives ``rule_counts``: the per-image counts of every rule scored, keyed
        (seed threshold, split height, foreground threshold), which ``tune`` reuses. ``spacing``:
        an anisotropic volume's voxel size (the split at saddles measures physical distances);
        ``min_size``: the smallest object the model's labels keep (a 3D model's learned floor)."""
        # deferred: scikit-image loads at first use
        from napari_unet.heads.watershed import instances_from_probabilities
        from napari_unet.metrics import evaluate_instances
        from napari_unet.heads.calibrate import counts_ap, rule_counts

        metrics = evaluate_instances([(instances_from_probabilities(m, min_size, spacing=spacing), g)
                                      for m, g in zip(maps, truths)])
        scores = {"ap50": float(metrics["ap50"]), "map": float(metrics["map"]), "dice": float(metrics["dice"])}
        by_rule = {(None, None, 0.5): np.array([[r["tp50"], r["fp50"], r["fn50"]] for r in metrics["per_image"]],
                                               np.float64)}
        by_rule.update({(seed, split, 0.5): rule_counts(maps, truths, seed, 0.5, split, spacing=spacing,
                                                         min_size=min_size)
                        for seed, split in SCORE_RULES})
        counts = max(list(by_rule.values())[1:], key=counts_ap)
        scores["score"] = max(scores["ap50"], counts_ap(counts))
        if keep is not None:
            keep["counts"] = counts if counts_ap(counts) >= scores["ap50"] else by_rule[(None, None, 0.5)]
            keep["rule_counts"] = by_rule
        return scores

    def tune(self, maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], known: dict | None = None,
             should_stop: Callable[[], bool] | None = None, spacing: Sequence[float] | None = None,
             min_size: int = MIN_SIZE) -> dict | None:
        """``heads.calibrate.tune_thresholds``; None when it keeps the argmax rule."""
        # deferred: scikit-image loads at first use
        from napari_unet.heads.calibrate import tune_thresholds

        tuned = tune_thresholds(maps, truths, should_stop, known=known, spacing=spacing, min_size=min_size)
        if tuned["seed_threshold"] is None and tuned["split_height"] is None and tuned["fg_threshold"] == 0.5:
            return None  # the argmax rule
        return tuned

    def tune_message(self, tuned: dict, n_images: int, which: str) -> str:
        # deferred: scikit-image loads at first use
        from napari_unet.heads.calibrate import RULE_CONFIDENCE

        split = f", split at saddles {tuned['split_height']} px" if tuned["split_height"] else ""
        how = "searched" if tuned["confidence"] >= RULE_CONFIDENCE else "default (no rule clearly better)"
        return (f"post-processing on {n_images} {which} image(s): AP@0.5 "
                f"{tuned['ap50_argmax']:.3f} (argmax rule) -> {tuned['ap50']:.3f} with the {how} rule "
                f"(seeds > {tuned['seed_threshold']}{split}, foreground > {tuned['fg_threshold']})")
