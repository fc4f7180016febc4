"""Synthetic training pairs: train the diffusion model on dsb2018_fluo, then measure it.

    .venv/bin/python bench/bench_diffusion.py train --minutes 50 --out /tmp/synth_bench/diffusion
    .venv/bin/python bench/bench_diffusion.py evaluate --model /tmp/synth_bench/diffusion --threads 1

``train`` uses the 404 train-split images (tags from ``auto_tags``), one torch thread, and
saves a snapshot every 10 minutes. ``evaluate`` prints the quality figures of docs/benchmarks.md:
mask consistency (Dice of a real-data segmentation model on synthetic images vs the prompt
masks), copying (nearest-neighbour normalised correlation to training crops) and DDIM-50
speed; it writes the sample grid to docs/images/synth_grid.png. Whether synthetic pairs help
is measured by ``bench_diffusion_useful.py``, with a diffusion model that sees only the 3
annotated images (a model trained on all 404 pairs would leak their masks into that test).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import REPO, load_dsb, machine_description, train_as_user  # noqa: E402
from napari_unet.diffusion.bundle import save_diffusion  # noqa: E402
from napari_unet.diffusion.config import DiffusionConfig  # noqa: E402
from napari_unet.diffusion.prompts import auto_tags  # noqa: E402
from napari_unet.diffusion.train import DiffusionTrainer  # noqa: E402
from napari_unet.events import Finished, LossReport, Message, run_to_end  # noqa: E402


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    train = load_dsb("train")
    pairs = [(im, m) for _, im, m in train]
    tags = [auto_tags(m) for _, _, m in train]
    cfg = DiffusionConfig(time_limit=args.minutes * 60, threads=1, seed=args.seed, crop_size=args.crop)
    trainer = DiffusionTrainer(pairs, cfg, tags=tags, names=[n for n, _, _ in train])
    print(machine_description(), flush=True)
    last_save = time.perf_counter()

    def show(event) -> None:
        nonlocal last_save
        if isinstance(event, Message):
            print(event.text, flush=True)
        elif isinstance(event, LossReport) and event.step % 100 < 2:
            print(f"step {event.step} loss {event.loss:.4f} {event.elapsed:.0f}s", flush=True)
        elif isinstance(event, Finished):
            print(f"finished: {event.summary}", flush=True)
        if time.perf_counter() - last_save > 600:
            snap = trainer.snapshot()
            if snap is not None:
                save_diffusion(snap, args.out)
                print(f"snapshot saved at step {snap.meta['training']['steps']}", flush=True)
            last_save = time.perf_counter()

    save_diffusion(run_to_end(trainer.run(), show), args.out)
    print(f"saved {args.out}", flush=True)


def _drive(gen):
    """Run a core generator silently; return its result."""
    return run_to_end(gen)


def segmentation_model(cache: Path, train: list, seconds: float):
    """The real-data segmentation model: the pretrained nuclei model if it is a trained one, else 120 s of core training."""
    from napari_unet.models.bundle import load_bundle, save_bundle
    from napari_unet.workflows.model_spec import resolve_model
    from napari_unet.workflows.train_request import TrainRequest

    try:
        bundle = resolve_model("pretrained:nuclei")
    except Exception:  # absent or unreadable: train our own
        bundle = None
    if bundle is not None and float((bundle.meta.get("val_split") or {}).get("ap50", -1)) >= 0.5:
        return bundle, "pretrained:nuclei"
    if (cache / "model.json").is_file():
        return load_bundle(cache), f"core U-Net, {seconds:.0f} s on the train split (cached {cache})"
    bundle = _drive(train_as_user(train, TrainRequest(time_limit=seconds, seed=0)))  # `train --init none`
    save_bundle(bundle, cache)
    return bundle, f"core U-Net, {seconds:.0f} s on the train split"


def segment(bundle, images: list) -> list:
    from napari_unet.inference.predict import predict_image

    return [predict_image(bundle, im).labels for im in images]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def val_crops(val: list, n: int, size: int, rng: np.random.Generator) -> tuple[list, list]:
    """n (image, mask) crops of val images big enough and holding objects."""
    images, masks = [], []
    for k in rng.permutation(len(val)):
        _, im, m = val[k]
        if min(m.shape) < size:
            continue
        y, x = (int(rng.integers(0, s - size + 1)) for s in m.shape)
        crop = m[y:y + size, x:x + size]
        if np.unique(crop).size < 4:
            continue
        images.append(im[y:y + size, x:x + size])
        masks.append(crop)
        if len(masks) == n:
            break
    return images, masks


def _pool2(x: np.ndarray) -> np.ndarray:
    """2x2 mean pooling (odd edges dropped): shifts of one pixel then barely change a correlation."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    return x[:h, :w].astype(np.float32).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def nn_correlation(samples: list, train_images: list) -> np.ndarray:
    """Per sample: the highest normalised cross-correlation with any training crop of its size.

    Every offset of every training image is tried (FFT correlation at half resolution), and each
    sample in its 8 flips/rotations, since training augments with them.
    """
    views = [np.rot90(t, k) for s in samples for t in (s, s[:, ::-1]) for k in range(4)]
    templ = torch.from_numpy(np.stack([_pool2(v) for v in views]))  # (8N, s, s)
    s = templ.shape[-1]
    templ = templ - templ.mean(dim=(1, 2), keepdim=True)
    templ = templ / templ.flatten(1).norm(dim=1).clamp_min(1e-6).view(-1, 1, 1)
    best = torch.full((templ.shape[0],), -1.0)
    for im in train_images:
        img = torch.from_numpy(_pool2(im))  # (H, W)
        h, w = img.shape
        if h < s or w < s:
            continue
        num = torch.fft.irfft2(torch.fft.rfft2(img)[None] * torch.fft.rfft2(templ, s=(h, w)).conj(), s=(h, w))
        num = num[:, : h - s + 1, : w - s + 1]  # (8N, h', w') sum of template x window
        ii = F.pad(img.double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # integral images
        i2 = F.pad((img.double() ** 2).cumsum(0).cumsum(1), (1, 0, 1, 0))

        def box(t: torch.Tensor) -> torch.Tensor:
            return t[s:, s:] - t[:-s, s:] - t[s:, :-s] + t[:-s, :-s]  # (h', w') window sums

        var = (box(i2) - box(ii) ** 2 / (s * s)).clamp_min(1e-6).sqrt().float()
        best = torch.maximum(best, (num / var).flatten(1).amax(dim=1))
    return best.view(len(samples), 8).amax(dim=1).numpy()


def colour_labels(mask: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 with random bright colours, black background."""
    rng = np.random.default_rng(1)
    lut = np.concatenate([[[0, 0, 0]], rng.integers(60, 256, size=(int(mask.max()) + 1, 3))]).astype(np.uint8)
    return lut[mask.astype(np.int64)]


def save_grid(path: Path, rows: list[list[np.ndarray]]) -> None:
    """Tile rows of (H, W[, 3]) panels with 4 px gaps into one PNG."""
    import imageio.v3 as iio

    panels = [[np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p for p in row] for row in rows]
    h, w, gap = panels[0][0].shape[0], panels[0][0].shape[1], 4
    ncol = max(len(r) for r in panels)
    grid = np.full((len(panels) * (h + gap) - gap, ncol * (w + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(panels):
        for c, p in enumerate(row):
            grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = p
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid)


def quality_figures(args: argparse.Namespace, diff, train: list, val: list, scfg, size: int,
                    rng: np.random.Generator) -> dict:
    """Speed, mask consistency and copying figures; writes the sample grid."""
    from napari_unet.diffusion.config import SampleConfig
    from napari_unet.diffusion.prompts import auto_masks, median_density
    from napari_unet.diffusion.sample import synthesize
    from napari_unet.metrics import evaluate_instances

    figures: dict[str, object] = {}
    # 1. speed: DDIM-50 for one 128² image
    prompt = auto_masks([m for _, _, m in train[:20]], (size, size), count=12, seed=0)
    for guidance, low in ((args.guidance, None), (1.0, None), (args.guidance, False)):
        t0 = time.perf_counter()
        cfg = SampleConfig(steps=50, guidance=guidance, batch_size=1, threads=args.threads, low_precision=low)
        _drive(synthesize(diff, [prompt], cfg, [auto_tags(prompt)]))
        ms = (time.perf_counter() - t0) * 1000 / 50
        precision = "fp32" if low is False else "auto precision"
        figures[f"ms_per_step_guidance_{guidance:g}_{precision.replace(' ', '_')}"] = round(ms, 1)
        print(f"speed: DDIM-50, 128², guidance {guidance:g}, {precision}, {args.threads} thread(s): {ms:.0f} ms/step, "
              f"{ms * 50 / 1000:.1f} s/image", flush=True)

    # 2. mask consistency: prompts are unseen val layouts (and automatic ones); Dice of a real-data model
    seg, seg_name = segmentation_model(Path(args.cache) / "seg", train, 120.0)
    print(f"segmentation model: {seg_name}", flush=True)
    real_images, prompts = val_crops(val, args.n_prompts, size, rng)
    autos = [auto_masks([m for _, _, m in train], (size, size),
                        density=median_density([m for _, _, m in train]), seed=100 + k) for k in range(args.n_auto)]
    all_prompts = prompts + autos
    synthetic = _drive(synthesize(diff, all_prompts, scfg, [auto_tags(m) for m in all_prompts]))
    pred_syn = segment(seg, synthetic)
    pred_real = segment(seg, real_images)
    d_syn = [dice(p, m) for p, m in zip(pred_syn, all_prompts)]
    d_real = [dice(p, m) for p, m in zip(pred_real, prompts)]
    ap_syn = evaluate_instances(list(zip(pred_syn, all_prompts)))["ap50"]
    ap_real = evaluate_instances(list(zip(pred_real, prompts)))["ap50"]
    figures["mask_consistency"] = {"dice_synthetic_vs_prompt": round(float(np.mean(d_syn)), 3),
                                   "dice_val_layout_prompts": round(float(np.mean(d_syn[:len(prompts)])), 3),
                                   "dice_auto_prompts": round(float(np.mean(d_syn[len(prompts):])), 3),
                                   "dice_real_crops_vs_gt": round(float(np.mean(d_real)), 3),
                                   "ap50_synthetic_vs_prompt": round(float(ap_syn), 3),
                                   "ap50_real_crops_vs_gt": round(float(ap_real), 3),
                                   "segmentation_model": seg_name, "n": len(all_prompts)}
    print(f"mask consistency: {figures['mask_consistency']}", flush=True)

    grid_rows = []
    for k in range(min(4, len(prompts))):
        lo, hi = np.percentile(real_images[k], (1, 99.8))  # the real crop contrast-stretched like the model's
        real = np.clip((real_images[k].astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        grid_rows.append([colour_labels(prompts[k]), synthetic[k], real])
    for k in range(min(2, len(autos))):
        grid_rows.append([colour_labels(autos[k]), synthetic[len(prompts) + k], np.zeros_like(synthetic[0])])
    save_grid(REPO / "docs" / "images" / "synth_grid.png", grid_rows)

    # 3. copying: best normalised correlation with any window of any training image
    train_imgs = [im for _, im, _ in train]
    nn_all = nn_correlation(synthetic + real_images, train_imgs)
    nn_syn, nn_real = nn_all[:len(synthetic)], nn_all[len(synthetic):]
    figures["nn_correlation"] = {"synthetic_median": round(float(np.median(nn_syn)), 3),
                                 "synthetic_max": round(float(nn_syn.max()), 3),
                                 "real_val_crops_median": round(float(np.median(nn_real)), 3),
                                 "real_val_crops_max": round(float(nn_real.max()), 3)}
    print(f"nearest-neighbour correlation: {figures['nn_correlation']}", flush=True)

    return figures


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from napari_unet.diffusion.bundle import load_diffusion
    from napari_unet.diffusion.config import SampleConfig

    torch.set_num_threads(args.threads)
    print(machine_description(), flush=True)
    rng = np.random.default_rng(0)
    train, val = load_dsb("train"), load_dsb("val")
    diff = load_diffusion(args.model)
    print(f"diffusion model: {diff.meta['training']} ", flush=True)
    scfg = SampleConfig(steps=args.steps, guidance=args.guidance, seed=0, batch_size=4, threads=args.threads)
    figures: dict[str, object] = {"diffusion_training": diff.meta["training"], "sampling": {"steps": args.steps,
                                                                                           "guidance": args.guidance}}
    figures.update(quality_figures(args, diff, train, val, scfg, 128, rng))
    out = REPO / "bench" / "results" / "diffusion.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--minutes", type=float, default=50.0)
    t.add_argument("--out", default="/tmp/synth_bench/diffusion")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--crop", type=int, default=64)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate")
    e.add_argument("--model", default="/tmp/synth_bench/diffusion")
    e.add_argument("--cache", default="/tmp/synth_bench")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--steps", type=int, default=50)
    e.add_argument("--guidance", type=float, default=2.0)
    e.add_argument("--n-prompts", type=int, default=12, help="val-layout prompts for mask consistency")
    e.add_argument("--n-auto", type=int, default=4, help="automatic prompts for mask consistency")
    e.set_defaults(func=cmd_evaluate)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
