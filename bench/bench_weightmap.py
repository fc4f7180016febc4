"""Benchmark: U-Net border weight map (windowed, ours) vs brute force (one EDT per object).

Run: ``.venv/bin/python bench/bench_weightmap.py [--repeats N]``

Cases: 1024x1024 with 500 synthetic disks (radius 8-15 px, about a third placed touching a
neighbour), the largest DSB2018 mask (1040x1388) and the DSB2018 mask with the most
objects, and a 512x512 / 125-disk case where the brute force is also run. Target: < 0.5 s
for the 1024x1024 / 500-object case.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DSB, timeit  # noqa: E402
from napari_unet.data.weights import border_weight_map, border_weight_map_bruteforce  # noqa: E402

MASKS = DSB / "masks"
TARGET_S = 0.5




def synthetic_disks(shape: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """(H, W) int32 instances: ``n`` non-overlapping disks, ~1/3 placed touching another."""
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, np.int32)
    placed: list[tuple[float, float, int]] = []
    for _ in range(200 * n):
        if len(placed) == n:
            break
        r = int(rng.integers(8, 16))
        touch = bool(placed) and rng.random() < 0.35
        if touch:  # abut a random existing disk (a few shared-edge pixels are clipped)
            cy, cx, r0 = placed[int(rng.integers(len(placed)))]
            ang = rng.uniform(0, 2 * np.pi)
            cy, cx = cy + (r0 + r) * np.sin(ang), cx + (r0 + r) * np.cos(ang)
        else:
            cy, cx = rng.uniform(r, shape[0] - r), rng.uniform(r, shape[1] - r)
        rr, cc = disk((cy, cx), r, shape=shape)
        taken = inst[rr, cc] > 0
        if rr.size == 0 or taken.mean() > (0.1 if touch else 0.0):
            continue
        placed.append((cy, cx, r))
        inst[rr[~taken], cc[~taken]] = len(placed)
    return inst


def touching_pairs(inst: np.ndarray) -> int:
    """Number of distinct pairs of instances that are 4-adjacent."""
    pairs = set()
    for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1], inst[1:])):
        m = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist())}
    return len(pairs)


def describe(inst: np.ndarray) -> str:
    n = len(np.unique(inst[inst > 0]))
    return f"{inst.shape[0]}x{inst.shape[1]}, {n} objects, {touching_pairs(inst)} touching pairs"


def dsb_masks() -> list[tuple[str, np.ndarray]]:
    """The largest DSB2018 mask and the one with the most objects (if the data is there)."""
    import imageio.v3 as iio

    files = sorted(MASKS.glob("*.png"))
    if not files:
        return []
    largest = max(files, key=lambda f: int(np.prod(iio.improps(f).shape[:2])))
    counts = {f: int(iio.imread(f).max()) for f in files}  # max id as a proxy for the count
    most = max(files, key=lambda f: counts[f])
    out = [(f"DSB largest {largest.name}", iio.imread(largest).astype(np.int32))]
    if most != largest:
        out.append((f"DSB most objects {most.name}", iio.imread(most).astype(np.int32)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"machine: {platform.machine()} cpu_count={os.cpu_count()}  numpy={np.__version__}  "
          f"(scipy EDT is single-threaded; torch not used)  load avg (1 min)={os.getloadavg()[0]:.2f}")
    print("weights: w0=10, sigma=5, tol=1e-3 (window margin R = sigma*sqrt(2 ln(w0/tol)) = "
          f"{5 * np.sqrt(2 * np.log(10 / 1e-3)):.1f} px)\n")

    big = synthetic_disks((1024, 1024), 500, seed=0)
    cases = [("synthetic 1024x1024 / 500 disks", big)] + dsb_masks()
    print(f"{'case':<42} {'content':<44} {'median s':>9} {'min s':>8}")
    results = {}
    for name, inst in cases:
        med, best = timeit(lambda: border_weight_map(inst), args.repeats)
        results[name] = med
        print(f"{name:<42} {describe(inst):<44} {med:>9.3f} {best:>8.3f}")

    small = synthetic_disks((512, 512), 125, seed=1)
    fast_med, _ = timeit(lambda: border_weight_map(small), args.repeats)
    t0 = time.perf_counter()
    ref = border_weight_map_bruteforce(small)
    brute = time.perf_counter() - t0
    err = float(np.abs(border_weight_map(small) - ref).max())
    print(f"\nbrute force vs windowed, synthetic 512x512 ({describe(small)}):")
    print(f"  brute force {brute:.3f} s, windowed {fast_med:.4f} s -> {brute / fast_med:.0f}x faster; "
          f"max |diff| = {err:.2e} (bound: tol = 1e-3)")
    t0 = time.perf_counter()
    ndi.distance_transform_edt(big != 1)
    one_edt = time.perf_counter() - t0
    print(f"  brute force at 1024x1024 / 500 objects would need >= 500 full EDTs = "
          f"~{500 * one_edt:.1f} s (one EDT {one_edt * 1e3:.0f} ms), i.e. "
          f"~{500 * one_edt / results[cases[0][0]]:.0f}x the windowed time")

    t = results[cases[0][0]]
    verdict = "meets" if t < TARGET_S else "misses"
    print(f"\nsummary: 1024x1024 / 500 objects in {t:.3f} s (median) -> {verdict} the {TARGET_S} s target; "
          + "; ".join(f"{n}: {results[n]:.3f} s" for n, _ in cases[1:]))


if __name__ == "__main__":
    main()
