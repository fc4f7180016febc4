"""Large-image prediction: tiled vs whole-image throughput, streaming peak memory, export speed.

    .venv/bin/python bench/bench_large.py [--size 20000] [--whole 2048] [--threads 2] [--skip-stream]

1. Tiled (512-px tiles, 64-px overlap, receptive-radius halo) vs whole-image prediction of one
   ``--whole``² image: Mpx/s of each and their ratio, and the largest difference (fp32).
2. Streaming: a ``--size``² uint16 Zarr image (DSB nuclei tiled) predicted to OME-Zarr labels in a
   child process; reports Mpx/s and the child's peak RSS above its RSS with the model loaded.
3. Export: images/s of eager PyTorch, TorchScript and ONNX Runtime on 256² inputs (batch 1).

The network is the default architecture (depth 4, base 16) with random weights: speed and memory
do not depend on the weights. All figures come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine_description, timeit  # noqa: E402

CHILD = r"""
import json, resource, sys, time, torch, zarr, numpy as np
torch.set_num_threads(int(sys.argv[3]))
from napari_unet.config import PredictConfig, TrainConfig
from napari_unet.models.bundle import ModelBundle, build_network
from napari_unet.inference.large import predict_large
torch.manual_seed(0)
cfg = TrainConfig()
bundle = ModelBundle(build_network(cfg).eval(), cfg)
image = zarr.open(sys.argv[1], mode="r")
def rss_kib():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS")))
base = rss_kib()
t = time.perf_counter(); tiles = 0
for event in predict_large(bundle, image, sys.argv[2], PredictConfig()):
    if getattr(event, "message", "") == "tiles":
        tiles = event.total
        if event.done % 100 == 0:
            print(f"tile {event.done}/{event.total} {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    if type(event).__name__ == "Finished":
        objects = event.summary["objects"]
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "base_kib": base, "tiles": tiles, "objects": objects}))
"""


def make_bundle():
    import torch

    from napari_unet.config import TrainConfig
    from napari_unet.models.bundle import ModelBundle, build_network

    torch.manual_seed(0)
    cfg = TrainConfig()
    return ModelBundle(build_network(cfg).eval(), cfg)


def nuclei_tile() -> np.ndarray:
    """A 256² grey nuclei crop from the bundled samples, as uint16."""
    from napari_unet.data.samples import training_samples

    image = next(im for _, im, _ in training_samples() if min(im.shape[:2]) >= 256)
    grey = image[..., :3].mean(-1) if image.ndim == 3 else image
    return (grey[:256, :256].astype(np.float64) * 256).astype(np.uint16)


def bench_tiled_vs_whole(size: int) -> None:
    import torch

    from napari_unet.inference.predict import predict_normalized
    from napari_unet.config import PredictConfig
    from napari_unet.runtime.device import low_precision_dtype

    bundle = make_bundle()
    image = np.tile(nuclei_tile(), (size // 256, size // 256)).astype(np.float32)[None] / 65535 * 4
    dtype = low_precision_dtype(torch.device("cpu"), None)
    for label, dt in (("fp32", None), ("bf16" if dtype else "default", dtype)):
        run_whole = lambda: predict_normalized(bundle.net, image, 3, PredictConfig(tile_size=size), dt)  # noqa: E731
        run_tiled = lambda: predict_normalized(bundle.net, image, 3, PredictConfig(tile_size=512, overlap=64), dt)  # noqa: E731
        t_whole, _ = timeit(run_whole, repeats=2)
        t_tiled, _ = timeit(run_tiled, repeats=2)
        diff = float(np.abs(run_whole() - run_tiled()).max())
        mpx = image.shape[1] * image.shape[2] / 1e6
        print(f"[{label}] {size}² whole {mpx / t_whole:.2f} Mpx/s, tiled 512 {mpx / t_tiled:.2f} Mpx/s, "
              f"tiled/whole time x{t_tiled / t_whole:.2f}, max |difference| {diff:.2e}")


def bench_stream(size: int, threads: int) -> None:
    import zarr

    work = Path(tempfile.mkdtemp(prefix="bench_large_"))
    src = work / "input.zarr"
    tile = nuclei_tile()
    array = zarr.open_array(str(src), mode="w", shape=(size, size), chunks=(1024, 1024), dtype=np.uint16,
                            zarr_format=2)
    reps = -(-size // 256)
    band = np.tile(tile, (4, reps))[:, :size]  # (1024, size)
    for y in range(0, size, 1024):
        array[y:y + 1024] = band[: min(1024, size - y)]
    out = work / "labels.ome.zarr"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(threads)], stdout=subprocess.PIPE,
                            text=True, env=env)  # the child's progress goes to our stderr
    if result.returncode != 0:
        raise SystemExit("streaming child failed")
    r = json.loads(result.stdout.strip().splitlines()[-1])
    mpx = size * size / 1e6
    print(f"stream {size}² zarr -> OME-Zarr ({threads} thread(s)): {r['seconds']:.0f} s, {mpx / r['seconds']:.2f} Mpx/s, "
          f"{r['tiles']} tiles, {r['objects']} objects; peak RSS {r['peak_kib'] / 2**20:.2f} GiB, "
          f"{(r['peak_kib'] - r['base_kib']) / 2**20:.2f} GiB above the loaded model")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


def bench_export() -> None:
    import torch

    from napari_unet.workflows.export import export_model, run_exported

    bundle = make_bundle()
    work = Path(tempfile.mkdtemp(prefix="bench_export_"))
    x = np.random.default_rng(0).random((1, 1, 256, 256)).astype(np.float32)
    rates = {}
    with torch.inference_mode():
        t, _ = timeit(lambda: torch.softmax(bundle.net(torch.from_numpy(x)), 1), repeats=10)
    rates["eager fp32"] = 1 / t
    for fmt in ("torchscript", "onnx"):
        gen = export_model(bundle, work / f"m.{fmt}", fmt)
        for event in gen:
            pass
        path = work / f"m.{fmt}"
        if fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            t, _ = timeit(lambda: session.run(None, {"image": x}), repeats=10)
        else:
            module = torch.jit.load(str(path))
            with torch.inference_mode():
                t, _ = timeit(lambda: module(torch.from_numpy(x)), repeats=10)
        rates[fmt] = 1 / t
        assert np.abs(run_exported(path, x) - torch.softmax(bundle.net(torch.from_numpy(x)), 1).detach().numpy()).max() < 1e-3
    print("export 256² batch 1: " + ", ".join(f"{k} {v:.1f} images/s" for k, v in rates.items())
          + f"; onnx/eager x{rates['onnx'] / rates['eager fp32']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--whole", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--only-stream", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(machine_description())
    if not args.only_stream:
        bench_tiled_vs_whole(args.whole)
        bench_export()
    if not args.skip_stream:
        bench_stream(args.size, args.threads)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
