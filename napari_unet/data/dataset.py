"""Training pairs: validation of user input, target/weight computation and patch sampling."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_unet import heads
from napari_unet.arrays.normalize import prepare_image
from napari_unet.config import TrainConfig
from napari_unet.data.targets import (
    IGNORE,
    class_balance_weights,
    instance_classes,
    partial_instance_classes,
    pixel_weights,
    semantic_classes,
    unannotated_prior,
    unannotated_pull,
)
from napari_unet.arrays.volumes import voxel_spacing
from napari_unet.errors import UserError
from napari_unet.metrics import UNANNOTATED


@dataclass
class PreparedPair:
    """One image ready for training: normalised pixels, class targets and loss weights."""

    image: np.ndarray  # (C, H, W) float32
    target: np.ndarray  # (H, W) int64, IGNORE where unannotated
    weights: np.ndarray  # (H, W) float32; where unannotated: the pull towards background (partial instances) or 0
    instances: np.ndarray | None = None  # (H, W) ground-truth ids for validation (instances task)
    name: str = ""

    @property
    def truth(self) -> np.ndarray | None:
        """The instance ids as scored by ``metrics``: -1 on unannotated pixels (partial annotations)."""
        if self.instances is None or not (self.target == IGNORE).any():
            return self.instances
        return np.where(self.target == IGNORE, UNANNOTATED, self.instances.astype(np.int64))  # signed, any id dtype


def _targets(mask: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray | None]:
    if cfg.task == "instances":
        if np.asarray(mask).min() < 0:
            raise UserError("instance labels must be >= 0 (0 = background)")
        if cfg.sparse:
            return partial_instance_classes(mask, cfg.boundary_width)
        return instance_classes(mask, cfg.boundary_width), np.asarray(mask)
    return semantic_classes(mask, cfg.n_classes, cfg.sparse), None


def prepare_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig,
                  names: Sequence[str] | None = None,
                  spared: Sequence[np.ndarray | None] | None = None) -> list[PreparedPair]:
    """Check and convert (image, mask) pairs; raises ``UserError`` with a one-line reason.
    ``spared``: per pair, the unannotated pixels the pull towards background leaves alone
    (``targets.unannotated_prior``), or None."""
    if len(pairs) == 0:
        raise UserError("no training pairs given")
    k = heads.n_output_classes(cfg)
    staged = []
    for i, (image, mask) in enumerate(pairs):
        name = names[i] if names else f"image {i}"
        chw = prepare_image(image, cfg.model.in_channels, cfg.percentiles, cfg.model.dims, cfg.polarity)
        mask = np.asarray(mask)
        if mask.ndim == cfg.model.dims + 1 and mask.shape[-1] in (3, 4):
            mask = mask[..., 0]
        if mask.shape != chw.shape[1:]:
            raise UserError(f"{name}: mask shape {mask.shape} does not match image shape {chw.shape[1:]}")
        target, instances = _targets(mask, cfg)
        staged.append((name, chw, target, instances))
    all_targets = np.concatenate([t[2].ravel() for t in staged])
    annotated = all_targets[all_targets >= 0]
    if annotated.size == 0:
        raise UserError("the labels are empty: nothing is annotated")
    if cfg.task == "instances" and not any(int(t[3].max()) > 0 for t in staged):
        raise UserError("the masks hold no objects: paint objects with ids 2 and up (1 is background)" if cfg.sparse
                        else "the masks hold no objects: every pixel is 0 (background)")
    if np.unique(annotated).size < 2:
        raise UserError("the labels hold a single class: annotate background and objects")
    class_w = class_balance_weights(all_targets, k, cfg.loss.balance_power) if cfg.loss.balance_classes else np.ones(k)
    spacing = voxel_spacing(cfg)
    pull = unannotated_pull(cfg)
    spared = list(spared) if spared is not None else [None] * len(staged)
    return [
        PreparedPair(chw, target, unannotated_prior(pixel_weights(target, instances, k, cfg.loss, class_w, spacing),
                                                    target, pull, spare), instances, name)
        for (name, chw, target, instances), spare in zip(staged, spared)
    ]


def split_validation(pairs: list[PreparedPair], fraction: float, seed: int,
                     max_images: int | None = None) -> tuple[list[PreparedPair], list[PreparedPair]]:
    """Hold out whole images for validation (none when fewer than 3 images, at most ``max_images``)."""
    n_val = int(round(len(pairs) * fraction)) if len(pairs) >= 3 else 0
    if fraction > 0 and len(pairs) >= 3:
        n_val = max(1, n_val)
    if max_images is not None:
        n_val = min(n_val, max_images)
    order = np.random.default_rng(seed).permutation(len(pairs))
    val = [pairs[i] for i in sorted(order[:n_val])]
    train = [pairs[i] for i in sorted(order[n_val:])]
    return train, val


def objects_brighter(pairs: Sequence[PreparedPair]) -> bool | None:
    """Whether the annotated objects are brighter than the annotated background (the median of
    the normalised channels' mean); None when the pairs hold no objects or no background."""
    inside, outside = [], []
    for pair in pairs:
        if pair.instances is None:
            return None
        grey = pair.image.mean(axis=0)
        inside.append(grey[(pair.instances > 0) & (pair.target >= 0)])
        outside.append(grey[pair.target == 0])
    inside_px, outside_px = np.concatenate(inside or [[]]), np.concatenate(outside or [[]])
    if inside_px.size == 0 or outside_px.size == 0:
        return None
    return bool(np.median(inside_px) > np.median(outside_px))


def objects_brighter_of(bundle) -> bool:
    """The polarity a model learned (``meta["training"]["objects_brighter"]``); bright objects on
    a dark background when not recorded, as for the fluorescence nuclei of ``pretrained:nuclei``."""
    if bundle is None:
        return True
    return bool((bundle.meta.get("training") or {}).get("objects_brighter", True))


MIN_OBJECTS_TO_HOLD_OUT = 4  # an image with fewer annotated objects lends none to validation


def hold_out_objects(pairs: Sequence[PreparedPair], fraction: float,
                     seed: int) -> tuple[list[PreparedPair], list[PreparedPair], dict[str, np.ndarray]]:
    """Validation for runs with too few images to hold out whole ones (instances task).

    From every image with at least ``MIN_OBJECTS_TO_HOLD_OUT`` annotated objects, a ``fraction``
    of them (at least one) is held out together with its zone: the annotated pixels nearer to
    it than to any other object (a Voronoi cell), its painted background included. Training
    ignores the zones; each validation pair is the image with only its zones annotated, so it is
    scored as a partial annotation (``metrics.UNANNOTATED``). This is what lets the fine-tune
    guard and keep-best work when a user annotated one image. Returns (training pairs,
    validation pairs, zones by image name) — the zones are re-applied to updated annotations.
    """
    rng = np.random.default_rng(seed)
    zones: dict[str, np.ndarray] = {}
    val = []
    for pair in pairs:
        if pair.instances is None or fraction <= 0:
            continue
        ids = np.where(pair.target >= 0, pair.instances, 0)
        objects = np.unique(ids[ids > 0])
        if len(objects) < MIN_OBJECTS_TO_HOLD_OUT:
            continue
        held = rng.choice(objects, max(1, int(round(fraction * len(objects)))), replace=False)
        nearest = ids[tuple(ndi.distance_transform_edt(ids == 0, return_distances=False, return_indices=True))]
        zones[pair.name] = np.isin(nearest, held) & (pair.target >= 0)
        val.append(replace(pair, target=np.where(zones[pair.name], pair.target, IGNORE),
                           weights=np.zeros_like(pair.weights)))
    return without_zones(pairs, zones), val, zones


def count_objects(pairs: Sequence[PreparedPair]) -> int:
    """How many annotated objects ``pairs`` hold, unannotated pixels not counted: in validation pairs
    the objects ``hold_out_objects`` set aside, in partial masks the painted objects."""
    return sum(np.unique(p.truth[p.truth > 0]).size for p in pairs if p.truth is not None)


def without_zones(pairs: Sequence[PreparedPair], zones: dict[str, np.ndarray]) -> list[PreparedPair]:
    """``pairs`` with the held-out ``zones`` (by image name, same shape) unannotated: ``IGNORE``, weight 0."""
    out = []
    for pair in pairs:
        zone = zones.get(pair.name)
        if zone is None or zone.shape != pair.target.shape:
            out.append(pair)
            continue
        out.append(replace(pair, target=np.where(zone, IGNORE, pair.target), weights=np.where(zone, 0, pair.weights)))
    return out


class PatchSampler:
    """Random fixed-size crops, drawn from images in proportion to their annotated area."""

    def __init__(self, pairs: Sequence[PreparedPair], patch_size: int | Sequence[int], rng: np.random.Generator,
                 focus_annotated: bool = False, with_instances: bool = False) -> None:
        """``patch_size``: one side for every axis, or one per axis (``volumes.patch_shape``);
        ``with_instances``: batches also carry the instance ids (B, *P) (0 in padding)."""
        self.pairs = list(pairs)
        self.with_instances = with_instances
        nd = self.pairs[0].target.ndim if self.pairs else 2
        self.patch = (int(patch_size),) * nd if np.isscalar(patch_size) else tuple(int(s) for s in patch_size)
        self.rng = rng
        self.focus = focus_annotated
        areas = np.array([(p.target >= 0).sum() for p in self.pairs], dtype=np.float64)
        self.p = areas / areas.sum()
        self._annotated = [np.flatnonzero(p.target.ravel() >= 0) for p in self.pairs] if focus_annotated else None

    def _crop(self, index: int) -> tuple[np.ndarray, ...]:
        """One patch (C, *P), (*P), (*P)[, (*P) instance ids] of image ``index``; 2D or 3D alike."""
        pair, sizes = self.pairs[index], self.patch
        shape = pair.target.shape
        if self._annotated is not None and self.rng.random() < 0.8:
            flat = self._annotated[index][self.rng.integers(len(self._annotated[index]))]
            centre = np.unravel_index(int(flat), shape)
            lo = [int(np.clip(c - s // 2, 0, max(n - s, 0))) for c, n, s in zip(centre, shape, sizes)]
        else:
            lo = [int(self.rng.integers(0, max(n - s, 0) + 1)) for n, s in zip(shape, sizes)]
        sl = tuple(slice(start, start + s) for start, s in zip(lo, sizes))
        image, target, weights = pair.image[(slice(None), *sl)], pair.target[sl], pair.weights[sl]
        extra = [pair.instances[sl]] if self.with_instances else []
        pads = [(0, s - n) for n, s in zip(target.shape, sizes)]
        if any(after for _, after in pads):  # image smaller than the patch: mirror the pixels, ignore the padding
            mode = "reflect" if min(target.shape) > 1 else "edge"
            image = np.pad(image, [(0, 0), *pads], mode=mode)
            target = np.pad(target, pads, constant_values=IGNORE)
            weights = np.pad(weights, pads)
            extra = [np.pad(e, pads) for e in extra]
        return (image, target, weights, *extra)

    def sample(self, batch_size: int) -> tuple[np.ndarray, ...]:
        """A batch: images (B, C, *P), targets (B, *P), weights (B, *P) with P the patch size per
        axis, and with ``with_instances`` the instance ids (B, *P)."""
        idx = self.rng.choice(len(self.pairs), size=batch_size, p=self.p)
        crops = [self._crop(int(i)) for i in idx]
        return tuple(np.stack(parts) for parts in zip(*crops))  # type: ignore[return-value]


class MixedSampler:
    """Batches that take a ``ratio`` share of patches from synthetic pairs, the rest from real ones."""

    def __init__(self, real: PatchSampler, synthetic: PatchSampler, ratio: float, rng: np.random.Generator) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise UserError(f"the synthetic ratio must be between 0 and 1, got {ratio}")
        self.real, self.synthetic, self.ratio, self.rng = real, synthetic, ratio, rng

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like ``PatchSampler.sample``; the synthetic count per batch is Binomial(batch, ratio)."""
        n_syn = int(self.rng.binomial(batch_size, self.ratio))
        parts = [s.sample(n) for s, n in ((self.real, batch_size - n_syn), (self.synthetic, n_syn)) if n > 0]
        return tuple(np.concatenate(arrays) for arrays in zip(*parts))  # type: ignore[return-value]
