"""Classical references on dsb2018_fluo: Otsu floors and an ilastik-style random forest.

Random forest recipe: each image is normalised by its (1, 99.8) percentiles, scikit-image
``multiscale_basic_features`` (intensity, edges, Hessian texture, sigma 1..16) are computed,
and pixels are sampled from the train split uniformly, i.e. at their natural class balance, to
fit scikit-learn ``RandomForestClassifier``s. Variants (forest_postprocessing):

* ``rf2_*``: 2 classes (background / nucleus).
* ``rf3_*``: 3 classes (background / interior / boundary = the 2 px inner rim of each nucleus).
* ``rf3ac_*`` (only with ``--autocontext``): auto-context as in ilastik, a second 3-class
  forest that also sees the first one's probabilities blurred at sigma 1..8. Measured on val it
  did not beat ``rf3_*`` (AP@0.5 0.669 vs 0.668) and costs ~4 more minutes, so it is off.
* ``*_cc``: connected components of the foreground; ``*_watershed``: the foreground split by a
  distance-transform watershed; ``*_interior``: components of the thin predicted interior as
  seeds, grown back over the predicted foreground.

Otsu floors (Gaussian sigma 1, Otsu threshold): ``otsu_cc`` and ``otsu_watershed``.
Run ``python bench/reference_rf.py`` to print a table (objects pooled AP@0.5 on the 94 val
images, scored with :func:`napari_unet.metrics.evaluate_instances`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import multiscale_basic_features, peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import find_boundaries, watershed
from sklearn.ensemble import RandomForestClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Sample, Timer, load_dsb, machine_description  # noqa: E402

from napari_unet.metrics import evaluate_instances  # noqa: E402


@dataclass(frozen=True)
class RFConfig:
    """Random-forest reference settings (defaults: the best found within the time budget).

    The post-processing thresholds were chosen on the val split itself, so the reference is, if
    anything, optimistic: a conservative bar for the U-Net to beat.
    """

    n_pixels: int = 200_000        # training pixels per forest, uniform over pixels
    n_trees: int = 50
    max_depth: int = 16
    min_samples_leaf: int = 1
    sigma_min: float = 1.0
    sigma_max: float = 16.0
    boundary: str = "inner2"       # "inner" (1 px inside each object) or "inner2" (2 px)
    fg_threshold: float = 0.6      # foreground where p(not background) > this
    interior_threshold: float = 0.7  # seeds where p(interior) > this
    min_size: int = 10             # objects of at most this many pixels are removed
    ws_min_distance: int = 7       # peak spacing of the distance-transform watersheds
    autocontext: bool = False      # also fit the auto-context stage (no gain measured, +4 min)
    ac_images: int | None = None   # train images the auto-context stage samples from (None: all)
    ac_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    n_jobs: int = 2


# ----------------------------------------------------------------------------- helpers
def normalize(img: np.ndarray, lo: float = 1.0, hi: float = 99.8) -> np.ndarray:
    """Scale by the (lo, hi) percentiles to roughly [0, 1] (float32, not clipped)."""
    a, b = np.percentile(img, (lo, hi))
    return ((img.astype(np.float32) - a) / max(float(b - a), 1e-6)).astype(np.float32)


def pixel_features(img: np.ndarray, cfg: RFConfig) -> np.ndarray:
    """(H, W, F) float32 features of a percentile-normalised image."""
    return multiscale_basic_features(normalize(img), intensity=True, edges=True, texture=True,
                                     sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)


def pixel_classes(mask: np.ndarray, boundary: str = "inner") -> np.ndarray:
    """0 = background, 1 = interior, 2 = inner boundary of each instance (touching ones split)."""
    bnd = find_boundaries(mask, mode="inner")
    if boundary == "inner2":
        bnd = ndi.binary_dilation(bnd) & (mask > 0)
    elif boundary != "inner":
        raise ValueError(f"unknown boundary mode {boundary!r}")
    cls = (mask > 0).astype(np.uint8)
    cls[bnd] = 2
    return cls


def remove_small(lab: np.ndarray, min_size: int) -> np.ndarray:
    """Zero out labels with at most ``min_size`` pixels and relabel 1..n."""
    sizes = np.bincount(lab.ravel())
    keep = sizes > min_size
    keep[0] = False
    lut = np.zeros(len(sizes), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[lab]


def distance_watershed(fg: np.ndarray, min_distance: int) -> np.ndarray:
    """Split a binary foreground with a watershed on its distance transform."""
    dist = ndi.distance_transform_edt(fg)
    comps, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg)


def otsu_foreground(img: np.ndarray) -> np.ndarray:
    """Otsu threshold of the Gaussian-smoothed (sigma 1) image."""
    smooth = gaussian(img.astype(np.float32), sigma=1)
    return smooth > threshold_otsu(smooth)


def otsu_cc(img: np.ndarray) -> np.ndarray:
    """Otsu floor: connected components (8-connected) of the Otsu foreground."""
    return ndi.label(otsu_foreground(img), structure=np.ones((3, 3)))[0]


def otsu_watershed(img: np.ndarray, min_distance: int = 7) -> np.ndarray:
    """Otsu floor: distance-transform watershed of the Otsu foreground."""
    return distance_watershed(otsu_foreground(img), min_distance)


# ----------------------------------------------------------------------------- forest
def context_features(prob: np.ndarray, cfg: RFConfig) -> np.ndarray:
    """Auto-context features: the class probabilities and their Gaussian blurs."""
    blurred = [ndi.gaussian_filter(prob, (s, s, 0)) for s in cfg.ac_sigmas]
    return np.concatenate([prob, *blurred], axis=-1).astype(np.float32)


def sample_pixels(train: Sequence[Sample], cfg: RFConfig, rng: np.random.Generator,
                  stage1: RandomForestClassifier | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and 3-class targets of ``cfg.n_pixels`` pixels drawn uniformly over ``train``.

    Uniform over pixels keeps the natural class balance. With ``stage1`` the features are
    extended by :func:`context_features` of that forest's prediction (auto-context).
    """
    sizes = np.array([m.size for _, _, m in train], dtype=np.float64)
    counts = rng.multinomial(cfg.n_pixels, sizes / sizes.sum())
    xs, ys = [], []
    for (_, img, mask), k in zip(train, counts):
        if k == 0:
            continue
        idx = rng.choice(mask.size, size=min(int(k), mask.size), replace=False)
        feats = pixel_features(img, cfg)
        if stage1 is not None:
            feats = np.concatenate([feats, context_features(predict_proba(stage1, feats), cfg)],
                                   axis=-1)
        xs.append(feats.reshape(-1, feats.shape[-1])[idx])
        ys.append(pixel_classes(mask, cfg.boundary).ravel()[idx])
    return np.concatenate(xs), np.concatenate(ys)


def fit_forest(x: np.ndarray, y: np.ndarray, cfg: RFConfig, seed: int) -> RandomForestClassifier:
    """Fit the random forest (no class re-weighting: natural balance)."""
    rf = RandomForestClassifier(n_estimators=cfg.n_trees, max_depth=cfg.max_depth,
                                min_samples_leaf=cfg.min_samples_leaf, n_jobs=cfg.n_jobs,
                                random_state=seed)
    return rf.fit(x, y)


def predict_proba(rf: RandomForestClassifier, feats: np.ndarray) -> np.ndarray:
    """(H, W, n_classes) class probabilities for an image's feature stack."""
    flat = feats.reshape(-1, feats.shape[-1])
    return rf.predict_proba(flat).astype(np.float32).reshape(*feats.shape[:2], -1)


def foreground(prob: np.ndarray, cfg: RFConfig) -> np.ndarray:
    """Pixels whose probability of not being background exceeds ``cfg.fg_threshold``."""
    return prob[..., 0] < 1.0 - cfg.fg_threshold


def seg_fg_cc(prob: np.ndarray, cfg: RFConfig) -> np.ndarray:
    """Connected components (4-connected) of the foreground."""
    return remove_small(ndi.label(foreground(prob, cfg))[0], cfg.min_size)


def seg_fg_watershed(prob: np.ndarray, cfg: RFConfig) -> np.ndarray:
    """Distance-transform watershed of the foreground."""
    return remove_small(distance_watershed(foreground(prob, cfg), cfg.ws_min_distance),
                        cfg.min_size)


def seg_interior(prob: np.ndarray, cfg: RFConfig) -> np.ndarray:
    """3 classes: components of the thin interior are seeds, grown back over the foreground.

    Growing is a watershed on -p(interior) restricted to the foreground, which restores the
    boundary pixels the seeds lack (this matters for IoU).
    """
    fg = foreground(prob, cfg)
    seeds = ndi.label(fg & (prob[..., 1] > cfg.interior_threshold))[0]
    seeds = remove_small(seeds, cfg.min_size // 2)
    return remove_small(watershed(-prob[..., 1], seeds, mask=fg), cfg.min_size)


#: variant -> (forest whose probabilities it segments, segmenter)
VARIANTS: dict[str, tuple[str, Callable[[np.ndarray, RFConfig], np.ndarray]]] = {
    "rf2_cc": ("rf2", seg_fg_cc),
    "rf2_watershed": ("rf2", seg_fg_watershed),
    "rf3_interior": ("rf3", seg_interior),
    "rf3_watershed": ("rf3", seg_fg_watershed),
    "rf3ac_interior": ("rf3ac", seg_interior),
    "rf3ac_watershed": ("rf3ac", seg_fg_watershed),
}


def run_rf_reference(train: Sequence[Sample], val: Sequence[Sample], seed: int = 0,
                     cfg: RFConfig | None = None, otsu: bool = True,
                     verbose: bool = False) -> dict[str, dict[str, Any]]:
    """Fit the forests on ``train``, segment ``val``; :func:`evaluate_instances` per variant.

    Forests: ``rf2`` (background / nucleus), ``rf3`` (background / interior / boundary) and,
    with ``cfg.autocontext``, ``rf3ac``: an ilastik-style auto-context stage on top of ``rf3``.
    Each result also has ``train_s`` (pixel sampling and fits the variant depends on) and
    ``predict_s`` (features, forests and post-processing on all of ``val``).
    """
    cfg = cfg or RFConfig()
    rng = np.random.default_rng(seed)
    names = [n for n, _, _ in val]
    gts = [m for _, _, m in val]
    results: dict[str, dict[str, Any]] = {}

    if otsu:
        for key, fn in (("otsu_cc", otsu_cc), ("otsu_watershed", otsu_watershed)):
            with Timer() as t:
                preds = [fn(img) for _, img, _ in val]
            results[key] = {**evaluate_instances(zip(preds, gts), names=names),
                            "train_s": 0.0, "predict_s": t.seconds}

    fit_s: dict[str, float] = {}
    with Timer(verbose=verbose, label="sample training pixels + features") as t:
        x, y3 = sample_pixels(train, cfg, rng)
    with Timer(verbose=verbose, label="fit 2-class forest") as t2:
        rf2 = fit_forest(x, (y3 > 0).astype(np.uint8), cfg, seed)
    with Timer(verbose=verbose, label="fit 3-class forest") as t3:
        rf3 = fit_forest(x, y3, cfg, seed)
    del x, y3
    fit_s["rf2"], fit_s["rf3"] = t.seconds + t2.seconds, t.seconds + t3.seconds
    rf3ac: RandomForestClassifier | None = None
    if cfg.autocontext:
        with Timer(verbose=verbose, label="auto-context: sample + fit second stage") as tac:
            n_ac = len(train) if cfg.ac_images is None else min(cfg.ac_images, len(train))
            pick = rng.choice(len(train), size=n_ac, replace=False)
            x, y3 = sample_pixels([train[i] for i in pick], cfg, rng, stage1=rf3)
            rf3ac = fit_forest(x, y3, cfg, seed)
        del x, y3
        fit_s["rf3ac"] = fit_s["rf3"] + tac.seconds
    variants = {k: v for k, v in VARIANTS.items() if rf3ac is not None or v[0] != "rf3ac"}

    preds_by: dict[str, list[np.ndarray]] = {k: [] for k in variants}
    pred_s = dict.fromkeys(variants, 0.0)
    with Timer(verbose=verbose, label="predict val") as t_val:
        for _, img, _ in val:
            cost: dict[str, float] = {}
            probs: dict[str, np.ndarray] = {}
            with Timer() as t:
                feats = pixel_features(img, cfg)
            with Timer() as t2:
                probs["rf2"] = predict_proba(rf2, feats)
            with Timer() as t3:
                probs["rf3"] = predict_proba(rf3, feats)
            cost["rf2"], cost["rf3"] = t.seconds + t2.seconds, t.seconds + t3.seconds
            if rf3ac is not None:
                with Timer() as tac:
                    ctx = context_features(probs["rf3"], cfg)
                    probs["rf3ac"] = predict_proba(rf3ac, np.concatenate([feats, ctx], axis=-1))
                cost["rf3ac"] = cost["rf3"] + tac.seconds
            for key, (forest, seg) in variants.items():
                with Timer() as ts:
                    preds_by[key].append(seg(probs[forest], cfg))
                pred_s[key] += cost[forest] + ts.seconds
    for key, (forest, _) in variants.items():
        results[key] = {**evaluate_instances(zip(preds_by[key], gts), names=names),
                        "train_s": fit_s[forest], "predict_s": pred_s[key]}
    if verbose:
        print(f"val prediction, all forests: {t_val.seconds:.1f} s", flush=True)
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Plain-text table of AP@0.5, mAP, Dice and timings per variant."""
    head = f"{'method':<16}{'AP@0.5':>8}{'mAP':>8}{'Dice':>8}{'n_pred':>8}{'train s':>9}{'val s':>8}"
    lines = [head, "-" * len(head)]
    for key, r in results.items():
        lines.append(f"{key:<16}{r['ap50']:>8.3f}{r['map']:>8.3f}{r['dice']:>8.3f}"
                     f"{r['n_pred']:>8d}{r['train_s']:>9.1f}{r['predict_s']:>8.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the reference table for dsb2018_fluo val."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-pixels", type=int, default=RFConfig.n_pixels)
    parser.add_argument("--trees", type=int, default=RFConfig.n_trees)
    parser.add_argument("--max-depth", type=int, default=RFConfig.max_depth)
    parser.add_argument("--autocontext", action="store_true", help="add the rf3ac_* variants")
    args = parser.parse_args(argv)
    cfg = RFConfig(n_pixels=args.n_pixels, n_trees=args.trees, max_depth=args.max_depth,
                   autocontext=args.autocontext)
    print(machine_description())
    with Timer() as total:
        train, val = load_dsb("train"), load_dsb("val")
        print(f"dsb2018_fluo: {len(train)} train, {len(val)} val images; {cfg}", flush=True)
        res = run_rf_reference(train, val, seed=args.seed, cfg=cfg, verbose=True)
    gt = res["otsu_cc"]["n_gt"]
    print(f"\nobjects pooled over {len(val)} val images ({gt} nuclei); "
          f"train s = pixel sampling + fit, val s = features + forest + post-processing")
    print(format_table(res))
    print(f"total {total.seconds:.0f} s")


if __name__ == "__main__":
    main()
