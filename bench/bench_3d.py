"""Benchmark: 3D training with the default sizes, from the command line, on synthetic nuclei volumes.

Run: ``.venv/bin/python bench/bench_3d.py [--out /tmp/bench3d] [--train 6] [--test 4] [--time-limit 120]
[--z-scale 1] [--seed 0] [--extra "--seed 1"] [--compare-2d [--skip-3d [--restitch]] [--extra-2d "--init none"]
[--stitch iou:0.5,smaller:0.7]]``;
``--split 20 [--old-sizes]`` times 20 steps split into data and network (and one validation) instead
of training. ``--peers stardist [--train-seed 1] [--threads 1] [--json bench/results/x.json]``: also
StarDist 3D (see below). ``--volume IMAGE LABELS``: a real annotated volume instead (trained on its top
half, scored on its bottom half).

Data: ``--train`` + ``--test`` volumes of 32 x 96 x 96 voxels (``--z-scale 2``: 16 planes of twice
the depth, the same tissue) holding crowded ellipsoid nuclei (radii 5-8 in z, 6-10 in y/x,
touching: a voxel inside several belongs to the nearest centre), each with its own brightness
and a grainy texture, blurred twice as much along z as in y/x (an axially elongated PSF), on a
background with a gradient, with Poisson and Gaussian noise, written as uint16 TIFFs.

The training is the user's command, nothing else set:
``napari-unet train DATA/train/images DATA/train/masks --dims 3 --time-limit 120 --out DATA/model``
(``--z-scale`` added when it is not 1), then ``napari-unet predict DATA/model DATA/test/images``;
the held-out volumes' labels are scored with ``napari_unet.metrics.evaluate_instances`` (3D
IoU matching, objects pooled). Prints the steps, seconds per step, the sizes chosen, the
validation score and AP@0.5 / mean AP on the held-out volumes, with the machine's load.

``--compare-2d`` then does what a user without a 3D model would: every plane of the training
volumes becomes a 2D image/mask pair (ids made consecutive per plane), the default 2D model is
trained with ``napari-unet train PLANES/images PLANES/masks --time-limit 120 --out DATA/model2d``
(which fine-tunes ``pretrained:nuclei``; ``--extra-2d "--init none"`` starts from scratch like the
3D model), ``napari-unet predict`` labels every plane of the held-out volumes, and the planes are
stitched into 3D objects by :func:`stitch_planes` (each object takes the id of the object of the
plane below it that it overlaps most, when the overlap reaches a threshold, else a new id; with
IoU, Cellpose's ``stitch_threshold`` rule). The stitched volumes are scored like the 3D model's,
for each rule of ``--stitch``: IoU 0.5; IoU 0.1 (the best of 0.5 / 0.4 / 0.3 / 0.2 / 0.1 / 0.05
for the mean AP of the *training* volumes' true planes, at z-scale 1 and 2: 0.5 splits each
nucleus's thin caps off, two cross-sections near a pole having an IoU well under 0.5); and
intersection over the smaller area 0.7. Also printed:
the 2D AP on the held-out planes (before stitching) and the 3D AP of the true planes stitched by
the same rule (what the rule alone loses).

``--peers stardist`` then trains StarDist 3D from scratch on the same training volumes for the same
``--time-limit`` and threads, in its own venv (``bench/peers/setup.sh stardist``;
``bench/peers/train_stardist3d.py``: the 3D example's configuration with the anisotropy of
``--z-scale``), and scores its labels of the same held-out volumes with the same
``evaluate_instances``. ``--train-seed`` is our training seed (``train --seed``) and the peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = (32, 96, 96)  # (Z, Y, X) at z-scale 1
PEERS_DIR = REPO / "bench" / "peers"
PEERS = {"stardist": ("StarDist 3D", "train_stardist3d.py")}  # name -> (label, script in PEERS_DIR)


def nuclei_volume(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE, n: int = 60,
                  z_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Crowded ellipsoid nuclei: (image uint16 (Z, Y, X), instance labels uint16 (Z, Y, X)).

    ``shape`` is at z-scale 1; with ``z_scale`` s the volume holds ``Z / s`` planes of s pixel
    widths each (the same tissue, sampled coarser in z). Up to ``n`` nuclei are placed by
    rejection so that neighbours touch but do not swallow each other.
    """
    planes = max(int(round(shape[0] / z_scale)), 1)
    zz, yy, xx = np.indices((planes, shape[1], shape[2]), dtype=np.float32)
    zz = zz * z_scale + (z_scale - 1) / 2  # plane centres in pixel widths
    centres, radii = [], []
    for _ in range(n * 30):
        if len(centres) == n:
            break
        c = rng.uniform([0, 0, 0], shape)
        r = np.array([rng.uniform(5, 8), *rng.uniform(6, 10, 2)])
        if all(np.linalg.norm((c - c2) / ((r + r2) / 2)) > 0.8 for c2, r2 in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    best = np.full(zz.shape, 1.0, np.float32)  # normalised distance of the nearest centre (< 1: inside)
    labels = np.zeros(zz.shape, np.uint16)
    image = np.zeros(zz.shape, np.float32)
    grain = ndi.gaussian_filter(rng.normal(0, 1, zz.shape).astype(np.float32), 1.0)
    for i, (c, r) in enumerate(zip(centres, radii)):
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - c[1], xx - c[2]
        u, v = np.cos(angle) * dy + np.sin(angle) * dx, -np.sin(angle) * dy + np.cos(angle) * dx
        d = ((zz - c[0]) / r[0]) ** 2 + (u / r[1]) ** 2 + (v / r[2]) ** 2
        inside = d < best
        labels[inside], best[inside] = i + 1, d[inside]
        brightness = rng.uniform(0.5, 1.5)
        image[inside] = brightness * (1 + 0.25 * grain[inside]) * (1 - 0.3 * d[inside])
    image = ndi.gaussian_filter(image, (2.0 / z_scale, 1.0, 1.0))  # the PSF: twice as long along z
    image += 0.15 + 0.1 * xx / shape[2]  # background with a gradient
    photons = rng.poisson(np.clip(image, 0, None) * 60).astype(np.float32) / 60
    image = photons + rng.normal(0, 0.05, image.shape)
    image = np.clip(image * 4000 + 500, 0, 65535).astype(np.uint16)
    return image, relabel(labels)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids, dropping nuclei that kept fewer than 20 voxels (cut by neighbours or the edge)."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    lut = np.zeros(int(labels.max()) + 1, np.uint16)
    keep = ids[counts >= 20]
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels]


def write_set(folder: Path, count: int, seed: int, z_scale: float) -> None:
    """``count`` volumes and masks under ``folder/images`` and ``folder/masks``."""
    from napari_unet.files.io import write_image

    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = nuclei_volume(rng, z_scale=z_scale)
        write_image(folder / "images" / f"v{i}.tif", image)
        write_image(folder / "masks" / f"v{i}.tif", mask)


def write_halves(folder: Path, image_path: Path, labels_path: Path, train_bottom: bool = False) -> None:
    """A real annotated volume split at its middle row: the top half to ``folder/train``, the bottom half
    to ``folder/test`` (the other way round with ``train_bottom``; one volume each, ``v0.tif``; objects
    the cut leaves under 20 voxels dropped)."""
    from napari_unet.files.io import read_image, read_mask, write_image

    image, labels = np.asarray(read_image(image_path)), np.asarray(read_mask(labels_path))
    if image.shape != labels.shape or image.ndim != 3:
        sys.exit(f"--volume: a (Z, Y, X) image and labels of the same shape, not {image.shape} and {labels.shape}")
    middle = image.shape[1] // 2
    top, bottom = slice(None, middle), slice(middle, None)
    for split, rows in (("train", bottom if train_bottom else top), ("test", top if train_bottom else bottom)):
        write_image(folder / split / "images" / "v0.tif", image[:, rows])
        write_image(folder / split / "masks" / "v0.tif", relabel(labels[:, rows]))


def consecutive(labels: np.ndarray) -> np.ndarray:
    """The same objects with ids 1..n in order of their old ids (0 stays background)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.uint16 if len(ids) < 65536 else np.uint32)


def write_planes(folder: Path, planes: Path) -> list[str]:
    """Each volume under ``folder/images`` (and ``folder/masks``, when there) written plane by plane
    as 2D TIFFs ``<volume>_z<NN>.tif`` under ``planes/images`` (``planes/masks``, ids consecutive
    per plane). Returns the volume names in order."""
    from napari_unet.files.io import read_image, read_mask, write_image

    names = []
    for f in sorted((folder / "images").glob("*.tif")):
        names.append(f.stem)
        volume = read_image(f)
        mask = read_mask(folder / "masks" / f.name) if (folder / "masks" / f.name).exists() else None
        for z in range(volume.shape[0]):
            write_image(planes / "images" / f"{f.stem}_z{z:02d}.tif", volume[z])
            if mask is not None:
                write_image(planes / "masks" / f"{f.stem}_z{z:02d}.tif", consecutive(mask[z]))
    return names


def stitch_planes(planes: np.ndarray, threshold: float = 0.5, overlap: str = "iou") -> np.ndarray:
    """2D labels per plane (Z, Y, X) -> 3D objects, plane by plane from z = 0.

    An object of plane z takes the id of the object of plane z - 1 (already stitched) it overlaps
    most, when that overlap is at least ``threshold``; otherwise it gets a new id. ``overlap``:
    ``"iou"`` (intersection over union; with a threshold of 0.5 or more two objects of one plane
    never take the same id) or ``"smaller"`` (intersection over the smaller of the two areas, so a
    nucleus's small cap still joins the wider section next to it; two objects may then join one).
    Ids of the result are consecutive.
    """
    planes = np.asarray(planes)
    out = np.zeros(planes.shape, np.int64)
    next_id = 1
    for z in range(planes.shape[0]):
        current = planes[z].astype(np.int64)
        ids = np.unique(current[current > 0])
        if not len(ids):
            continue
        lut = np.zeros(int(current.max()) + 1, np.int64)
        if z > 0 and out[z - 1].any():
            below = out[z - 1]
            both = (current > 0) & (below > 0)
            pairs, shared = np.unique(np.stack([current[both], below[both]]), axis=1, return_counts=True)
            area_now = np.bincount(current.ravel(), minlength=lut.size)
            area_below = np.bincount(below.ravel())
            if overlap == "iou":
                iou = shared / (area_now[pairs[0]] + area_below[pairs[1]] - shared)
            else:
                iou = shared / np.minimum(area_now[pairs[0]], area_below[pairs[1]])
            best: dict[int, tuple[float, int]] = {}
            for a, b, v in zip(pairs[0], pairs[1], iou):
                if v >= threshold and v > best.get(a, (0.0, 0))[0]:
                    best[a] = (v, b)
            for a, (_, b) in best.items():
                lut[a] = b
        for a in ids:
            if not lut[a]:
                lut[a], next_id = next_id, next_id + 1
        out[z] = lut[current]
    return consecutive(out)


def error_breakdown(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    """What went wrong, over (predicted, true) label volumes: true objects ``matched`` at IoU > 0.5;
    of the others ``merged`` (one predicted object holds over 20 % of it and over 20 % of another true
    object), ``split`` (two or more predicted objects each hold over 20 % of it) or ``missed``;
    ``false``: predicted objects matching none."""
    from napari_unet.metrics import contingency

    out = dict(matched=0, merged=0, split=0, missed=0, false=0)
    for pred, truth in pairs:
        _, ids_t, r, c, n = contingency(pred, truth)
        size_t = np.bincount(c, weights=n, minlength=len(ids_t))
        size_p = np.bincount(r, weights=n, minlength=int(r.max()) + 1)
        both = (r > 0) & (c > 0)
        r, c, n = r[both], c[both], n[both].astype(np.float64)
        iou = n / (size_p[r] + size_t[c] - n)
        good_t, good_p = set(c[iou > 0.5].tolist()), set(r[iou > 0.5].tolist())
        held = n > 0.2 * size_t[c]  # this predicted object holds over 20 % of that true one
        for t in range(1, len(ids_t)):
            if t in good_t:
                out["matched"] += 1
                continue
            holders = r[held & (c == t)]
            if len(holders) >= 2:
                out["split"] += 1
            elif len(holders) == 1 and np.any(held & (r == holders[0]) & (c != t)):
                out["merged"] += 1
            else:
                out["missed"] += 1
        out["false"] += len(set(np.unique(pred[pred > 0]).tolist()) - good_p)
    return out


def run(cmd: list[str]) -> float:
    """Run a CLI command (printed), fail loudly; return its wall-clock seconds."""
    print("$", shlex.join(cmd), flush=True)
    began = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - began


def step_split(folder: Path, steps: int, sizes: tuple[int, tuple[int, int, int]] | None = None) -> None:
    """Seconds per step in data (patch sampling + augmentation) and network (forward, loss, backward,
    optimiser) with the default sizes on this machine's CPU (or ``sizes``: (batch, patch)), and of one
    validation of a held-out volume (prediction + scoring), as the engine runs them."""
    import torch

    from napari_unet.config import TrainConfig, UNetConfig
    from napari_unet.data.augment import augment_batch
    from napari_unet.data.dataset import PatchSampler, prepare_pairs
    from napari_unet.files.io import read_image, read_mask
    from napari_unet.models.bundle import build_network
    from napari_unet.runtime.device import (autocast, channels_last_format, low_precision_dtype,
                                              with_device_sizes)
    from napari_unet.heads.losses import segmentation_loss
    from napari_unet.training.validation import validate
    from napari_unet.arrays.volumes import patch_shape, voxel_spacing

    files = sorted((folder / "images").glob("*.tif"))
    pairs = [(read_image(f), read_mask(folder / "masks" / f.name)) for f in files]
    cpu = torch.device("cpu")
    cfg = TrainConfig(model=UNetConfig(dims=3))
    prepared = prepare_pairs(pairs, cfg)
    cfg = with_device_sizes(cfg, cpu, [p.target.shape for p in prepared])
    if sizes is not None:
        cfg = TrainConfig(model=cfg.model, batch_size=sizes[0], patch_size=sizes[1])
    dtype = low_precision_dtype(cpu, None)
    net = build_network(cfg).to(memory_format=channels_last_format(3)) if dtype else build_network(cfg)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate)
    sampler = PatchSampler(prepared[1:], patch_shape(cfg), np.random.default_rng(0))
    generator = torch.Generator().manual_seed(0)
    data = network = 0.0
    for step in range(steps + 1):  # the first step warms up
        began = time.perf_counter()
        images, targets, weights = (torch.from_numpy(a) for a in sampler.sample(cfg.batch_size))
        images, targets, weights = augment_batch(images, targets, weights, cfg.augment, generator, voxel_spacing(cfg))
        if dtype:
            images = images.contiguous(memory_format=channels_last_format(3))
        middle = time.perf_counter()
        with autocast(cpu, dtype):
            logits = net(images)
        loss = segmentation_loss(logits, targets, weights, cfg.loss.dice_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            data, network = data + middle - began, network + time.perf_counter() - middle
    began = time.perf_counter()
    validate(net, prepared[:1], cfg, dtype)
    print(f"{cfg.batch_size} x {patch_shape(cfg)} per step, {steps} steps: data {data / steps:.3f} s, network "
          f"{network / steps:.3f} s per step; one validation of a {prepared[0].target.shape} volume "
          f"{time.perf_counter() - began:.2f} s; load {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench3d", help="data, model and predictions (default: %(default)s)")
    parser.add_argument("--train", type=int, default=6)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--z-scale", type=float, default=1.0, help="voxel depth of the data and the flag")
    parser.add_argument("--seed", type=int, default=0, help="data seed (the test volumes use seed + 1000)")
    parser.add_argument("--volume", nargs=2, type=Path, metavar=("IMAGE", "LABELS"),
                        help="a real annotated (Z, Y, X) volume instead of the synthetic ones: trained on its top "
                             "half, scored on its bottom half (see docs/benchmarks.md for the cells3d volume)")
    parser.add_argument("--train-bottom", action="store_true",
                        help="with --volume: train on the bottom half and score the top half")
    parser.add_argument("--extra", default="", help="more train flags, e.g. '--steps 300'")
    parser.add_argument("--split", type=int, default=0, metavar="STEPS",
                        help="instead: time STEPS steps split into data and network, and one validation")
    parser.add_argument("--old-sizes", action="store_true", help="with --split: the former 3D default, 8 x 128³")
    parser.add_argument("--compare-2d", action="store_true",
                        help="also train the default 2D model on the planes, predict plane by plane and stitch")
    parser.add_argument("--skip-3d", action="store_true", help="with --compare-2d: only the 2D model")
    parser.add_argument("--extra-2d", default="", help="more train flags for the 2D model, e.g. '--init none'")
    parser.add_argument("--stitch", default="iou:0.5,iou:0.1,smaller:0.7",
                        help="rules that link objects of adjacent planes (overlap:threshold, overlap 'iou' or "
                             "'smaller'; see stitch_planes), each scored (default: %(default)s)")
    parser.add_argument("--restitch", action="store_true",
                        help="with --compare-2d --skip-3d: only stitch and score the 2D predictions already in --out")
    parser.add_argument("--peers", nargs="*", default=[], choices=list(PEERS),
                        help="peers trained and scored beside the 3D model on the same volumes (venvs from "
                             "bench/peers/setup.sh)")
    parser.add_argument("--train-seed", type=int, default=None, help="our training seed (train --seed) and the peers'")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)),
                        help="threads of every training and prediction (default: $OMP_NUM_THREADS, else 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the scored rows here")
    args = parser.parse_args()
    missing = [p for p in args.peers if not peer_ready(p)]
    if missing:
        sys.exit(f"no venv for {', '.join(missing)}: run bash bench/peers/setup.sh {' '.join(missing)}")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the CLI runs below and the peers inherit it
    out = Path(args.out)
    if args.volume is not None:
        args.train = args.test = 1
        if not args.restitch:
            write_halves(out, *args.volume, train_bottom=args.train_bottom)
    elif not args.restitch:
        write_set(out / "train", args.train, args.seed, args.z_scale)
        write_set(out / "test", args.test, args.seed + 1000, args.z_scale)
    if args.split:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI's entry point (torch not loaded yet)
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        step_split(out / "train", args.split, (8, (128, 128, 128)) if args.old_sizes else None)
        return
    cli = [sys.executable, "-m", "napari_unet"]
    rows = []
    if not args.skip_3d:
        rows.append(train_3d(cli, out, args))
    if args.compare_2d:
        train_2d(cli, out, args)
    for peer in args.peers:
        row = run_peer(peer, out, args)
        if row is not None:
            rows.append(row)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


def report(model: Path, scores: dict, label: str, load_before: float, load_after: float,
           predict_seconds: float, count: int) -> dict:
    """One line: steps, seconds, sizes, held-out AP@0.5 and mean AP, load. Returns them as a row."""
    meta = json.loads((model / "model.json").read_text())
    training, cfg = meta["meta"]["training"] if "meta" in meta else meta["training"], meta["config"]
    steps, seconds = training["steps"], training["seconds"]
    print(f"{label}: steps {steps} in {seconds:.0f} s ({seconds / max(steps, 1):.2f} s/step); batch "
          f"{cfg['batch_size']}, patch {cfg['patch_size']}; held-out AP@0.5 {scores['ap50']:.3f}, mean AP "
          f"{scores['map']:.3f} on {count} volumes ({sum(r['n_gt'] for r in scores['per_image'])} nuclei); "
          f"predict {predict_seconds:.0f} s (with start-up); load {load_before:.2f} before, {load_after:.2f} "
          f"after training", flush=True)
    return {"model": label, "steps": steps, "train_s": seconds, "batch": cfg["batch_size"],
            "patch": cfg["patch_size"], "ap50": scores["ap50"], "map": scores["map"],
            "load_before": load_before, "load_after": load_after, "predict_s": predict_seconds}


def train_3d(cli: list[str], out: Path, args: argparse.Namespace) -> dict:
    """The 3D model: the user's command, predicted and scored on the held-out volumes; its row."""
    from napari_unet.files.io import read_mask
    from napari_unet.metrics import evaluate_instances

    model = out / "model"
    train = [*cli, "train", str(out / "train/images"), str(out / "train/masks"), "--dims", "3",
             "--time-limit", f"{args.time_limit:g}", "--out", str(model)]
    train += ["--z-scale", f"{args.z_scale:g}"] if args.z_scale != 1 else []
    train += ["--seed", str(args.train_seed)] if args.train_seed is not None else []
    load_before = os.getloadavg()
    run([*train, *shlex.split(args.extra)])
    load_after = os.getloadavg()
    predict_seconds = run([*cli, "predict", str(model), str(out / "test/images"), "--out", str(out / "pred"),
                           "--overwrite", "--quiet"])
    pairs = [(read_mask(out / "pred" / f"v{i}.tif"), read_mask(out / "test/masks" / f"v{i}.tif"))
             for i in range(args.test)]
    row = report(model, evaluate_instances(pairs), "3D", load_before[0], load_after[0], predict_seconds, args.test)
    errors = error_breakdown(pairs)
    print("  true objects " + ", ".join(f"{k} {v}" for k, v in errors.items() if k != "false")
          + f"; predicted objects matching none {errors['false']}", flush=True)
    return {**row, "errors": errors, "z_scale": args.z_scale, "data_seed": args.seed, "train_seed": args.train_seed,
            "threads": args.threads}


def peer_ready(peer: str) -> bool:
    """Whether bench/peers/setup.sh finished the peer's venv."""
    return (PEERS_DIR / f".venv-{peer}" / ".complete").exists()


def run_peer(peer: str, out: Path, args: argparse.Namespace) -> dict | None:
    """Train and predict with a peer in its venv on the volumes under ``out``; score its labels of the
    held-out volumes like ours. The row, or None if it failed (its log is under ``out/<peer>``)."""
    from napari_unet.files.io import read_mask
    from napari_unet.metrics import evaluate_instances

    folder = out / peer
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [str(PEERS_DIR / f".venv-{peer}" / "bin" / "python"), str(PEERS_DIR / PEERS[peer][1]),
           "--data", str(out), "--z-scale", f"{args.z_scale:g}", "--budget", f"{args.time_limit:g}",
           "--seed", str(args.train_seed or 0), "--threads", str(args.threads), "--out", str(folder)]
    print("$", shlex.join(cmd), flush=True)
    load_before = os.getloadavg()[0]
    with (folder / "log.txt").open("w") as log:  # Keras progress bars
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            print(f"{PEERS[peer][0]} failed, no row; see {folder / 'log.txt'}", flush=True)
            return None
    result = json.loads((folder / "result.json").read_text())
    with np.load(folder / "labels.npz") as labels:
        names = sorted(labels.files)
        scores = evaluate_instances([(labels[n], read_mask(out / "test/masks" / f"{n}.tif")) for n in names])
    print(f"{PEERS[peer][0]}: steps {result['steps']} in {result['train_s']:.0f} s "
          f"({result['train_s'] / max(result['steps'], 1):.2f} s/step); batch {result['batch']}, patch "
          f"{result['patch']}, grid {result['grid']}; held-out AP@0.5 {scores['ap50']:.3f}, mean AP "
          f"{scores['map']:.3f} on {len(names)} volumes; thresholds {result['thresholds']} "
          f"({result['thresholds_s']:.0f} s); predict {result['predict_s_per_image']:.1f} s/volume; load "
          f"{load_before:.2f} before", flush=True)
    return {"model": PEERS[peer][0], "steps": result["steps"], "train_s": result["train_s"],
            "batch": result["batch"], "patch": result["patch"], "grid": result["grid"],
            "ap50": scores["ap50"], "map": scores["map"], "load_before": load_before,
            "predict_s": result["predict_s_per_image"], "thresholds": result["thresholds"],
            "z_scale": args.z_scale, "data_seed": args.seed, "train_seed": args.train_seed,
            "threads": args.threads, "versions": result["versions"]}


def train_2d(cli: list[str], out: Path, args: argparse.Namespace) -> None:
    """The default 2D model on every plane, predicted plane by plane, stitched, scored in 3D."""
    import shutil

    from napari_unet.files.io import read_mask
    from napari_unet.metrics import evaluate_instances

    model = out / "model2d"
    if args.restitch:  # the planes, model and predictions of an earlier run in --out
        names = sorted(f.stem for f in (out / "test/images").glob("*.tif"))
        load_before = load_after = (float("nan"),)
        predict_seconds = float("nan")
    else:
        for sub in ("planes", "test_planes", "pred2d"):
            shutil.rmtree(out / sub, ignore_errors=True)
        write_planes(out / "train", out / "planes")
        names = write_planes(out / "test", out / "test_planes")
        train = [*cli, "train", str(out / "planes/images"), str(out / "planes/masks"),
                 "--time-limit", f"{args.time_limit:g}", "--out", str(model)]
        load_before = os.getloadavg()
        run([*train, *shlex.split(args.extra_2d)])
        load_after = os.getloadavg()
        predict_seconds = run([*cli, "predict", str(model), str(out / "test_planes/images"), "--out",
                               str(out / "pred2d"), "--overwrite", "--quiet"])
    rules = [(kind, float(t)) for kind, t in (rule.split(":") for rule in args.stitch.split(","))]
    predicted, truths, planes = [], [], []
    for name in names:
        truth = read_mask(out / "test/masks" / f"{name}.tif")
        files = [f"{name}_z{z:02d}.tif" for z in range(truth.shape[0])]
        predicted.append(np.stack([read_mask(out / "pred2d" / f) for f in files]))
        truths.append((np.stack([read_mask(out / "test_planes/masks" / f) for f in files]), truth))
        planes += [(predicted[-1][z], truths[-1][0][z]) for z in range(len(files))]
    flat = evaluate_instances(planes)
    print(f"2D AP@0.5 on the {len(planes)} held-out planes {flat['ap50']:.3f} (mean AP {flat['map']:.3f})")
    for kind, t in rules:
        scores = evaluate_instances([(stitch_planes(p, t, kind), truth) for p, (_, truth) in zip(predicted, truths)])
        report(model, scores, f"2D slice by slice, stitched at {kind} {t:g}", load_before[0], load_after[0],
               predict_seconds, len(names))
        ceiling = evaluate_instances([(stitch_planes(p, t, kind), truth) for p, truth in truths])
        print(f"  true planes stitched at {kind} {t:g}: 3D AP@0.5 {ceiling['ap50']:.3f}, mean AP "
              f"{ceiling['map']:.3f}", flush=True)

if __name__ == "__main__":
    main()
