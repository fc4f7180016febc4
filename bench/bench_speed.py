"""Benchmark: training and inference speed of our default U-Net vs a plain fp32 classic U-Net.

Run: ``.venv/bin/python bench/bench_speed.py [--patch P] [--batch B] [--sweep] [--variants] [--device cuda]``

* ours: ``build_network(TrainConfig())`` (3 output classes), trained exactly as
  ``training/engine.py`` does one step: channels_last + autocast when
  ``low_precision_dtype(cpu, None)`` picks a dtype, ``segmentation_loss``, AdamW.
  Inference goes through ``inference.predict.network_forward`` (softmax, numpy out).
* classic: a textbook U-Net written here (two 3x3 conv+BN+ReLU per level, max-pool,
  ConvTranspose2d up, concat, padding=1, 1x1 head) at the same depth and base width,
  fp32, contiguous NCHW, plain cross-entropy, the same AdamW; same input and batch.
* Both are timed interleaved (ours, classic, ours, ...) in one process, so background load
  hits both alike; medians, ratio of medians and the median of per-pair ratios are printed.
* Achieved GFLOP/s (conv FLOPs from ``estimate_flops``; training = 3x forward) vs the
  measured fp32 / bf16 ``torch.matmul`` peak of this machine.

Data sampling and augmentation are not part of the timed training step. With ``--device cuda``
everything runs on the GPU (ours with the AMP dtype the engine picks there, classic in fp32 with
PyTorch's default cuDNN settings); each timed call ends with a device synchronisation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from napari_unet.runtime.threads import prefer_passive_wait  # noqa: E402

WAIT_POLICY = prefer_passive_wait()  # as `napari-unet` does: before torch loads, or it changes nothing

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import machine_description  # noqa: E402
from napari_unet.config import TrainConfig, UNetConfig  # noqa: E402
from napari_unet.heads.losses import segmentation_loss  # noqa: E402
from napari_unet.inference.predict import network_forward  # noqa: E402
from napari_unet.models import count_parameters, estimate_flops  # noqa: E402
from napari_unet.models.batchnorm import with_stock_batchnorm  # noqa: E402
from napari_unet.models.bundle import build_network  # noqa: E402
from napari_unet.runtime.device import autocast, default_sizes, low_precision_dtype, resolve_device  # noqa: E402

DEV = torch.device("cpu")  # set from --device in main()
Step = Callable[[], None]


# --------------------------------------------------------------------------- classic U-Net
class DoubleConv(nn.Module):
    """(3x3 conv, padding 1 -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H, W)."""
        return self.body(x)


class ClassicUNet(nn.Module):
    """Textbook 2D U-Net: ``depth`` poolings, widths ``base * 2**level``, input size a
    multiple of ``2**depth``."""

    def __init__(self, in_ch: int, out_ch: int, depth: int, base: int) -> None:
        super().__init__()
        widths = [base * 2**lv for lv in range(depth + 1)]
        ins = [in_ch] + widths[:-1]
        self.down = nn.ModuleList(DoubleConv(ins[lv], widths[lv]) for lv in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[depth - 1] if depth else in_ch, widths[depth])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[lv + 1], widths[lv], 2, stride=2) for lv in range(depth))
        self.dec = nn.ModuleList(DoubleConv(2 * widths[lv], widths[lv]) for lv in range(depth))
        self.head = nn.Conv2d(widths[0], out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) -> logits (B, out_ch, H, W)."""
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for lv in reversed(range(len(self.up))):
            x = self.dec[lv](torch.cat([skips[lv], self.up[lv](x)], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------- steps
@dataclass
class Batch:
    """One synthetic training batch: images (B, C, P, P), targets (B, P, P), weights (B, P, P)."""

    images: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor


@dataclass
class Result:
    """Per-round seconds of 'ours', 'classic', 'mm fp32', 'mm bf16'; median paired speed-up."""

    times: dict[str, list[float]]
    ratio: float


def make_batch(batch: int, channels: int, patch: int, classes: int, seed: int = 0) -> Batch:
    """Random normalised images, random class targets and U-Net-like weights in [1, 10]."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, channels, patch, patch, generator=gen)
    targets = torch.randint(0, classes, (batch, patch, patch), generator=gen)
    weights = 1.0 + 9.0 * torch.rand(batch, patch, patch, generator=gen)
    return Batch(images.to(DEV), targets.to(DEV), weights.to(DEV))


def ours_train_step(net: nn.Module, data: Batch, dtype: torch.dtype | None, channels_last: bool,
                    dice_weight: float) -> Step:
    """One optimiser step as ``Trainer.run`` does it (channels_last, autocast, AdamW)."""
    net.to(DEV)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4)

    def step() -> None:
        images = data.images
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(DEV, dtype):
            logits = net(images)  # (B, K, P, P)
        loss = segmentation_loss(logits, data.targets, data.weights, dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())

    return step


def classic_train_step(net: nn.Module, data: Batch) -> Step:
    """One plain fp32 NCHW step: forward, cross-entropy, backward, AdamW."""
    net.to(DEV).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4)

    def step() -> None:
        loss = F.cross_entropy(net(data.images), data.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())

    return step


def ours_infer_step(net: nn.Module, image: np.ndarray, dtype: torch.dtype | None, channels_last: bool) -> Step:
    """``network_forward`` on a (1, C, H, W) array (softmax probabilities to numpy); the project
    ties channels_last to low precision, other combinations are run by hand."""
    net.to(DEV).eval()
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def step() -> None:
        if channels_last == (dtype is not None):  # the combination network_forward uses
            network_forward(net, image, dtype)
        else:  # other combinations (--variants): same work, memory format as asked
            x = torch.from_numpy(image).to(DEV)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast(DEV, dtype):
                net(x).float().softmax(dim=1).cpu().numpy()

    return step


def classic_infer_step(net: nn.Module, image: np.ndarray) -> Step:
    """Plain fp32 forward + softmax to numpy under ``torch.inference_mode``."""
    net.to(DEV).eval()

    def step() -> None:
        with torch.inference_mode():
            net(torch.from_numpy(image).to(DEV)).softmax(dim=1).cpu().numpy()

    return step


def time_interleaved(steps: dict[str, Step], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each step, calling them round-robin ``warmup`` + ``repeats`` times.

    Also records this process's CPU seconds per call in ``CPU_SECONDS`` (same keys).
    """
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    if DEV.type == "cuda":
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for name in steps:
        CPU_SECONDS[name] = []
    for _ in range(repeats):
        for name, fn in steps.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            if DEV.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            CPU_SECONDS[name].append(time.process_time() - c0)
    return times


CPU_SECONDS: dict[str, list[float]] = {}


def cpu_share(name: str, wall: list[float]) -> str:
    """'cpu 1.93/2 thr': process CPU seconds per wall second of step ``name`` vs torch threads."""
    return f"cpu {sum(CPU_SECONDS[name]) / sum(wall):.2f}/{torch.get_num_threads()} thr"


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median of per-round time ratios slow/fast (robust to load drifting between rounds)."""
    return statistics.median(s / f for s, f in zip(slow, fast))


# --------------------------------------------------------------------------- peak
PEAK_N = 2048  # matmul size for the peak measurement (8192 on a GPU, set in main())
PEAK_GFLOP = 2 * PEAK_N**3 / 1e9


def matmul_steps() -> dict[str, Step]:
    """``PEAK_N``-square ``torch.matmul`` calls in fp32 and bf16, keyed 'mm fp32' / 'mm bf16'."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(PEAK_N, PEAK_N, generator=gen).to(DEV)
    b = torch.randn(PEAK_N, PEAK_N, generator=gen).to(DEV)
    a16, b16 = a.bfloat16(), b.bfloat16()

    def fp32() -> None:
        torch.matmul(a, b)

    def bf16() -> None:
        torch.matmul(a16, b16)

    return {"mm fp32": fp32, "mm bf16": bf16}


def matmul_peaks(repeats: int) -> dict[str, tuple[float, float]]:
    """(median, best) GFLOP/s of the ``matmul_steps``, interleaved, keyed 'fp32' / 'bf16'."""
    t = time_interleaved(matmul_steps(), repeats, warmup=2)
    return {k.split()[-1]: (PEAK_GFLOP / statistics.median(v), PEAK_GFLOP / min(v)) for k, v in t.items()}


# --------------------------------------------------------------------------- sections
def fmt_mpix(pixels: int, seconds: float) -> str:
    """Megapixels per second, formatted."""
    return f"{pixels / seconds / 1e6:7.3f} MPix/s"


def train_section(mcfg: UNetConfig, args: argparse.Namespace, dtype: torch.dtype | None) -> Result:
    """Time ours vs classic training steps."""
    torch.manual_seed(0)
    tcfg = replace(TrainConfig(), model=mcfg)
    ours = build_network(tcfg)
    classic = ClassicUNet(mcfg.in_channels, 3, mcfg.depth, mcfg.base_width)
    data = make_batch(args.batch, mcfg.in_channels, args.patch, 3)
    channels_last = dtype is not None and mcfg.dims == 2
    print(f"params: ours {count_parameters(ours):,}  classic {count_parameters(classic):,}")
    steps = {"ours": ours_train_step(ours, data, dtype, channels_last, tcfg.loss.dice_weight),
             "classic": classic_train_step(classic, data), **matmul_steps()}
    t = time_interleaved(steps, args.steps, args.warmup)
    med = {k: statistics.median(v) for k, v in t.items()}
    pixels = args.batch * args.patch**2
    print(f"\n== training step, batch {args.batch} x {args.patch}x{args.patch}, "
          f"median of {args.steps} after {args.warmup} warm-up (interleaved)")
    for name, label in (("ours", f"ours ({_prec(dtype, channels_last)})"), ("classic", "classic fp32 NCHW")):
        print(f"  {label:40s} {med[name]:7.3f} s/step  {fmt_mpix(pixels, med[name])}  "
              f"(min {min(t[name]):.3f}, max {max(t[name]):.3f}, {cpu_share(name, t[name])})")
    ratio = paired_ratio(t["classic"], t["ours"])
    print(f"  speed-up: x{med['classic'] / med['ours']:.2f} (ratio of medians), x{ratio:.2f} "
          f"(median paired), x{min(t['classic']) / min(t['ours']):.2f} (ratio of minima)")
    return Result(t, ratio)


def infer_section(mcfg: UNetConfig, args: argparse.Namespace, dtype: torch.dtype | None) -> Result:
    """Time ours vs classic inference on one (1, C, S, S) image."""
    torch.manual_seed(0)
    ours = build_network(replace(TrainConfig(), model=mcfg))
    classic = ClassicUNet(mcfg.in_channels, 3, mcfg.depth, mcfg.base_width)
    size = args.infer_size
    image = np.random.default_rng(0).standard_normal((1, mcfg.in_channels, size, size)).astype(np.float32)
    channels_last = dtype is not None
    steps = {"ours": ours_infer_step(ours, image, dtype, channels_last),
             "classic": classic_infer_step(classic, image), **matmul_steps()}
    t = time_interleaved(steps, args.infer_repeats, warmup=2)
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"\n== inference, 1x{mcfg.in_channels}x{size}x{size}, median of {args.infer_repeats} (interleaved)")
    for name, label in (("ours", f"ours ({_prec(dtype, channels_last)})"), ("classic", "classic fp32 NCHW")):
        print(f"  {label:40s} {med[name] * 1e3:7.1f} ms/img  {fmt_mpix(size * size, med[name])}  "
              f"(min {min(t[name]) * 1e3:.1f}, max {max(t[name]) * 1e3:.1f}, {cpu_share(name, t[name])})")
    ratio = paired_ratio(t["classic"], t["ours"])
    print(f"  speed-up: x{med['classic'] / med['ours']:.2f} (ratio of medians), x{ratio:.2f} "
          f"(median paired), x{min(t['classic']) / min(t['ours']):.2f} (ratio of minima)")
    return Result(t, ratio)


def _prec(dtype: torch.dtype | None, channels_last: bool) -> str:
    """'bf16 autocast + channels_last' style label."""
    p = f"{str(dtype).split('.')[-1]} autocast" if dtype is not None else "fp32"
    return p + (" + channels_last" if channels_last else " NCHW")


def variants_section(mcfg: UNetConfig, args: argparse.Namespace) -> None:
    """Our default model under each precision x memory-format combination, interleaved, plus
    the default settings with PyTorch's own BatchNorm2d instead of ``WideBatchNorm2d``."""
    combos = [(torch.bfloat16, True), (torch.bfloat16, False), (None, True), (None, False)]
    stock_label = _prec(torch.bfloat16, True) + ", stock BatchNorm2d"
    data = make_batch(args.batch, mcfg.in_channels, args.patch, 3)
    size = args.infer_size
    image = np.random.default_rng(0).standard_normal((1, mcfg.in_channels, size, size)).astype(np.float32)
    tcfg = replace(TrainConfig(), model=mcfg)
    train_steps: dict[str, Step] = {}
    infer_steps: dict[str, Step] = {}
    for dtype, cl in combos:
        torch.manual_seed(0)
        train_steps[_prec(dtype, cl)] = ours_train_step(build_network(tcfg), data, dtype, cl, 0.0)
        torch.manual_seed(0)
        infer_steps[_prec(dtype, cl)] = ours_infer_step(build_network(tcfg), image, dtype, cl)
    torch.manual_seed(0)
    train_steps[stock_label] = ours_train_step(with_stock_batchnorm(build_network(tcfg)), data, torch.bfloat16,
                                               True, 0.0)
    torch.manual_seed(0)
    infer_steps[stock_label] = ours_infer_step(with_stock_batchnorm(build_network(tcfg)), image, torch.bfloat16, True)
    tt = time_interleaved(train_steps, args.steps, args.warmup)
    ti = time_interleaved(infer_steps, args.infer_repeats, warmup=2)
    base = _prec(torch.bfloat16, True)
    print(f"\n== our model, settings (train batch {args.batch}x{args.patch}^2; inference 1x{size}^2; "
          f"x = speed vs {base})")
    for name in train_steps:
        mt, mi = statistics.median(tt[name]), statistics.median(ti[name])
        print(f"  {name:58s} train {fmt_mpix(args.batch * args.patch**2, mt)} "
              f"x{paired_ratio(tt[base], tt[name]):.2f}   infer {fmt_mpix(size * size, mi)} "
              f"x{paired_ratio(ti[base], ti[name]):.2f}")


def sweep_section(args: argparse.Namespace, dtype: torch.dtype | None) -> None:
    """Our model's training / inference speed for several base widths (default settings),
    all widths timed interleaved."""
    size = args.infer_size
    print(f"\n== sweep over base_width (ours, {_prec(dtype, dtype is not None)}, "
          f"train batch {args.batch}x{args.patch}^2, inference 1x{size}^2, interleaved)")
    image = np.random.default_rng(0).standard_normal((1, 1, size, size)).astype(np.float32)
    data = make_batch(args.batch, 1, args.patch, 3)
    train_steps: dict[str, Step] = {}
    infer_steps: dict[str, Step] = {}
    info: dict[str, tuple[int, float]] = {}
    for width in args.sweep_widths:
        mcfg = replace(TrainConfig().model, base_width=width)
        tcfg = replace(TrainConfig(), model=mcfg)
        key = str(width)
        torch.manual_seed(0)
        net = build_network(tcfg)
        info[key] = (count_parameters(net), estimate_flops(mcfg, (args.patch, args.patch)) / 1e9)
        train_steps[key] = ours_train_step(net, data, dtype, dtype is not None, 0.0)
        torch.manual_seed(0)
        infer_steps[key] = ours_infer_step(build_network(tcfg), image, dtype, dtype is not None)
    tt = time_interleaved(train_steps, max(3, args.steps // 2), 1)
    ti = time_interleaved(infer_steps, max(3, args.infer_repeats // 2), 1)
    ref = str(TrainConfig().model.base_width)
    print(f"  {'width':>5} {'params':>10} {'GFLOP/patch':>12} {'train MPix/s':>13} {'infer MPix/s':>13}"
          + (f"  (x = speed vs width {ref})" if ref in tt else ""))
    for key, (params, gflop) in info.items():
        rel_t = f" x{paired_ratio(tt[ref], tt[key]):.2f}" if ref in tt else ""
        rel_i = f" x{paired_ratio(ti[ref], ti[key]):.2f}" if ref in ti else ""
        print(f"  {key:>5} {params:10,d} {gflop:12.1f} "
              f"{args.batch * args.patch**2 / statistics.median(tt[key]) / 1e6:13.3f}{rel_t:7s} "
              f"{size**2 / statistics.median(ti[key]) / 1e6:13.3f}{rel_i}")


def main() -> None:
    """Parse options, run the sections, print the summary line."""
    defaults = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=defaults.patch_size, help="training patch size (default: the device's)")
    ap.add_argument("--batch", type=int, default=defaults.batch_size, help="training batch size (default: the device's)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per model")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up training steps per model")
    ap.add_argument("--infer-size", type=int, default=512, help="inference image size")
    ap.add_argument("--infer-repeats", type=int, default=8, help="timed inference calls per model")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--sweep", action="store_true", help="also time our model for several base widths")
    ap.add_argument("--sweep-widths", type=int, nargs="+", default=[16, 32], help="widths for --sweep")
    ap.add_argument("--variants", action="store_true",
                    help="also time our model with bf16/fp32 x channels_last on/off")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where both models run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEV, PEAK_N, PEAK_GFLOP
    DEV = resolve_device(args.device)
    batch, patch = default_sizes(DEV)  # what training uses when they are left unset
    args.batch, args.patch = args.batch or batch, args.patch or patch
    if DEV.type == "cuda":
        PEAK_N = 8192
        PEAK_GFLOP = 2 * PEAK_N**3 / 1e9

    print(machine_description())
    print(f"load average at start: {os.getloadavg()[0]:.2f}, OMP_WAIT_POLICY in effect: "
          f"{WAIT_POLICY} ('cpu x/N thr' below = process CPU s per wall s; "
          f"other processes on these cores slow multi-threaded steps a lot)")
    mcfg = replace(defaults.model, out_channels=3)
    dtype = low_precision_dtype(DEV, None)
    print(f"model: UNet depth {mcfg.depth}, base_width {mcfg.base_width}, norm {mcfg.norm}, "
          f"upsample {mcfg.upsample}; device {DEV}; low_precision_dtype = {dtype}; "
          f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}")

    reps = 9
    peaks = matmul_peaks(reps)
    print(f"matmul peak ({PEAK_N}x{PEAK_N}, {reps} interleaved; median / best GFLOP/s): "
          + ", ".join(f"{k} {med:.1f} / {best:.1f}" for k, (med, best) in peaks.items())
          + f" (bf16/fp32 x{peaks['bf16'][0] / peaks['fp32'][0]:.2f} median)")

    train = train_section(mcfg, args, dtype)
    infer = infer_section(mcfg, args, dtype)

    name = "bf16" if dtype is not None else "fp32"
    flop_train = 3 * estimate_flops(mcfg, (args.batch, mcfg.in_channels, args.patch, args.patch)) / 1e9
    flop_infer = estimate_flops(mcfg, (1, mcfg.in_channels, args.infer_size, args.infer_size)) / 1e9
    print(f"\n== achieved conv GFLOP/s of our model (training = 3x forward = {flop_train:.0f} GFLOP/step, "
          f"inference {flop_infer:.0f} GFLOP/img); fractions = median over rounds of model rate / matmul rate "
          f"timed in the same round")
    for label, flop, res in (("training", flop_train, train), ("inference", flop_infer, infer)):
        t = res.times
        rates = [flop / x for x in t["ours"]]
        frac = {k: statistics.median(r * y / PEAK_GFLOP for r, y in zip(rates, t[f"mm {k}"])) for k in ("fp32", "bf16")}
        peak_med = {k: PEAK_GFLOP / statistics.median(t[f"mm {k}"]) for k in ("fp32", "bf16")}
        print(f"  {label:9s} {statistics.median(rates):6.1f} GFLOP/s (best {max(rates):6.1f}) = "
              f"{frac[name]:5.1%} of {name} peak, {frac['fp32']:5.1%} of fp32 peak "
              f"(peaks in these rounds: fp32 {peak_med['fp32']:.0f}, bf16 {peak_med['bf16']:.0f} GFLOP/s)")

    if args.variants:
        variants_section(mcfg, args)
    if args.sweep:
        sweep_section(args, dtype)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print(f"speed: train x{train.ratio:.2f}, inference x{infer.ratio:.2f} vs fp32 classic U-Net "
          f"(same depth/width; median paired ratios; train {args.batch}x{args.patch}^2, "
          f"inference 1x{args.infer_size}^2)")


if __name__ == "__main__":
    main()
