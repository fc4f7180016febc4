"""Paint a few objects, click Train: how good is the model a few clicks give?

A simulated annotator (issue #28, item 5). Per data set and seed it takes ONE annotated image of
a kind (a fixed rule picks a different image per seed), builds the mask a user would paint for
each condition, trains through the package's default path (what ``napari-unet train images/
masks/ --out m/ --time-limit 120`` does: ``TrainRequest`` + ``train_config_for``, the default
starting model ``pretrained:nuclei`` + ``fine_tune_config``, ``Trainer(...).run()`` driven by
``run_to_end``) and scores AP@0.5 (objects pooled, ``evaluate_instances``) on the OTHER images of
that kind, at the same magnification (1x) and at twice it (2x: images upscaled with linear
interpolation, ground truth with nearest, centre-cropped to at most 512x640).

Conditions (a mask for the one annotated image; partial masks: 0 = not annotated, 1 =
background, 2.. = objects, trained with ``TrainRequest(task="partial")``):

* ``K=5``, ``K=10``, ``K=20``, ``K=50``: K objects painted (random order with the seed, or with
  ``--order uncertainty`` highest mean MC-dropout epistemic uncertainty of the starting model
  first, as "annotate next" would rank them), each with a background stroke: the ring of pixels
  2..5 px from it that are in no ground-truth object. Nothing else is annotated (partial).
* ``region``: a quarter of the image (its top-left) fully annotated: every object touching it
  painted whole, its other pixels background (1); outside it nothing (partial).
* ``full``: the whole image as a plain instance mask (0 = background): today's behaviour.
* ``naive-10``: the 10 objects of ``K=10`` as a plain instance mask, every unpainted pixel then
  background: what a user painting a few objects gets today.
* ``rf`` / ``rf-5`` / ``rf-20`` / ``rf-50`` / ``rf-full``: the ilastik-style random forest of
  ``reference_rf.py`` (3 classes, interior seeds grown over the foreground) fitted on the pixels of
  ``K=10`` / ``K=5`` / ``K=20`` / ``K=50`` (objects vs rings) or on the whole image; no U-Net.
* ``as-is``: the starting model ``pretrained:nuclei``, no training.
* ``fix-10``: corrections by the object: up to 10 of the objects the starting model gets wrong on the
  annotated image (no predicted object matches them at IoU > 0.5), in the random order, painted with
  their rings (partial). Its rows also record ``fixed_found``: the share of those objects the trained
  model gets right on the annotated image itself (the start: 0 by construction), i.e. whether the
  corrections survive training and the gentle blend (``--no-blend``: fine-tunes keep their own weights).

``--start-rule`` scores the U-Nets with the starting model's post-processing as it is (before
fine-tunes scaled its split height to the painted objects' size); ``--train-scale start`` trains
and scores them with the annotated image scaled so its painted objects have the starting model's
learned size (tried on EM, dropped). Both label the rows' commit.

Data sets: ``stained`` (dsb2018_other stained-colour: annotate a train image, score the val
split), ``brightfield`` (dsb2018_other brightfield-grey, same), ``em`` (isbi2012_em: instances =
4-connected components of the cell interiors; annotate one of sections 0-4, score sections
20-29), ``fluo`` (dsb2018_fluo val, the 256x256 group: annotate one, score the others; in-domain
for the starting model) and ``fluo-360`` (the 360x360 group). At most ``--score-limit`` images
are scored.

Budget: ``--seconds`` (the run's time limit, as a user gets it; default 120) or ``--steps``
(fixed optimiser steps: independent of the machine's load). Every row records the steps made.
Rows are written to ``--json`` after every run; ``--merge A.json B.json`` prints the tables of
several files (rows of different package commits stay apart); ``--plot out.png`` draws AP@0.5
against K.

    .venv/bin/python bench/bench_few_clicks.py --datasets stained --conditions K=10 full --seeds 0 1
    .venv/bin/python bench/bench_few_clicks.py --steps 20 --datasets stained --conditions full as-is rf
    .venv/bin/python bench/bench_few_clicks.py --merge bench/results/few_clicks*.json --plot few_clicks.png
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import napari_unet  # noqa: E402  (first: from PYTHONPATH, before reference_rf puts this checkout on sys.path)

from common import REPO, Sample, load_dsb, load_dsb_other, load_isbi, machine_description  # noqa: E402

RESULTS = REPO / "bench" / "results" / "few_clicks.json"
K_VALUES = (5, 10, 20, 50)
RF_AT = {"rf-5": 5, "rf": 10, "rf-20": 20, "rf-50": 50}  # the forest on the strokes of K objects
RF_OF_K = {k: c for c, k in RF_AT.items()}
CONDITIONS = (*(f"K={k}" for k in K_VALUES), "region", "full", "naive-10", "fix-10", *RF_AT, "rf-full", "as-is")
PARTIAL = {f"K={k}" for k in K_VALUES} | {"region", "fix-10"}  # trained with TrainRequest(task="partial")
DATASETS = ("stained", "brightfield", "em", "fluo", "fluo-360")
RING = (2, 5)  # background stroke: pixels this far (px, inclusive) from the object, in no object
MIN_SIZE = 10  # objects smaller than this are never picked for painting (too small to see)
MIN_OBJECTS = 20  # an image is a candidate for annotation when it holds this many pickable objects
MAX_2X = (512, 640)  # the 2x images are centre-cropped to at most this
PICK_SEED = 12345  # the fixed permutation of candidate images; seed s annotates the s-th of it


# ----------------------------------------------------------------------------- the annotator
def pickable(gt: np.ndarray, min_size: int = MIN_SIZE) -> np.ndarray:
    """Ids of the objects of ``gt`` with at least ``min_size`` pixels, ascending."""
    sizes = np.bincount(gt.ravel().astype(np.intp))
    ids = np.flatnonzero(sizes >= min_size)
    return ids[ids > 0]


def random_order(gt: np.ndarray, seed: int) -> list[int]:
    """The pickable objects in a random order fixed by ``seed``."""
    return [int(i) for i in np.random.default_rng(seed).permutation(pickable(gt))]


def ranked_order(gt: np.ndarray, score: np.ndarray) -> list[int]:
    """The pickable objects, highest mean ``score`` (e.g. epistemic uncertainty) over their pixels first."""
    ids = pickable(gt)
    means = ndi.mean(score, labels=gt, index=ids)
    return [int(ids[i]) for i in np.argsort(-np.asarray(means), kind="stable")]


def missed_by(gt: np.ndarray, labels: np.ndarray, order: Sequence[int]) -> list[int]:
    """The objects of ``order`` that ``labels`` (a model's prediction) gets wrong: no predicted object
    matches them at IoU > 0.5 (missed, merged with a neighbour or cut in pieces), in ``order``'s order."""
    from napari_unet.metrics import match_instances

    iou, _, gt_ids = match_instances(labels, gt, return_ids=True)
    best = dict(zip(gt_ids.tolist(), iou.max(axis=0).tolist() if iou.size else [0.0] * len(gt_ids)))
    return [i for i in order if best.get(i, 0.0) <= 0.5]


def found_share(labels: np.ndarray, gt: np.ndarray, ids: Sequence[int]) -> float | None:
    """Share of the objects ``ids`` of ``gt`` that ``labels`` matches at IoU > 0.5 (None: no ids)."""
    if not ids:
        return None
    return 1.0 - len(missed_by(gt, labels, ids)) / len(ids)


def ring_of(gt: np.ndarray, obj: int, ring: tuple[int, int] = RING) -> tuple[tuple[slice, slice], np.ndarray]:
    """(box, mask within box) of the pixels ``ring[0]..ring[1]`` px from object ``obj`` and in no object."""
    ys, xs = np.nonzero(gt == obj)
    pad = ring[1] + 1
    box = (slice(max(ys.min() - pad, 0), ys.max() + pad + 1), slice(max(xs.min() - pad, 0), xs.max() + pad + 1))
    crop = gt[box]
    dist = ndi.distance_transform_edt(crop != obj)
    return box, (dist >= ring[0]) & (dist <= ring[1]) & (crop == 0)


def paint_objects(gt: np.ndarray, ids: Sequence[int], ring: tuple[int, int] = RING) -> np.ndarray:
    """Partial mask: objects ``ids`` painted as 2, 3, ... (in that order), each with its
    background ring (1); every other pixel 0 (not annotated)."""
    out = np.zeros(gt.shape, np.uint16)
    for obj in ids:
        box, sel = ring_of(gt, obj, ring)
        out[box][sel] = 1
    for new, obj in enumerate(ids, start=2):
        out[gt == obj] = new
    return out


def paint_naive(gt: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Plain instance mask of objects ``ids`` (1, 2, ...): every unpainted pixel means background."""
    out = np.zeros(gt.shape, np.uint16)
    for new, obj in enumerate(ids, start=1):
        out[gt == obj] = new
    return out


def quarter(shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The top-left quarter of an image."""
    return slice(0, shape[0] // 2), slice(0, shape[1] // 2)


def paint_region(gt: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """Partial mask of one fully annotated region: inside ``box`` every object touching it painted
    whole (2, 3, ...) and the other pixels background (1); outside it nothing (0)."""
    out = np.zeros(gt.shape, np.uint16)
    inside = np.zeros(gt.shape, bool)
    inside[box] = True
    out[inside & (gt == 0)] = 1
    ids = np.unique(gt[box])
    for new, obj in enumerate(ids[ids > 0], start=2):
        out[gt == obj] = new
    return out


def mask_for(condition: str, gt: np.ndarray, order: Sequence[int]) -> tuple[np.ndarray, str]:
    """The mask the annotator paints for ``condition`` and the user task it is trained as."""
    if condition.startswith("K="):
        return paint_objects(gt, order[:int(condition[2:])]), "partial"
    if condition == "fix-10":  # ``order``: the objects the starting model gets wrong (``missed_by``)
        return paint_objects(gt, order[:10]), "partial"
    if condition == "region":
        return paint_region(gt, quarter(gt.shape)), "partial"
    if condition == "naive-10":
        return paint_naive(gt, order[:10]), "instances"
    if condition == "full":
        return gt.astype(np.uint16), "instances"
    raise ValueError(f"{condition!r} paints no U-Net mask")


def painted(mask: np.ndarray, task: str) -> tuple[int, int]:
    """(objects painted, annotated pixels) of a mask."""
    if task == "partial":
        return len(np.unique(mask[mask >= 2])), int((mask > 0).sum())
    return len(np.unique(mask[mask > 0])), int(mask.size)


# ----------------------------------------------------------------------------- data
def em_instances(mask: np.ndarray) -> np.ndarray:
    """ISBI 2012 labels (255 = cell interior, 0 = membrane) as instances: 4-connected interiors."""
    return ndi.label(mask == 255)[0].astype(np.uint16)


def candidates(pool: Sequence[Sample]) -> list[Sample]:
    """Images that can be annotated (>= MIN_OBJECTS pickable objects), by name."""
    return sorted((s for s in pool if len(pickable(s[2])) >= MIN_OBJECTS), key=lambda s: s[0])


def pick(pool: Sequence[Sample], seed: int) -> Sample:
    """The annotated image of ``seed``: the seed-th of a fixed permutation of the candidates."""
    cands = candidates(pool)
    if not cands:
        raise ValueError(f"no image holds {MIN_OBJECTS} objects of >= {MIN_SIZE} px")
    return cands[int(np.random.default_rng(PICK_SEED).permutation(len(cands))[seed % len(cands)])]


def fluo_group(shape: tuple[int, int]) -> list[Sample]:
    return [s for s in load_dsb("val") if s[1].shape[:2] == shape]


def load_dataset(name: str, seed: int, score_limit: int) -> tuple[Sample, list[Sample]]:
    """(annotated image, images scored) of data set ``name`` for ``seed``."""
    if name in ("stained", "brightfield"):
        kind = {"stained": "stained-colour", "brightfield": "brightfield-grey"}[name]
        annotated = pick(load_dsb_other(kind, "train"), seed)
        return annotated, load_dsb_other(kind, "val", score_limit)
    if name == "em":
        em = [(n, img, em_instances(m)) for n, img, m in load_isbi()]
        return pick(em[:5], seed), em[20:30][:score_limit]
    if name in ("fluo", "fluo-360"):
        group = fluo_group((256, 256) if name == "fluo" else (360, 360))
        annotated = pick(group, seed)
        return annotated, [s for s in group if s[0] != annotated[0]][:score_limit]
    raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")


def centre_crop(a: np.ndarray, size: tuple[int, int] = MAX_2X) -> np.ndarray:
    """The centre of ``a`` (H, W[, C]) at most ``size``."""
    y0, x0 = max((a.shape[0] - size[0]) // 2, 0), max((a.shape[1] - size[1]) // 2, 0)
    return a[y0:y0 + size[0], x0:x0 + size[1]]


def magnified(image: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image upscaled 2x (linear) and ground truth 2x (nearest), both centre-cropped to MAX_2X."""
    zoom = (2, 2, 1) if image.ndim == 3 else (2, 2)
    big = ndi.zoom(image.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
    big = np.clip(np.round(big), 0, 255).astype(image.dtype) if image.dtype == np.uint8 else big.astype(image.dtype)
    return centre_crop(big), centre_crop(np.repeat(np.repeat(gt, 2, axis=0), 2, axis=1))


# ----------------------------------------------------------------------------- package path
def package_commit() -> str:
    """Short commit (``+dirty`` when modified) of the checkout ``napari_unet`` was imported from."""
    where = Path(napari_unet.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "napari_unet"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def partial_supported() -> bool:
    """Whether this package knows the partial instance task: ``TrainRequest(task="partial")`` gives
    ``TrainConfig(task="instances", sparse=True)``."""
    from napari_unet.workflows.train_request import TrainRequest, train_config_for
    from napari_unet.errors import UserError

    mask = np.array([[0, 1], [2, 2]], np.uint16)
    try:
        cfg = train_config_for(TrainRequest(task="partial"), [mask.astype(np.uint8)], [mask])
    except UserError:
        return False
    return cfg.task == "instances" and cfg.sparse


def starting_model(task: str):
    """The default starting model of ``task`` (``napari-unet train`` without ``--init``)."""
    from napari_unet.workflows.model_spec import start_model

    return start_model(None, task)


def train(image: np.ndarray, mask: np.ndarray, task: str, name: str, seed: int, args: argparse.Namespace):
    """``napari-unet train`` on one (image, mask) pair: the returned bundle and the run's messages."""
    from napari_unet.workflows.train_request import TrainRequest, train_config_for
    from napari_unet.events import Message, run_to_end
    from napari_unet.pretrained import fine_tune_config
    from napari_unet.training.engine import Trainer

    init = starting_model(task)
    request = TrainRequest(task=task, time_limit=None if args.steps else args.seconds, steps=args.steps,
                           seed=seed, threads=args.threads)
    cfg = train_config_for(request, [image], [mask])
    if init is not None:
        cfg = fine_tune_config(cfg, init)
    if args.no_guard:
        cfg = replace(cfg, fine_tune_guard=False)
    if args.no_blend:
        cfg = replace(cfg, fine_tune_keep=1.0)
    if args.unannotated_background is not None:
        cfg = replace(cfg, loss=replace(cfg.loss, unannotated_background=args.unannotated_background))
    messages: list[str] = []
    bundle = run_to_end(Trainer([(image, mask)], cfg, init=init, names=[name]).run(),
                        lambda e: messages.append(e.text) if isinstance(e, Message) else None)
    return bundle, messages


def mc_epistemic(bundle, image: np.ndarray, samples: int = 8) -> np.ndarray:
    """Epistemic uncertainty (MC dropout) of ``bundle`` on ``image``: what "annotate next" ranks by."""
    from napari_unet.config import PredictConfig
    from napari_unet.inference.predict import predict_image

    return predict_image(bundle, image, PredictConfig(mc_samples=samples)).uncertainty["epistemic"]


def unet_segmenter(bundle) -> Callable[[np.ndarray, str], np.ndarray]:
    """``image, diameter -> labels`` through the package's prediction (``PredictConfig.diameter``)."""
    from napari_unet.config import PredictConfig
    from napari_unet.inference.predict import predict_image

    return lambda image, diameter: predict_image(bundle, image, PredictConfig(diameter=diameter)).labels


def trained_bundle(image: np.ndarray, mask: np.ndarray, task: str, name: str, seed: int, args: argparse.Namespace,
                   folder: Path | None):
    """``train``'s bundle and messages; with ``--models`` the folder is reused when it exists (the
    same trained model scored again, e.g. with another ``--diameter``), else written."""
    from dataclasses import replace as dc_replace

    from napari_unet.models.bundle import load_bundle, save_bundle

    if folder is not None and (folder / "model.json").exists():
        return load_bundle(folder), [f"reused {folder}"]
    bundle, messages = train(image, mask, task, name, seed, args)
    if folder is not None:
        save_bundle(dc_replace(bundle, resume=None), folder)
    return bundle, messages


# ----------------------------------------------------------------------------- random forest
def rf_features(image: np.ndarray, cfg) -> np.ndarray:
    """``reference_rf.pixel_features``, colour images with their channels kept (ilastik does)."""
    from skimage.feature import multiscale_basic_features

    import reference_rf

    if image.ndim == 2:
        return reference_rf.pixel_features(image, cfg)
    return multiscale_basic_features(reference_rf.normalize(image), intensity=True, edges=True, texture=True,
                                     sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, channel_axis=-1)


def rf_targets(mask: np.ndarray, partial: bool, boundary: str) -> np.ndarray:
    """Per pixel class of ``reference_rf`` (0 background, 1 interior, 2 boundary), -1 = not annotated."""
    import reference_rf

    objects = np.where(mask >= 2, mask, 0) if partial else mask
    cls = reference_rf.pixel_classes(objects, boundary).astype(np.int8)
    if partial:
        cls[mask == 0] = -1
    return cls


def fit_rf(image: np.ndarray, mask: np.ndarray, partial: bool, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """The reference's 3-class forest fitted on the annotated pixels (at most ``n_pixels`` of
    them, drawn uniformly); returns its segmenter (``seg_interior``: its best variant)."""
    import reference_rf

    cfg = reference_rf.RFConfig()
    y = rf_targets(mask, partial, cfg.boundary).ravel()
    idx = np.flatnonzero(y >= 0)
    rng = np.random.default_rng(seed)
    if idx.size > cfg.n_pixels:
        idx = rng.choice(idx, size=cfg.n_pixels, replace=False)
    feats = rf_features(image, cfg)
    forest = reference_rf.fit_forest(feats.reshape(-1, feats.shape[-1])[idx], y[idx], cfg, seed)

    def segment(img: np.ndarray) -> np.ndarray:
        prob = reference_rf.predict_proba(forest, rf_features(img, cfg))
        if prob.shape[-1] < 3:  # a class never annotated (e.g. no interior): pad its probability with 0
            full = np.zeros((*prob.shape[:2], 3), np.float32)
            full[..., forest.classes_.astype(int)] = prob
            prob = full
        return reference_rf.seg_interior(prob, cfg)

    return segment


# ----------------------------------------------------------------------------- one run
def score(segment: Callable[[np.ndarray], np.ndarray], images: Sequence[Sample]) -> dict[str, float]:
    from napari_unet.metrics import evaluate_instances

    r = evaluate_instances([(segment(img), gt) for _, img, gt in images])
    return {"ap50": float(r["ap50"]), "ap75": float(r["ap75"]), "n_pred": int(r["n_pred"]), "n_gt": int(r["n_gt"])}


def run_condition(condition: str, annotated: Sample, scored: dict[str, list[Sample]], order: list[int],
                  seed: int, args: argparse.Namespace,
                  dataset: str = "") -> tuple[dict[str, Any], Callable[[np.ndarray, str], np.ndarray]]:
    """Train (or fit) one condition; (what to record, its segmenter: image, diameter -> labels)."""
    name, image, gt = annotated
    info: dict[str, Any] = {"steps": 0, "seconds": 0.0}
    began = time.perf_counter()
    if condition == "as-is":
        segment = unet_segmenter(starting_model("instances"))
        info.update(painted=0, annotated_px=0)
    elif condition in RF_AT or condition == "rf-full":
        partial = condition in RF_AT
        mask = paint_objects(gt, order[:RF_AT[condition]]) if partial else gt
        forest = fit_rf(image, mask, partial, seed)
        segment = lambda img, diameter: forest(img)  # noqa: E731  (no object-size rescaling)
        info.update(zip(("painted", "annotated_px"), painted(mask, "partial" if partial else "instances")))
        info["seconds"] = round(time.perf_counter() - began, 1)
    else:
        mask, task = mask_for(condition, gt, order)
        factor = train_factor(mask, task, args.train_scale)
        if factor != 1:
            image, mask = scaled_pair(image, mask, factor)
        folder = args.models / f"{dataset}-{condition}-s{seed}" if args.models else None
        bundle, messages = trained_bundle(image, mask, task, name, seed, args, folder)
        training = bundle.meta["training"]
        info.update(zip(("painted", "annotated_px"), painted(mask, task)))
        info.update(steps=int(training["steps"]), seconds=float(training["seconds"]),
                    setup_seconds=training.get("setup_seconds"), task=task,
                    guard=(training.get("fine_tune_guard") or {}).get("kept"),  # None: the guard did not run
                    messages=messages)
        info["train_factor"] = round(factor, 3)
        if args.start_rule:  # the post-processing fine-tunes carried before it followed the object size
            bundle = replace(bundle, meta={**bundle.meta, "postprocess": dict(starting_model("instances").postprocess)})
        segment = unet_segmenter(bundle) if factor == 1 else scaled_segmenter(bundle, factor)
        if condition == "fix-10":  # are the corrections still there after training (and the blend)?
            fixed = order[:10]
            info.update(fixed_found=found_share(segment(annotated[1], "off"), gt, fixed), fixed=len(fixed),
                        fine_tune_keep=training.get("fine_tune_keep"))
    return info, segment


def train_factor(mask: np.ndarray, task: str, how: str) -> float:
    """``--train-scale``: the factor the annotated image is trained at (1: as it is). ``start``: the
    one that brings the painted objects to the starting model's learned size (``size.factor_for``).
    Tried on EM and dropped (docs/experiments.md, "EM cells: training at the start's object size")."""
    from napari_unet.inference import size

    if how == "off":
        return 1.0
    if how != "start":
        return float(how)
    objects = np.where(mask >= 2, mask, 0) if task == "partial" else mask
    painted_size = size.learned_size([objects])
    learned = size.learned_diameter(starting_model("instances").meta)
    return size.factor_for(learned, painted_size["diameter"]) if painted_size and learned else 1.0


def scaled_pair(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    from napari_unet.inference import size

    scaled = size.rescale_image(image, factor, [0, 1])
    if image.dtype == np.uint8:
        scaled = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return scaled, size.resize_labels(mask, scaled.shape[:2])


def scaled_segmenter(bundle, factor: float) -> Callable[[np.ndarray, str], np.ndarray]:
    """A model trained at ``factor``: every image predicted scaled by it (diameter off), labels back."""
    from napari_unet.config import PredictConfig
    from napari_unet.inference import size
    from napari_unet.inference.predict import predict_image

    def segment(image: np.ndarray, diameter: str) -> np.ndarray:
        small, _ = scaled_pair(image, np.zeros(image.shape[:2], np.uint16), factor)
        cfg = PredictConfig(diameter="off")
        labels = predict_image(bundle, small, replace(cfg, min_size=int(round(cfg.min_size * factor**2)))).labels
        return size.resize_labels(labels, image.shape[:2])

    return segment


def save(rows: list[dict[str, Any]], out: Path, header: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")
    tmp.replace(out)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    commit = package_commit() + ("-noguard" if args.no_guard else "") + ("-noblend" if args.no_blend else "")
    # (each variant its own group in the tables)
    if args.unannotated_background is not None:
        commit += f"-ubg{args.unannotated_background:g}"
    if args.train_scale != "off":
        commit += f"-scale{args.train_scale}"
    if args.start_rule:
        commit += "-startrule"
    partial_ok = partial_supported()
    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:g} s"
    header = {"machine": machine_description(), "package": str(Path(napari_unet.__file__).parent), "commit": commit,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    print(header["machine"], flush=True)
    print(f"napari_unet from {header['package']} ({commit}); budget {budget}; order {args.order}"
          f"{'' if partial_ok else '; no partial task in this package: K=* and region are skipped'}", flush=True)
    out = args.json or RESULTS
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        for seed in args.seeds:
            annotated, val = load_dataset(dataset, seed, args.score_limit)
            scored = {"1x": val, "2x": [(n, *magnified(img, gt)) for n, img, gt in val]}
            name, image, gt = annotated
            print(f"\n{dataset} seed {seed}: annotate {name} {image.shape} ({len(pickable(gt))} objects); "
                  f"score {len(val)} images", flush=True)
            if args.order == "uncertainty":
                order = ranked_order(gt, mc_epistemic(starting_model("instances"), image))
            else:
                order = random_order(gt, seed)
            fix_order = None
            if "fix-10" in args.conditions:  # the annotator corrects what the starting model gets wrong
                start = unet_segmenter(starting_model("instances"))(image, "off")
                fix_order = missed_by(gt, start, order)
                print(f"  the starting model gets {len(fix_order)} of the {len(order)} objects wrong", flush=True)
            for condition in args.conditions:
                if condition in PARTIAL and not partial_ok:
                    continue
                if condition == "fix-10" and not fix_order:  # a start with no mistake here: nothing to correct
                    continue
                load = os.getloadavg()[0]
                info, segment = run_condition(condition, annotated, scored,
                                              fix_order if condition == "fix-10" else order, seed, args, dataset)
                diameters = ["off"] if condition in RF_AT or condition == "rf-full" else args.diameter
                for mag, images, diameter in [(m, i, d) for m, i in scored.items() for d in diameters]:
                    t0 = time.perf_counter()
                    s = score(lambda img: segment(img, diameter), images)
                    row = {"dataset": dataset, "condition": condition, "seed": seed, "magnification": mag,
                           "diameter": diameter,
                           **s, **info, "order": args.order, "budget": budget, "image": name,
                           "n_scored": len(images), "score_s": round(time.perf_counter() - t0, 1),
                           "load1": round(load, 2), "commit": commit}
                    rows.append(row)
                    print(f"  {dataset:11s} {condition:9s} seed {seed} {mag} diameter {diameter}: AP@0.5 {s['ap50']:.3f} "
                          f"({s['n_pred']} pred / {s['n_gt']} gt), {info['steps']} steps, {info['seconds']:.0f} s, "
                          f"{info['painted']} objects painted, load {load:.1f}"
                          + (", the guard kept the starting model" if info.get("guard") == "start model" else "")
                          + (f", corrected objects found {info['fixed_found']:.2f} of {info['fixed']}, keep "
                             f"{info['fine_tune_keep']}" if info.get("fixed_found") is not None else ""),
                          flush=True)
                save(rows, out, header)
    print(f"\nwrote {out}")
    return rows


# ----------------------------------------------------------------------------- tables
def _key_order(rows: list[dict[str, Any]]) -> list[tuple]:
    """(commit, budget, order, dataset, condition, magnification) groups in a stable order."""
    seen: dict[tuple, None] = {}
    cond_rank = {c: i for i, c in enumerate(CONDITIONS)}
    for r in rows:
        seen[(r["commit"], r["budget"], r["order"], r["dataset"], r["condition"], r["magnification"],
              diameter_of(r))] = None
    return sorted(seen, key=lambda k: (k[0], k[1], k[2], DATASETS.index(k[3]) if k[3] in DATASETS else 99,
                                       cond_rank.get(k[4], 99), k[5], k[6]))


def diameter_of(row: dict[str, Any]) -> str:
    """The ``--diameter`` a row was scored with (rows from before it existed: "off", no rescaling)."""
    return str(row.get("diameter", "off"))


def mean_ap(rows: list[dict[str, Any]], **match: Any) -> float | None:
    sel = [r["ap50"] for r in rows if all(r[k] == v for k, v in match.items())]
    return float(np.mean(sel)) if sel else None


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'commit':12s} {'budget':>9s} {'order':11s} {'dataset':11s} {'condition':9s} {'mag':3s} {'diam':>5s} "
            f"{'AP@0.5 mean ± sd':>17s} {'n':>2s} {'steps mean [min-max]':>21s} {'train s':>7s} {'painted':>7s} "
            f"{'start kept':>10s}")
    lines = [head, "-" * len(head)]
    for key in _key_order(rows):
        sel = [r for r in rows if (r["commit"], r["budget"], r["order"], r["dataset"], r["condition"],
                                   r["magnification"], diameter_of(r)) == key]
        ap = np.array([r["ap50"] for r in sel])
        steps = [r["steps"] for r in sel]
        sd = ap.std(ddof=1) if len(ap) > 1 else 0.0
        lines.append(f"{key[0]:12s} {key[1]:>9s} {key[2]:11s} {key[3]:11s} {key[4]:9s} {key[5]:3s} {key[6]:>5s} "
                     f"{ap.mean():9.3f} ± {sd:.3f} {len(ap):2d} "
                     f"{np.mean(steps):8.0f} [{min(steps):4d}-{max(steps):4d}] "
                     f"{np.mean([r['seconds'] for r in sel]):7.0f} {np.mean([r['painted'] for r in sel]):7.1f} "
                     f"{sum(r.get('guard') == 'start model' for r in sel):10d}")
    return "\n".join(lines)


def ratio_lines(rows: list[dict[str, Any]]) -> str:
    """The issue's ratios (of means over seeds), per commit/budget/order/data set."""
    lines = []
    groups = sorted({(r["commit"], r["budget"], r["order"], r["dataset"], diameter_of(r)) for r in rows
                     if not r["condition"].startswith("rf")},
                    key=lambda g: (g[0], g[1], g[2], DATASETS.index(g[3]) if g[3] in DATASETS else 99, g[4]))
    for commit, budget, order, dataset, diameter in groups:
        sel = [r for r in rows if (r["commit"], r["budget"], r["order"], r["dataset"]) == (commit, budget, order, dataset)
               and (diameter_of(r) == diameter or r["condition"].startswith("rf"))]
        parts = []

        def ratio(label: str, a: float | None, b: float | None) -> None:
            if a is not None and b is not None:
                parts.append(f"{label} {a / b:.2f}" if b > 0 else f"{label} inf ({a:.3f}/0)")

        for mag in ("1x", "2x"):
            ratio(f"K=10/full@{mag}", mean_ap(sel, condition="K=10", magnification=mag),
                  mean_ap(sel, condition="full", magnification=mag))
        for k in K_VALUES:
            ratio(f"K={k}/{RF_OF_K[k]}", mean_ap(sel, condition=f"K={k}", magnification="1x"),
                  mean_ap(sel, condition=RF_OF_K[k], magnification="1x"))
        ratio("full@2x/full@1x", mean_ap(sel, condition="full", magnification="2x"),
              mean_ap(sel, condition="full", magnification="1x"))
        if parts:
            lines.append(f"{commit} {budget} {order} {dataset} diameter {diameter}: " + ", ".join(parts))
    return "\n".join(lines)


def baseline_lines(rows: list[dict[str, Any]], baseline: str) -> str:
    """Each other commit's conditions against ``full`` of the ``baseline`` commit ("today's figure"),
    per data set, budget and magnification: mean AP@0.5 ratios, today's mean over the same seeds."""
    lines = []
    others = sorted({(r["commit"], r["budget"], r["order"], r["dataset"]) for r in rows if r["commit"] != baseline})
    for commit, budget, order, dataset in others:
        seeds = sorted({r["seed"] for r in rows if (r["commit"], r["budget"], r["order"], r["dataset"])
                        == (commit, budget, order, dataset)})
        for mag in ("1x", "2x"):
            sel = [r["ap50"] for r in rows if r["commit"] == baseline and r["budget"] == budget
                   and r["dataset"] == dataset and r["condition"] == "full" and r["magnification"] == mag
                   and r["seed"] in seeds]
            today = float(np.mean(sel)) if sel else None
            if not today:
                continue
            aps = {c: mean_ap(rows, commit=commit, budget=budget, order=order, dataset=dataset, condition=c,
                              magnification=mag) for c in CONDITIONS}
            parts = [f"{c} {ap / today:.2f}" for c, ap in aps.items() if ap is not None]
            lines.append(f"{commit} {budget} {order} {dataset} {mag} / full@{baseline} seeds {seeds} ({today:.3f}): "
                         + ", ".join(parts))
    return "\n".join(lines)


def print_tables(rows: list[dict[str, Any]], baseline: str | None = None) -> None:
    print("\nAP@0.5 (objects pooled) over seeds; steps = optimiser steps per run (load shows here)")
    print(summary_table(rows))
    ratios = ratio_lines(rows)
    if ratios:
        print("\nratios of mean AP@0.5 (1x unless marked)")
        print(ratios)
    fixes = [r for r in rows if r.get("fixed_found") is not None and r["magnification"] == "1x"]
    if fixes:
        print("\ncorrections kept: share of the corrected objects the trained model gets right on the annotated image")
        for r in sorted(fixes, key=lambda r: (r["commit"], r["dataset"], r["seed"])):
            print(f"  {r['commit']:16s} {r['dataset']:11s} seed {r['seed']}: {r['fixed_found']:.2f} of {r['fixed']}, "
                  f"fine_tune_keep {r['fine_tune_keep']}, AP@0.5 on the others {r['ap50']:.3f}")
    if baseline:
        print(f"\nagainst today's figure: mean AP@0.5 / mean AP@0.5 of full at {baseline}")
        print(baseline_lines(rows, baseline) or "(no rows of that commit)")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """AP@0.5 at 1x against painted objects K, a line per data set; the forest on the same strokes
    (dotted, open markers), full (dashed) and as-is (dash-dot) in the line's colour. Per data set one (commit, budget, order): that of the
    last row with a K condition (files merged later win), else of its last row; per condition the
    rows of the last commit that ran it (so the forest or K=5 measured at another commit can join)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    one = [r for r in rows if r["magnification"] == "1x"]
    shown: set[str] = set()
    for i, dataset in enumerate(d for d in DATASETS if any(r["dataset"] == d for r in one)):
        sel = [r for r in one if r["dataset"] == dataset]
        last = ([r for r in sel if r["condition"].startswith("K=")] or sel)[-1]
        same = ("budget", "order")
        sel = [r for r in sel if all(r[k] == last[k] for k in same)]
        newest = {r["condition"]: r["commit"] for r in sel}  # the last commit that ran each condition
        sel = [r for r in sel if r["commit"] == newest[r["condition"]]]
        shown.add(f"{last['budget']}, {last['order']} order")
        colour = f"C{i}"
        ks = [k for k in K_VALUES if mean_ap(sel, condition=f"K={k}") is not None]
        if ks:
            ax.plot(ks, [mean_ap(sel, condition=f"K={k}") for k in ks], "o-", color=colour, label=dataset)
        rf_ks = [k for k in K_VALUES if mean_ap(sel, condition=RF_OF_K[k]) is not None]
        if rf_ks:
            ax.plot(rf_ks, [mean_ap(sel, condition=RF_OF_K[k]) for k in rf_ks], "o:", color=colour,
                    markerfacecolor="none", label=f"{dataset} random forest")
        for cond, style, what in (("full", "--", "fully annotated"), ("as-is", "-.", "untrained start")):
            value = mean_ap(sel, condition=cond)
            if value is not None:
                ax.hlines(value, K_VALUES[0], K_VALUES[-1], colors=colour, linestyles=style, label=f"{dataset} {what}")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(K_VALUES, [str(k) for k in K_VALUES])
    ax.set_xlabel("objects painted (K, each with a background ring)")
    ax.set_ylabel("AP@0.5 on the other images")
    ax.set_ylim(0, 1)
    ax.set_title("one annotated image; " + "; ".join(sorted(shown)), fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    from napari_unet.config import PredictConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["stained"], choices=DATASETS)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=120.0, help="time limit of each run (default 120)")
    budget.add_argument("--steps", type=int, default=None, help="fixed optimiser steps instead of --seconds")
    parser.add_argument("--order", choices=("random", "uncertainty"), default="random",
                        help="which objects the annotator paints first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-guard", action="store_true",
                        help="fine-tuned models are kept whatever the guard would say (what the guard costs or saves)")
    parser.add_argument("--no-blend", action="store_true",
                        help="fine-tunes keep their own weights (TrainConfig.fine_tune_keep = 1: no blend back "
                             "towards the start)")
    parser.add_argument("--unannotated-background", type=float, default=None, metavar="W",
                        help="LossConfig.unannotated_background of partial runs (default: the package's)")
    parser.add_argument("--diameter", nargs="+", default=[str(PredictConfig.diameter)], metavar="D",
                        help="PredictConfig.diameter(s) each U-Net is scored with: auto, off or pixels "
                             "(default: the package's, %(default)s)")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="save each trained model to DIR/<dataset>-<condition>-s<seed>/ and reuse it when "
                             "there (score the same models again, e.g. with another --diameter)")
    parser.add_argument("--train-scale", default="off", metavar="HOW",
                        help="train (and score) the U-Net with the annotated image scaled: off, start (its painted "
                             "objects to the starting model's learned size) or a factor; tried and dropped")
    parser.add_argument("--start-rule", action="store_true",
                        help="score U-Nets with the starting model's post-processing as it is (no split height "
                             "scaled to the objects' size: the default before it)")
    parser.add_argument("--score-limit", type=int, default=16, help="images scored per data set")
    parser.add_argument("--json", type=Path, default=None, help=f"rows go here (default {RESULTS})")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="only print the tables of these files")
    parser.add_argument("--baseline", default=None, metavar="COMMIT",
                        help="also print every condition against full of this commit (e.g. a76456b)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw AP@0.5 against K to this PNG")
    args = parser.parse_args(argv)
    if args.merge:
        rows = [r for p in args.merge for r in json.loads(p.read_text())["rows"]]
        print(f"{len(rows)} rows from {len(args.merge)} file(s)")
    else:
        rows = run_all(args)
    print_tables(rows, args.baseline)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
