"""Segmentation metrics: instance matching (AP at IoU thresholds), pixel scores, Rand error.

Everything is computed from a contingency table of label pairs (one ``bincount`` or ``unique``
over the pixels), never with per-object loops over whole images. Pure NumPy/SciPy: no torch.

Conventions
-----------
* Instance images are non-negative integer label images; 0 is background, the other ids need
  not be consecutive.
* A prediction matches a ground-truth object at threshold ``t`` when their IoU is *strictly*
  greater than ``t``; AP@t = TP / (TP + FP + FN). An image with no objects in either input
  scores AP = 1 (nothing to find, nothing wrongly found).
* Pooled ("objects pooled") scores sum TP, FP and FN over all images before dividing.
* A partial ground truth marks pixels nobody annotated with ``UNANNOTATED`` (-1). A predicted
  object lying mostly (more than half its pixels) there is neither matched nor counted as a
  false positive: nobody said what is there. The other predictions keep all their pixels, so a
  prediction that merges a painted object with its unpainted neighbour still misses it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import maximum_bipartite_matching

__all__ = [
    "DEFAULT_THRESHOLDS",
    "UNANNOTATED",
    "drop_unannotated",
    "contingency",
    "match_instances",
    "majority_cover",
    "instance_scores",
    "ap50",
    "evaluate_instances",
    "evaluate_semantic",
    "rand_error",
    "write_per_image_csv",
]

#: IoU thresholds 0.50, 0.55, ..., 0.95 (the DSB 2018 / COCO-style range).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
UNANNOTATED = -1  # ground-truth value of pixels nobody annotated (partial annotations)


# ----------------------------------------------------------------------------- contingency
def _as_labels(x: np.ndarray) -> np.ndarray:
    """Return ``x`` as a flat non-negative integer array (bool and integral floats accepted)."""
    a = np.asarray(x)
    if a.dtype == bool:
        return a.ravel().astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError("label images must hold integers")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise ValueError(f"label images must be integer arrays, got {a.dtype}")
    if a.size and a.dtype.kind == "i" and a.min() < 0:
        raise ValueError("label images must be non-negative")
    return a.ravel()


def _dense_codes(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to codes 0..n-1 with background 0 always first; returns ``(ids, codes)``."""
    mx = int(flat.max()) if flat.size else 0
    if mx <= max(1 << 16, 4 * flat.size):
        present = np.bincount(flat.astype(np.intp, copy=False), minlength=mx + 1) > 0
        present[0] = True
        ids = np.flatnonzero(present)
        lut = np.cumsum(present, dtype=np.intp) - 1
        return ids, lut[flat]
    ids, codes = np.unique(flat, return_inverse=True)
    codes = codes.ravel().astype(np.intp, copy=False)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
        codes = codes + 1
    return ids, codes


def contingency(
    a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse joint histogram of two label images of the same shape.

    Returns ``(ids_a, ids_b, rows, cols, counts)``: ``ids_*`` are the sorted labels (index 0 is
    always background 0, present or not) and ``counts[k]`` pixels carry label
    ``ids_a[rows[k]]`` in ``a`` and ``ids_b[cols[k]]`` in ``b``. Only non-zero cells are listed.
    """
    if np.shape(a) != np.shape(b):
        raise ValueError(f"shape mismatch: {np.shape(a)} vs {np.shape(b)}")
    ids_a, ca = _dense_codes(_as_labels(a))
    ids_b, cb = _dense_codes(_as_labels(b))
    na, nb = len(ids_a), len(ids_b)
    key = ca.astype(np.int64) * nb + cb
    if na * nb <= 2 * key.size + 4096:
        full = np.bincount(key, minlength=na * nb)
        cells = np.flatnonzero(full)
        counts = full[cells]
    else:
        cells, counts = np.unique(key, return_counts=True)
    return ids_a, ids_b, cells // nb, cells % nb, counts.astype(np.int64)


def drop_unannotated(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A partial ground truth's scoring inputs: predicted objects lying mostly on ``UNANNOTATED``
    pixels erased, and those pixels made background of ``gt``. A complete ``gt`` passes as is."""
    gt = np.asarray(gt)
    if gt.dtype.kind != "i" or gt.size == 0 or gt.min() >= 0:
        return pred, gt
    unannotated = (gt == UNANNOTATED).ravel()
    ids, codes = _dense_codes(_as_labels(pred))
    total = np.bincount(codes, minlength=len(ids))
    outside = np.bincount(codes, weights=unannotated, minlength=len(ids))
    kept = np.where(2 * outside > total, 0, ids)  # ids[0] is background (0) already
    return kept[codes].reshape(np.shape(pred)), np.where(gt == UNANNOTATED, 0, gt)


def _pair_ious(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """IoU of every overlapping (pred, gt) object pair plus foreground pixel counts."""
    ids_p, ids_g, r, c, n = contingency(pred, gt)
    area_p = np.bincount(r, weights=n, minlength=len(ids_p))
    area_g = np.bincount(c, weights=n, minlength=len(ids_g))
    obj = (r > 0) & (c > 0)
    rp, cg, inter = r[obj], c[obj], n[obj].astype(np.float64)
    iou = inter / (area_p[rp] + area_g[cg] - inter)
    return {
        "ids_pred": ids_p[1:],
        "ids_gt": ids_g[1:],
        "pi": rp - 1,
        "gi": cg - 1,
        "iou": iou,
        "fg_inter": int(inter.sum()),
        "fg_pred": int(area_p[1:].sum()),
        "fg_gt": int(area_g[1:].sum()),
        "n_pixels": int(np.size(gt)),
    }


def match_instances(
    pred: np.ndarray, gt: np.ndarray, return_ids: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense IoU matrix of shape ``(n_pred, n_gt)``, background ignored.

    Rows/columns follow the sorted non-zero labels of ``pred``/``gt``; with ``return_ids`` the
    result is ``(iou, pred_ids, gt_ids)``.
    """
    p = _pair_ious(pred, gt)
    iou = np.zeros((len(p["ids_pred"]), len(p["ids_gt"])), dtype=np.float64)
    iou[p["pi"], p["gi"]] = p["iou"]
    return (iou, p["ids_pred"], p["ids_gt"]) if return_ids else iou


def majority_cover(reference: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each object of ``reference`` against the label of ``labels`` covering most of its pixels
    (background included): ``iou`` with that label (0 where background covers most), ``second``:
    the pixels of the object on the largest other non-zero label (> 0 where the object was cut),
    ``size``: the object's pixels; one entry per non-zero id of ``reference``, in sorted order."""
    ids_r, ids_l, r, c, n = contingency(reference, labels)
    area_r = np.bincount(r, weights=n, minlength=len(ids_r))
    area_l = np.bincount(c, weights=n, minlength=len(ids_l))
    table = sparse.coo_matrix((n, (r, c)), shape=(len(ids_r), len(ids_l))).toarray()[1:]  # (objects, labels)
    best = table.argmax(axis=1)
    inter = table[np.arange(len(best)), best].astype(np.float64)
    iou = np.where(best > 0, inter / (area_r[1:] + area_l[best] - inter), 0.0)
    table[np.arange(len(best)), best] = 0
    table[:, 0] = 0
    return {"iou": iou, "second": table.max(axis=1, initial=0), "size": area_r[1:].astype(np.int64)}


def _count_matches(pi: np.ndarray, gi: np.ndarray, iou: np.ndarray, n_pred: int, n_gt: int,
                   t: float) -> int:
    """Number of matched pairs at threshold ``t`` (IoU > t)."""
    keep = iou > t
    if t >= 0.5:
        # IoU(p, g) > 0.5 implies |p ∩ g| > |p ∪ g| / 2 >= max(|p|, |g|) / 2: p covers more than
        # half of g and vice versa. Objects are disjoint, so no other prediction can also cover
        # more than half of g (and no other g more than half of p): every object takes part in
        # at most one such pair, the pairs are a matching already, and counting them is exact
        # (the same as greedy or Hungarian matching). At IoU == 0.5 two halves could tie, hence
        # the strict inequality.
        return int(np.count_nonzero(keep))
    if not np.any(keep):
        return 0
    # Below 0.5 pairs may conflict: take a maximum-cardinality bipartite matching (exact).
    graph = sparse.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.int8), (pi[keep], gi[keep])), shape=(n_pred, n_gt)
    )
    return int(np.count_nonzero(maximum_bipartite_matching(graph, perm_type="column") >= 0))


def _ap(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN), defined as 1 when there is nothing to count."""
    den = tp + fp + fn
    return np.where(den > 0, tp / np.maximum(den, 1), 1.0)


def _ratio(num: float, den: float) -> float:
    """num / den, 1.0 when both are zero (two empty masks agree perfectly)."""
    return float(num / den) if den > 0 else 1.0


def instance_scores(
    pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """Per-threshold TP/FP/FN/AP for one image, plus foreground pixel scores.

    Keys: ``thresholds``, ``tp``, ``fp``, ``fn``, ``ap`` (arrays aligned with ``thresholds``),
    ``n_pred``, ``n_gt``, ``fg_inter``, ``fg_pred``, ``fg_gt``, ``n_pixels``, ``dice``, ``iou``,
    ``pixel_error``. ``gt`` may be partial (``UNANNOTATED`` pixels, see the module docstring).
    """
    p = _pair_ious(*drop_unannotated(pred, gt))
    n_pred, n_gt = len(p["ids_pred"]), len(p["ids_gt"])
    tp = np.array([_count_matches(p["pi"], p["gi"], p["iou"], n_pred, n_gt, float(t))
                   for t in thresholds], dtype=np.int64)
    fp, fn = n_pred - tp, n_gt - tp
    inter, fp_px, fg_px = p["fg_inter"], p["fg_pred"], p["fg_gt"]
    return {
        "thresholds": tuple(float(t) for t in thresholds),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "ap": _ap(tp, fp, fn),
        "n_pred": n_pred,
        "n_gt": n_gt,
        "fg_inter": inter,
        "fg_pred": fp_px,
        "fg_gt": fg_px,
        "n_pixels": p["n_pixels"],
        "dice": _ratio(2 * inter, fp_px + fg_px),
        "iou": _ratio(inter, fp_px + fg_px - inter),
        "pixel_error": (fp_px + fg_px - 2 * inter) / max(p["n_pixels"], 1),
    }


def ap50(pred: np.ndarray, gt: np.ndarray) -> float:
    """AP at IoU > 0.5 for one image: TP / (TP + FP + FN)."""
    return float(instance_scores(pred, gt, thresholds=(0.5,))["ap"][0])


def _threshold_key(t: float) -> str:
    """Key for a threshold: 0.5 -> 'ap50', 0.75 -> 'ap75'."""
    return f"ap{int(round(t * 100)):02d}"


def evaluate_instances(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Pooled instance evaluation over ``(pred, gt)`` pairs.

    Objects are pooled: AP@t = sum TP / sum (TP + FP + FN) over all images. ``map`` is the mean of
    the pooled AP over ``thresholds``; ``ap50``/``ap75``/... are the pooled AP at each threshold
    (``ap50`` requires 0.5 among the thresholds and is NaN otherwise). ``dice``, ``iou`` and
    ``pixel_error`` pool foreground/background pixels over all images. ``per_image`` lists one
    flat dict per image (for CSV output, see :func:`write_per_image_csv`).
    """
    ths = tuple(float(t) for t in thresholds)
    tp = np.zeros(len(ths), np.int64)
    fp = np.zeros(len(ths), np.int64)
    fn = np.zeros(len(ths), np.int64)
    inter = fg_p = fg_g = n_px = n_pred = n_gt = 0
    rows: list[dict[str, Any]] = []
    for i, (pred, gt) in enumerate(pairs):
        s = instance_scores(pred, gt, ths)
        tp += s["tp"]
        fp += s["fp"]
        fn += s["fn"]
        inter += s["fg_inter"]
        fg_p += s["fg_pred"]
        fg_g += s["fg_gt"]
        n_px += s["n_pixels"]
        n_pred += s["n_pred"]
        n_gt += s["n_gt"]
        row: dict[str, Any] = {"name": names[i] if names is not None else str(i),
                               "n_gt": s["n_gt"], "n_pred": s["n_pred"]}
        row.update({_threshold_key(t): float(a) for t, a in zip(ths, s["ap"])})
        if 0.5 in ths:
            j = ths.index(0.5)
            row.update(tp50=int(s["tp"][j]), fp50=int(s["fp"][j]), fn50=int(s["fn"][j]))
        row.update(map=float(np.mean(s["ap"])), dice=s["dice"], iou=s["iou"],
                   pixel_error=float(s["pixel_error"]))
        rows.append(row)
    ap = _ap(tp, fp, fn)
    out: dict[str, Any] = {_threshold_key(t): float(a) for t, a in zip(ths, ap)}
    out.setdefault("ap50", float("nan"))
    j50 = ths.index(0.5) if 0.5 in ths else None
    out.update(
        map=float(np.mean(ap)) if len(ap) else float("nan"),
        thresholds=ths,
        ap_per_threshold=[float(a) for a in ap],
        tp=int(tp[j50]) if j50 is not None else None,
        fp=int(fp[j50]) if j50 is not None else None,
        fn=int(fn[j50]) if j50 is not None else None,
        dice=_ratio(2 * inter, fg_p + fg_g),
        iou=_ratio(inter, fg_p + fg_g - inter),
        pixel_error=(fg_p + fg_g - 2 * inter) / max(n_px, 1),
        n_images=len(rows),
        n_gt=n_gt,
        n_pred=n_pred,
        per_image=rows,
    )
    return out


# ----------------------------------------------------------------------------- semantic
def rand_error(seg_pred: np.ndarray, seg_gt: np.ndarray) -> float:
    """Foreground-restricted Rand error, 1 - Rand F-score (the ISBI 2012 "V_rand" measure).

    Both inputs are segment label images; 0 marks boundary/background. Only pixels inside a
    ground-truth segment (``seg_gt > 0``) count. Counting pairs of such pixels, with ``n_ij`` the
    overlap of predicted segment i and true segment j, ``b_i``/``a_j`` the predicted/true sizes:
    precision = sum n_ij(n_ij-1) / sum b_i(b_i-1), recall = sum n_ij(n_ij-1) / sum a_j(a_j-1)
    and the error is 1 - 2PR/(P+R). Predicted boundary pixels (label 0) inside a true segment
    are treated as singletons: they belong to no predicted segment, so they only cost recall.
    (This equals ``skimage.metrics.adapted_rand_error`` after giving each such pixel its own
    id.) A ratio with a zero denominator (no pairs to get wrong) counts as 1.
    """
    ids_p, ids_g, r, c, n = contingency(seg_pred, seg_gt)
    keep = c > 0
    r, c, n = r[keep], c[keep], n[keep].astype(np.float64)
    a = np.bincount(c, weights=n)                       # true segment sizes (all inside GT fg)
    seg = r > 0                                          # drop predicted-boundary singletons
    b = np.bincount(r[seg], weights=n[seg])
    sum_ij = float(np.sum(n[seg] * (n[seg] - 1)))
    sum_a, sum_b = float(np.sum(a * (a - 1))), float(np.sum(b * (b - 1)))
    prec = sum_ij / sum_b if sum_b > 0 else 1.0
    rec = sum_ij / sum_a if sum_a > 0 else 1.0
    if prec + rec == 0:
        return 1.0
    return float(1.0 - 2.0 * prec * rec / (prec + rec))


def _as_class_map(x: np.ndarray) -> np.ndarray:
    """Integer class map; a {0, 255} mask (the ISBI file convention) becomes {0, 1}."""
    a = np.asarray(x)
    if a.dtype == bool:
        return a.astype(np.uint8)
    a = _as_labels(a).reshape(a.shape)
    if a.size and a.max() == 255 and not np.any((a != 0) & (a != 255)):
        return (a > 0).astype(np.uint8)
    return a


def evaluate_semantic(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    n_classes: int | None = None,
    rand: bool | None = None,
    connectivity: int = 1,
) -> dict[str, Any]:
    """Pooled semantic evaluation of ``(pred, gt)`` class maps.

    Returns ``pixel_error`` (fraction of pixels whose class differs), ``dice_per_class`` and
    ``iou_per_class`` (every class, NaN when absent from both), ``mean_dice``/``mean_iou`` over
    the foreground classes 1.., the pooled ``confusion`` matrix (rows = truth) and ``n_images``.
    For binary data (ISBI 2012: 1 = cell interior, 0 = membrane) ``rand_error`` is the mean over
    images of :func:`rand_error` between the connected components (``connectivity`` 1 = 4-conn.)
    of the predicted and true interiors; ``rand=None`` computes it exactly when binary.
    {0, 255} masks are read as {0, 1}.
    """
    conf = np.zeros((0, 0), np.int64)
    rand_errors: list[float] = []
    per_image: list[dict[str, float]] = []
    structure = ndimage.generate_binary_structure(2, connectivity)
    for pred, gt in pairs:
        p, g = _as_class_map(pred), _as_class_map(gt)
        if p.shape != g.shape:
            raise ValueError(f"shape mismatch: {p.shape} vs {g.shape}")
        k = max(int(p.max(initial=0)), int(g.max(initial=0))) + 1
        if n_classes is not None:
            if k > n_classes:
                raise ValueError(f"class id {k - 1} >= n_classes={n_classes}")
            k = n_classes
        cm = np.bincount(g.ravel().astype(np.int64) * k + p.ravel(), minlength=k * k)
        cm = cm.reshape(k, k)
        size = max(k, conf.shape[0])
        grown = np.zeros((size, size), np.int64)
        grown[: conf.shape[0], : conf.shape[0]] += conf
        grown[:k, :k] += cm
        conf = grown
        row = {"pixel_error": 1.0 - float(np.trace(cm)) / max(p.size, 1)}
        do_rand = rand if rand is not None else (n_classes in (None, 2) and k <= 2)
        if do_rand:
            lp, _ = ndimage.label(p == 1, structure=structure)
            lg, _ = ndimage.label(g == 1, structure=structure)
            row["rand_error"] = rand_error(lp, lg)
            rand_errors.append(row["rand_error"])
        per_image.append(row)
    if n_classes is not None and conf.shape[0] < n_classes:
        pad = np.zeros((n_classes, n_classes), np.int64)
        pad[: conf.shape[0], : conf.shape[0]] = conf
        conf = pad
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    fg = slice(1, None)
    total = conf.sum()
    out: dict[str, Any] = {
        "pixel_error": float(1.0 - np.trace(conf) / total) if total else 0.0,
        "dice_per_class": [float(d) for d in dice],
        "iou_per_class": [float(v) for v in iou],
        "mean_dice": float(np.nanmean(dice[fg])) if np.any(np.isfinite(dice[fg])) else float("nan"),
        "mean_iou": float(np.nanmean(iou[fg])) if np.any(np.isfinite(iou[fg])) else float("nan"),
        "confusion": conf,
        "n_images": len(per_image),
        "per_image": per_image,
    }
    if rand_errors:
        out["rand_error"] = float(np.mean(rand_errors))
    return out


def write_per_image_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write the ``per_image`` list of an evaluation to a CSV file (columns from the first row)."""
    path = Path(path)
    if not rows:
        path.write_text("")
        return
    fields = list(rows[0].keys())
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
