"""3D streaming: a (Z, Y, X) Zarr volume predicted to OME-Zarr labels by a 3D model, peak memory and time.

    .venv/bin/python bench/bench_large_3d.py [--shapes 128x128x128,512x128x128,64x512x512] [--threads 2]
                                             [--z-scale 2] [--tile 0] [--model DIR [--train SECONDS]]
                                             [--halos 96,64,48,32,16 [--halo-shape 192x160x160] [--seeds 0,1]]
                                             [--forward 8:4:64,8:4:96,16:4:96] [--sketch 256x1024x1024]

For each shape a uint16 Zarr volume of synthetic nuclei (``bench_3d.nuclei_volume``, one 64 x 128 x 128
block tiled to the shape) is streamed by ``inference.large.predict_large`` in a child process with the
default 3D model (``--dims 3``: depth 4, width 8) and the 3-class head's block-wise, seam-free 3D
instances. The weights are random unless ``--model`` names a trained 3D model folder (``--train 120``
first trains one there with ``bench_3d.py``'s data and command): the network's speed and memory do
not depend on them, the instances (and so the post-processing's work) do. The child reports:

- ``model``: its RSS with the model loaded (the baseline);
- ``one tile``: the peak above the baseline of one forward pass on the largest tile input the run
  reads (the tile, by default sized by memory, plus the halo, clipped to the volume): the network's
  own working memory, which in-memory prediction of the volume needs as well;
- ``stream``: the peak above the baseline over the whole streamed prediction (tiles, blending,
  writing, block-wise instances), and the seconds it took.

Peaks are the kernel's high-water mark (``VmHWM``), reset between the two measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine_description  # noqa: E402

CHILD = r"""
import json, sys, time, torch, zarr, numpy as np
torch.set_num_threads(int(sys.argv[3]))
from dataclasses import replace
from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
from napari_unet.models.bundle import ModelBundle, build_network
from napari_unet.inference.large import predict_large, VOLUME_OVERLAP
from napari_unet.inference.predict import network_forward, tile_geometry
from napari_unet.runtime.device import low_precision_dtype

def kib(key):
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key)))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

torch.manual_seed(0)
if sys.argv[6] == "random":
    cfg = TrainConfig(model=UNetConfig(dims=3), z_scale=float(sys.argv[4]))
    bundle = ModelBundle(build_network(cfg).eval(), cfg)
else:
    from napari_unet.models.bundle import load_bundle
    bundle = load_bundle(sys.argv[6])
image = zarr.open(sys.argv[1], mode="r")
pcfg = PredictConfig(volume_tile_size=int(sys.argv[5]))
spec, allowed = tile_geometry(bundle.net, replace(pcfg, overlap=VOLUME_OVERLAP), image.shape)
tile_in = [min(allowed(min(n, spec.tile)) + 2 * spec.context, n) for n in image.shape]
base = kib("VmRSS")
reset_peak()
x = np.random.default_rng(0).random((1, 1, *tile_in)).astype(np.float32)
t = time.perf_counter()
network_forward(bundle.net, x, low_precision_dtype(torch.device("cpu"), None))
tile_seconds = time.perf_counter() - t
tile_peak = kib("VmHWM")
del x
reset_peak()
base2 = kib("VmRSS")
t = time.perf_counter(); tiles = objects = 0; phases = {}
for event in predict_large(bundle, image, sys.argv[2], pcfg):
    name = type(event).__name__
    if name == "Progress" and event.message == "tiles":
        tiles = event.total
    if name == "Progress":  # seconds per phase (tiles, seeds, instances, relabel, pyramid levels)
        phases[event.message] = round(event.elapsed, 1)
        if event.done == event.total or event.done % max(event.total // 10, 1) == 0:
            print(f"{event.message} {event.done}/{event.total} {event.elapsed:.0f} s", file=sys.stderr, flush=True)
    if name == "Finished":
        objects = event.summary["objects"]
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "base_kib": base, "tile_peak_kib": tile_peak, "tile_seconds": tile_seconds,
                  "tile_input": tile_in, "tile": spec.tile, "stream_peak_kib": kib("VmHWM"), "base2_kib": base2,
                  "tiles": tiles, "objects": objects, "phases": phases}))
"""


FORWARD = r"""
import json, sys, time, torch, numpy as np
torch.set_num_threads(1)
from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.models.bundle import build_network
from napari_unet.inference.predict import network_forward
from napari_unet.runtime.device import low_precision_dtype

def kib(key):
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key)))

width, depth, side = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
net = build_network(TrainConfig(model=UNetConfig(dims=3, depth=depth, base_width=width))).eval()
dtype = low_precision_dtype(torch.device("cpu"), None)
network_forward(net, np.zeros((1, 1, 16, 32, 32), np.float32), dtype)  # warm up
x = np.random.default_rng(0).random((1, 1, side, side, side)).astype(np.float32)
base = kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t = time.perf_counter()
network_forward(net, x, dtype)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_kib": kib("VmHWM") - base}))
"""


def forward_memory(entries: list[str]) -> None:
    """Peak RSS above the model of one bf16 CPU forward pass (one thread) of a 3D U-Net of each
    ``width:depth:side`` on a side-cubed input, per input voxel (``config.VOLUME_FORWARD_BYTES``)."""
    for entry in entries:
        width, depth, side = (int(v) for v in entry.split(":"))
        out = subprocess.run([sys.executable, "-c", FORWARD, str(width), str(depth), str(side)], stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"forward width {width}, depth {depth}, input {side}^3: {r['peak_kib'] / 1024:.0f} MiB above the model, "
              f"{r['peak_kib'] * 1024 / side**3:.0f} bytes per input voxel, {r['seconds']:.2f} s", flush=True)


SKETCH = r"""
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from napari_unet.config import PredictConfig
from napari_unet.models.bundle import load_bundle
from napari_unet.inference.predict import network_forward, tile_geometry
from napari_unet.inference.tiling import Block, iter_tiled_blocks
from napari_unet.runtime.device import low_precision_dtype

def kib(key):
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key)))

class Lazy:  # a volume read as random voxels, box by box
    def __init__(self, shape):
        self.shape = (1, *shape)
    def __getitem__(self, key):
        return np.random.default_rng(0).random([s.stop - s.start for s in key[1:]], np.float32)[None]

shape, tile, real = tuple(int(v) for v in sys.argv[1].split("x")), int(sys.argv[2]), int(sys.argv[4])
net = load_bundle(sys.argv[3]).net.eval()
dtype = low_precision_dtype(torch.device("cpu"), None)
spec, allowed = tile_geometry(net, PredictConfig(volume_tile_size=tile, overlap=16), shape)
network_forward(net, np.zeros((1, 1, 16, 32, 32), np.float32), dtype)
count, ran = [0], [0]
def fn(batch):  # the real network on every 7th tile once the first z-row is done (all buffers resident)
    count[0] += 1
    if ran[0] < real and count[0] > first_row and count[0] % 7 == 0:
        ran[0] += 1
        return network_forward(net, batch, dtype)
    return np.full((batch.shape[0], 3, *batch.shape[2:]), 0.3, np.float32)
from napari_unet.inference.tiling import _plan
plans = _plan(shape, spec, allowed)[0]
first_row = len(plans[1][1]) * len(plans[2][1])
base = kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
for item in iter_tiled_blocks(fn, Lazy(shape), 3, spec, allowed):
    if isinstance(item, Block):
        item.data.astype(np.float16)  # what predict_large writes
print(json.dumps({"tile": spec.tile, "tiles": count[0], "real": ran[0], "peak_kib": kib("VmHWM") - base}))
"""


def sketch(shape: str, tile: int, model: str, real: int = 6) -> None:
    """The tiling's own peak with one real forward pass at a time: ``iter_tiled_blocks`` over a lazy
    volume of ``shape``, the real network on ``real`` tiles after the first z-row (every buffer
    resident by then), a constant stand-in elsewhere; no reading, writing or post-processing, so
    minutes instead of an hour."""
    out = subprocess.run([sys.executable, "-c", SKETCH, shape, str(tile), model, str(real)], stdout=subprocess.PIPE,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"sketch {shape}: tiles of {r['tile']} ({r['tiles']}, {r['real']} through the network): peak "
          f"{r['peak_kib'] / 2**20:.2f} GiB above the model", flush=True)


def source_block(z_scale: float) -> np.ndarray:
    """A 64 x 128 x 128 (at z-scale 1) uint16 block of crowded synthetic nuclei."""
    from bench_3d import nuclei_volume

    image, _ = nuclei_volume(np.random.default_rng(0), shape=(64, 128, 128), n=120, z_scale=z_scale)
    return image


def write_volume(path: Path, shape: tuple[int, int, int], block: np.ndarray) -> None:
    import zarr

    array = zarr.open_array(str(path), mode="w", shape=shape, chunks=(32, 256, 256), dtype=np.uint16,
                            zarr_format=2)
    reps = [-(-s // b) for s, b in zip(shape[1:], block.shape[1:])]
    for z in range(0, shape[0], block.shape[0]):
        planes = min(block.shape[0], shape[0] - z)
        array[z:z + planes] = np.tile(block[:planes], (1, *reps))[:, :shape[1], :shape[2]]


def bench(shape: tuple[int, int, int], threads: int, z_scale: float, tile: int, block: np.ndarray,
          model: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_large_3d_"))
    try:
        src = work / "input.zarr"
        write_volume(src, shape, block)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        result = subprocess.run([sys.executable, "-c", CHILD, str(src), str(work / "labels.ome.zarr"), str(threads),
                                 str(z_scale), str(tile), model], stdout=subprocess.PIPE, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit("streaming child failed")
        r = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gib = 2**20
    mvox = np.prod(shape) / 1e6
    print(f"{'x'.join(map(str, shape))} ({mvox:.1f} Mvoxels), {r['tiles']} tiles of {r['tile']}, "
          f"{r['objects']} objects: "
          f"{r['seconds']:.0f} s ({mvox / r['seconds']:.3f} Mvoxels/s); model {r['base_kib'] / gib:.2f} GiB; "
          f"one tile {'x'.join(map(str, r['tile_input']))} {(r['tile_peak_kib'] - r['base_kib']) / gib:.2f} GiB "
          f"({r['tile_seconds']:.1f} s); stream peak {(r['stream_peak_kib'] - r['base_kib']) / gib:.2f} GiB "
          f"above the model; seconds per phase {r.get('phases', {})}", flush=True)


def compare(shape: tuple[int, int, int], threads: int, z_scale: float, block: np.ndarray, model: str) -> None:
    """Stream one volume in small blocks (32 voxels: many seams) and predict it whole in memory; match
    the instances by IoU (each whole-volume object to the streamed label covering most of it)."""
    import torch
    import zarr
    from scipy import ndimage as ndi

    from napari_unet.config import PredictConfig, TrainConfig, UNetConfig
    from napari_unet.events import run_to_end
    from napari_unet.inference.large import predict_large
    from napari_unet.inference.labels import labels_for
    from napari_unet.inference.predict import predict_image
    from napari_unet.models.bundle import ModelBundle, build_network, load_bundle
    from napari_unet.files.omezarr import open_ome_zarr

    torch.set_num_threads(threads)
    if model == "random":
        torch.manual_seed(0)
        cfg = TrainConfig(model=UNetConfig(dims=3), z_scale=z_scale)
        bundle = ModelBundle(build_network(cfg).eval(), cfg)
    else:
        bundle = load_bundle(model)
    work = Path(tempfile.mkdtemp(prefix="bench_large_3d_cmp_"))
    try:
        write_volume(work / "input.zarr", shape, block)
        volume = zarr.open(str(work / "input.zarr"), mode="r")
        t = time.perf_counter()
        result = run_to_end(predict_large(bundle, volume, work / "s.ome.zarr", PredictConfig(), chunk=32,
                                          probabilities=True))
        streamed_s = time.perf_counter() - t
        streamed = np.asarray(open_ome_zarr(result.labels))
        # the whole-volume post-processing of the very probabilities the stream stored (float16)
        same_maps = labels_for(bundle, np.asarray(open_ome_zarr(result.probabilities), np.float32), 10)
        t = time.perf_counter()
        whole = predict_image(bundle, np.asarray(volume), PredictConfig()).labels
        whole_s = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ious, split = matched_ious(whole, streamed)
    differ = 0  # objects of the same-maps labels not reproduced voxel for voxel by the streamed ones
    for i, box in enumerate(ndi.find_objects(same_maps), start=1):
        if box is not None:
            ids = np.unique(streamed[box][same_maps[box] == i])
            differ += int(len(ids) > 1 or ids[0] == 0 or np.sum(streamed[box] == ids[0]) != np.sum(same_maps[box] == i))
    crossing = sum(any(sl.start // 32 != (sl.stop - 1) // 32 for sl in box)
                   for box in ndi.find_objects(streamed) if box is not None)
    print(f"compare {'x'.join(map(str, shape))}, streamed in 32-voxel blocks ({streamed_s:.0f} s) vs whole volume "
          f"({whole_s:.0f} s): {int(streamed.max())} vs {int(whole.max())} objects, {crossing} streamed objects "
          f"cross a block seam; whole-volume objects matched at IoU > 0.5: {np.mean(ious > 0.5):.4f}, "
          f"> 0.9: {np.mean(ious > 0.9):.4f}, mean IoU {ious.mean():.4f}; covered by a second streamed label (of "
          f">= 10 voxels): {split}. Whole-volume post-processing of the stored probabilities: "
          f"{int(same_maps.max())} objects, {differ} not reproduced voxel for voxel by the block-wise labels",
          flush=True)


def matched_ious(reference: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Each object of ``reference`` against the label of ``labels`` covering most of it: (their IoUs,
    over the whole volumes; 0 where background covers most of it, and how many reference objects a
    second label of at least 10 voxels also covers)."""
    from napari_unet.metrics import majority_cover

    cover = majority_cover(reference, labels)
    return cover["iou"], int(np.sum(cover["second"] >= 10))


def halos(values: list[int], shape: tuple[int, int, int], tile: int, threads: int, z_scale: float, model: str,
          seeds: list[int]) -> None:
    """How a 3D tile's halo changes the prediction: fresh nuclei volumes of ``shape`` (at z-scale 1,
    ``bench_3d.nuclei_volume``, one per seed) predicted whole (one tile) and in ``tile``-voxel tiles
    with each halo; per halo the largest and mean absolute probability difference and the
    instances (the model's post-processing) matched to the whole-volume ones by IoU."""
    import torch

    from bench_3d import nuclei_volume
    from napari_unet.config import PredictConfig
    from napari_unet.inference.labels import labels_for
    from napari_unet.inference.predict import predict_probabilities, tile_geometry
    from napari_unet.models.bundle import load_bundle

    torch.set_num_threads(threads)
    bundle = load_bundle(model)
    n = int(120 * np.prod(shape) / (64 * 128 * 128))
    for seed in seeds:
        image, _ = nuclei_volume(np.random.default_rng(100 + seed), shape=shape, n=n, z_scale=z_scale)
        t = time.perf_counter()
        whole_p = predict_probabilities(bundle, image, PredictConfig(volume_tile_size=1024, volume_context=1024))
        whole_s = time.perf_counter() - t
        whole = labels_for(bundle, whole_p, 10)
        print(f"halo: volume {'x'.join(map(str, image.shape))} (seed {seed}), whole {whole_s:.0f} s, "
              f"{int(whole.max())} objects", flush=True)
        for halo in values:
            cfg = PredictConfig(volume_tile_size=tile, volume_context=halo, overlap=16)
            spec, _ = tile_geometry(bundle.net, cfg, image.shape)
            t = time.perf_counter()
            probs = predict_probabilities(bundle, image, cfg)
            seconds = time.perf_counter() - t
            labels = labels_for(bundle, probs, 10)
            diff = np.abs(probs - whole_p)
            ious, _ = matched_ious(whole, labels)
            same = int(np.sum(ious == 1.0))
            print(f"halo {halo} (read {spec.context}), tiles of {spec.tile}: {seconds:.0f} s; prob diff max "
                  f"{diff.max():.4f} mean {diff.mean():.6f}; {int(labels.max())} vs {int(whole.max())} objects; "
                  f"matched IoU > 0.5 {np.mean(ious > 0.5):.4f}, > 0.9 {np.mean(ious > 0.9):.4f}, mean IoU "
                  f"{ious.mean():.4f}, identical voxel for voxel {same}/{len(ious)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="128x128x128,512x128x128,64x512x512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--z-scale", type=float, default=2.0)
    parser.add_argument("--tile", type=int, default=0,
                        help="3D tile side (PredictConfig.volume_tile_size; default 0: sized by memory)")
    parser.add_argument("--model", default="random", help="a 3D model folder (default: random weights)")
    parser.add_argument("--compare", default="", help="also stream a volume of this shape in 32-voxel blocks and "
                        "match its instances with the whole-volume prediction's, e.g. 64x128x128")
    parser.add_argument("--train", type=float, default=0,
                        help="train a 3D model first for this many seconds (bench_3d's data and command) into "
                             "--model, unless that folder holds one already")
    parser.add_argument("--halos", default="", help="compare tiled with whole-volume prediction for these halos, "
                        "e.g. 96,64,48,32,16 (needs --model)")
    parser.add_argument("--halo-shape", default="192x160x160", help="--halos volumes (z at z-scale 1)")
    parser.add_argument("--halo-tile", type=int, default=64, help="--halos tile side")
    parser.add_argument("--seeds", default="0", help="--halos volumes, one per seed")
    parser.add_argument("--sketch", default="", help="the tiling's peak with a few real forward passes on "
                        "volumes of these shapes, e.g. 256x1024x1024 (needs --model; minutes)")
    parser.add_argument("--forward", default="", help="measure one forward pass's memory per input voxel for "
                        "these width:depth:side entries, e.g. 8:4:64,8:4:96,16:4:96")
    args = parser.parse_args()
    print(machine_description())
    if args.forward:
        forward_memory(args.forward.split(","))
    for text in filter(None, args.sketch.split(",")):
        sketch(text, args.tile, args.model)
    if args.train and not (Path(args.model) / "model.json").is_file():
        from bench_3d import run, write_set

        data = Path(tempfile.mkdtemp(prefix="bench_large_3d_train_"))
        write_set(data, 6, 0, args.z_scale)
        run([sys.executable, "-m", "napari_unet", "train", str(data / "images"), str(data / "masks"), "--dims", "3",
             "--z-scale", f"{args.z_scale:g}", "--time-limit", f"{args.train:g}", "--out", args.model, "--quiet"])
        shutil.rmtree(data, ignore_errors=True)
    print(f"model: {args.model}; load average before: {os.getloadavg()[0]:.1f}")
    block = source_block(args.z_scale)
    for text in filter(None, args.shapes.split(",")):
        shape = tuple(int(v) for v in text.lower().split("x"))
        bench(shape, args.threads, args.z_scale, args.tile, block, args.model)  # type: ignore[arg-type]
    if args.halos:
        halos([int(v) for v in args.halos.split(",")], tuple(int(v) for v in args.halo_shape.split("x")),
              args.halo_tile, args.threads, args.z_scale, args.model, [int(v) for v in args.seeds.split(",")])
    if args.compare:
        shape = tuple(int(v) for v in args.compare.lower().split("x"))
        compare(shape, args.threads, args.z_scale, block, args.model)  # type: ignore[arg-type]
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
