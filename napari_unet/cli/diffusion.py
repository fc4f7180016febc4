"""``napari-unet synth train | generate``: the diffusion model from the command line.

    napari-unet synth train IMAGES_DIR MASKS_DIR --out DIFF_DIR [--time-limit SECONDS] [--unannotated DIR]
    napari-unet synth generate DIFF_DIR (--masks MASK_DIR | --count N) --out OUT_DIR
        [--steps 50] [--guidance G] [--seed N]

``generate`` writes ``OUT_DIR/images/<stem>.tif`` and ``OUT_DIR/masks/<stem>.tif``.
``napari_unet.cli`` registers these with ``add_synth_parser``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from napari_unet.errors import UserError


def read_tags(path: str | Path) -> dict[str, list[str]]:
    """A CSV of ``name,tags`` rows (tags separated by spaces) -> {file stem: tags}."""
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
    except OSError as exc:
        raise UserError(f"cannot read tags file {path}: {exc.strerror or exc}") from None
    if rows and rows[0][0].strip().lower() in ("name", "image", "file"):
        rows = rows[1:]
    return {Path(r[0].strip()).stem: (r[1].split() if len(r) > 1 else []) for r in rows}


def cmd_synth_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from napari_unet.cli.drive import drive
    from napari_unet.diffusion.bundle import save_diffusion
    from napari_unet.diffusion.config import DiffusionConfig
    from napari_unet.diffusion.prompts import auto_tags
    from napari_unet.diffusion.train import DiffusionTrainer
    from napari_unet.files.io import list_images, pair_files, read_image, read_mask

    if args.time_limit is not None and args.time_limit <= 0:
        raise UserError("--time-limit must be positive")
    if args.steps is not None and args.steps <= 0:
        raise UserError("--steps must be positive")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    files = pair_files(args.images, args.masks)
    images = [read_image(i) for i, _ in files]
    masks = [read_mask(m) for _, m in files]
    unannotated = []
    if args.unannotated:
        paths = list_images([args.unannotated])
        if not paths:
            raise UserError(f"no images found in --unannotated {args.unannotated}")
        unannotated = [read_image(p) for p in paths]
    tags = None
    if args.tags:
        table = read_tags(args.tags)
        tags = [table.get(i.stem, []) for i, _ in files]
    elif args.auto_tags:
        tags = [auto_tags(m) for m in masks]
    cfg = DiffusionConfig(time_limit=args.time_limit, steps=args.steps, device=args.device, seed=args.seed,
                          crop_size=args.crop_size, batch_size=args.batch_size,
                          unannotated_share=args.unannotated_share)
    if args.time_limit is None and args.steps is None:
        cfg = replace(cfg, time_limit=DiffusionConfig.time_limit)
    trainer = DiffusionTrainer(list(zip(images, masks)), cfg, tags=tags, names=[i.name for i, _ in files],
                               unannotated=unannotated)
    bundle = drive(trainer.run(), "diffusion training", args.quiet)
    save_diffusion(bundle, out)
    print(f"saved diffusion model to {out} ({bundle.meta['training']['steps']} steps)")
    return 0


def _prompts(args: argparse.Namespace, bundle) -> tuple[list[str], list]:
    """(stems, masks) from --masks or automatic layouts for --count."""
    from napari_unet.diffusion.auto_prompts import auto_prompts
    from napari_unet.files.io import list_images, read_mask

    if args.masks:
        paths = list_images([args.masks])
        if not paths:
            raise UserError(f"no mask images found in {args.masks}")
        return [p.stem for p in paths], [read_mask(p) for p in paths]
    if args.vary and args.objects is not None:  # the flags' own words; auto_prompts checks the rule too
        raise UserError("--vary sets each image's object count from --density; leave out --objects")
    source = [read_mask(p) for p in list_images([args.source_masks])] if args.source_masks else None
    masks = auto_prompts(bundle, args.count, args.size, args.seed, source_masks=source, density=args.density,
                         objects=args.objects, vary=args.vary)
    width = max(4, len(str(args.count - 1)))
    return [f"synth_{k:0{width}d}" for k in range(args.count)], masks


def cmd_synth_generate(args: argparse.Namespace) -> int:
    from napari_unet.cli.drive import drive
    from napari_unet.diffusion.bundle import load_diffusion
    from napari_unet.diffusion.config import SampleConfig
    from napari_unet.diffusion.sample import synthesize
    from napari_unet.files.io import labels_dtype, write_image
    from napari_unet.runtime.device import resolve_device

    if args.steps <= 0:
        raise UserError("--steps must be positive")
    if args.guidance < 0:
        raise UserError("--guidance must be >= 0")
    bundle = load_diffusion(args.model, resolve_device(args.device))
    stems, masks = _prompts(args, bundle)
    tags = [args.tags.split()] * len(masks) if args.tags else None
    cfg = SampleConfig(steps=args.steps, guidance=args.guidance, seed=args.seed, device=args.device, eta=args.eta)
    images = drive(synthesize(bundle, masks, cfg, tags), "synthesizing", args.quiet)
    out = Path(args.out)
    for stem, image, mask in zip(stems, images, masks):
        write_image(out / "images" / f"{stem}.tif", image)
        write_image(out / "masks" / f"{stem}.tif", mask.astype(labels_dtype(int(mask.max()))))
    print(f"wrote {len(images)} synthetic pair(s) to {out}/images and {out}/masks")
    return 0


def add_synth_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``synth train`` and ``synth generate`` under the main parser's subcommands."""
    from napari_unet.config import DEVICES, SETTINGS
    from napari_unet.diffusion.auto_prompts import PROMPT_SIZE
    from napari_unet.diffusion.config import DiffusionConfig, SampleConfig

    ddef, sdef = DiffusionConfig(), SampleConfig()  # defaults come from the config dataclasses
    s = sub.add_parser("synth", help="diffusion model that turns mask prompts into synthetic training pairs")
    ss = s.add_subparsers(dest="synth_command", required=True)

    t = ss.add_parser("train", help="train the diffusion model on image/mask folders")
    t.add_argument("images", help="folder of images")
    t.add_argument("masks", help="folder of instance masks matched to images by file name")
    t.add_argument("--out", required=True, help="diffusion model folder to write")
    t.add_argument("--time-limit", type=float, default=None, help=f"seconds (default {ddef.time_limit:g} when no --steps)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--crop-size", type=int, default=ddef.crop_size,
                   help="training crop side (multiple of 4; default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=ddef.batch_size, help="default: %(default)s")
    t.add_argument("--tags", default=None, help="CSV of name,tags (space-separated style tags per image)")
    t.add_argument("--auto-tags", action="store_true", help="tag images by object density and size")
    t.add_argument("--unannotated", default=None,
                   help="folder of images without masks: the model learns their look too (unconditional crops)")
    t.add_argument("--unannotated-share", type=float, default=ddef.unannotated_share,
                   help="share of training crops from --unannotated images (0 to <1; default: %(default)s)")
    t.add_argument(*SETTINGS["device"].flags, default=ddef.device, choices=DEVICES)
    t.add_argument("--seed", type=int, default=ddef.seed)
    t.set_defaults(func=cmd_synth_train)

    g = ss.add_parser("generate", help="synthesize images for mask prompts")
    g.add_argument("model", help="diffusion model folder")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--masks", help="folder of instance masks to use as prompts")
    src.add_argument("--count", type=int, help="number of pairs from automatic mask prompts")
    g.add_argument("--out", required=True, help="writes OUT/images/<stem>.tif and OUT/masks/<stem>.tif")
    g.add_argument("--steps", type=int, default=sdef.steps, help="DDIM steps (default: %(default)s)")
    g.add_argument("--guidance", type=float, default=sdef.guidance,
                   help="classifier-free guidance scale (default: %(default)s)")
    g.add_argument("--eta", type=float, default=sdef.eta, help="DDIM stochasticity (0 = deterministic)")
    g.add_argument("--seed", type=int, default=sdef.seed)
    g.add_argument("--tags", default=None, help='style tags for every image, e.g. "dense small"')
    g.add_argument("--size", type=int, default=PROMPT_SIZE, help="--count: side of the generated images (default: %(default)s)")
    g.add_argument("--objects", type=int, default=None, help="--count: objects per image")
    g.add_argument("--density", type=float, default=None, help="--count: objects per 10,000 px (default: training median)")
    g.add_argument("--source-masks", default=None, help="--count: take object shapes from this mask folder")
    g.add_argument("--vary", action="store_true",
                   help="--count: vary each layout's magnification (0.6-1.6x), crowding (0.5-2x) and whether "
                        "objects touch, with objects cut by the edges")
    g.add_argument(*SETTINGS["device"].flags, default=sdef.device, choices=DEVICES)
    g.set_defaults(func=cmd_synth_generate)
    for sp in (t, g):
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
    return s
