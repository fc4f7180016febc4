"""``napari-unet train``: its flags, the ``TrainRequest`` they describe, and the run.

The run itself is ``workflows.train_run.TrainRun``, as in the Train widget; here are the parts
only a command line has: reading the folders, ``--resume``'s rules, saving and the summary line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from napari_unet.cli.drive import drive
from napari_unet.errors import UserError

if TYPE_CHECKING:
    from napari_unet.workflows.train_request import TrainRequest


def train_request(args: argparse.Namespace) -> "TrainRequest":
    """The ``TrainRequest`` the ``train`` flags describe (defaults: the config dataclasses')."""
    from napari_unet.workflows.classes import user_task
    from napari_unet.workflows.train_request import TrainRequest

    return TrainRequest(task=user_task(args.task, args.sparse), instance_head=args.instance_head,
                        n_classes=args.n_classes, in_channels=args.in_channels, depth=args.depth,
                        base_width=args.base_width, time_limit=args.time_limit, epochs=args.epochs, steps=args.steps,
                        patch_size=args.patch_size, batch_size=args.batch_size, device=args.device, seed=args.seed,
                        checkpoint_every=args.checkpoint_every or None, synthetic=bool(args.synthetic),
                        synthetic_ratio=args.synthetic_ratio, z_scale=args.z_scale, volume_scale=args.volume_scale,
                        dims=TrainRequest.dims if args.dims is None else args.dims)


def volume_scale_arg(text: str) -> str | float:
    """``--volume-scale``: auto, off or a factor (``inference.volume_scale.parse_volume_scale``)."""
    from napari_unet.inference.volume_scale import parse_volume_scale

    try:
        return parse_volume_scale(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def patch_size_arg(text: str) -> int | tuple[int, ...]:
    """``--patch-size``: one side ("64") or per-axis extents ("16,64,64")."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a side like 64 or Z,Y,X extents like 16,64,64, got {text!r}")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"patch extents must be positive, got {text!r}")
    return values[0] if len(values) == 1 else values


# what `train --resume` may change besides the data arguments: the budget and where/how the run goes on
RESUME_FLAGS = ("steps", "epochs", "time_limit", "device", "checkpoint_every", "synthetic", "out", "quiet")


def _out_folder(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    return out


def _training_data(args: argparse.Namespace) -> tuple[list, list[str], list | None]:
    """(image, mask) pairs, their names and the synthetic pairs (or None) the train flags name."""
    from napari_unet.files.io import pair_files, read_image, read_mask

    files = pair_files(args.images, args.masks)
    pairs = [(read_image(i), read_mask(m)) for i, m in files]
    synthetic = None
    if args.synthetic:  # a `synth generate` output folder: images/ and masks/
        root = Path(args.synthetic)
        synthetic = [(read_image(i), read_mask(m)) for i, m in pair_files(root / "images", root / "masks")]
    return pairs, [i.name for i, _ in files], synthetic


def cmd_train(args: argparse.Namespace) -> int:
    from napari_unet.workflows.classes import user_task
    from napari_unet.workflows.train_request import train_config_for
    from napari_unet.workflows.train_run import TrainRun, asked_architecture

    if args.checkpoint_every < 0:
        raise UserError("--checkpoint-every must be >= 0")
    if args.resume is not None:
        return _train_resumed(args)
    if args.out is None:
        raise UserError("--out MODEL_DIR is required (unless --resume MODEL_DIR continues a run there)")
    run = TrainRun(args.init, user_task(args.task, args.sparse), asked_architecture(args.depth, args.base_width,
                                                                                     args.dims),
                   shown=lambda field: f"--{field.replace('_', '-')}",
                   hint="use --init none to train another architecture from scratch")
    run.start()  # before reading data
    out = _out_folder(args.out)
    pairs, names, synthetic = _training_data(args)
    cfg = train_config_for(train_request(args), [i for i, _ in pairs], [m for _, m in pairs])
    run.build(pairs, names, cfg, synthetic=synthetic, checkpoint_to=out)
    return _save_trained(drive(run.events(), "training", args.quiet), out)


def _train_resumed(args: argparse.Namespace) -> int:
    """``train IMAGES MASKS --resume MODEL_DIR``: continue the run saved there on the same data, to
    its own budget or to a new one; the model goes to MODEL_DIR (or --out)."""
    from dataclasses import replace

    from napari_unet.training.state import load_state, resumed_config
    from napari_unet.workflows.train_run import TrainRun

    fixed = [f"--{name.replace('_', '-')}" for name, value in vars(args).items()
             if name not in (*RESUME_FLAGS, "images", "masks", "resume", "command", "func", "default_of")
             and value != args.default_of(name)]
    if fixed:
        raise UserError(f"--resume continues the run with its stored settings; drop {', '.join(fixed)} "
                        "(only --steps, --epochs, --time-limit, --device, --checkpoint-every, --synthetic and --out "
                        "go with it)")
    state = load_state(args.resume)
    device = args.device if args.device != args.default_of("device") else None
    cfg = resumed_config(state, steps=args.steps, epochs=args.epochs, time_limit=args.time_limit, device=device,
                         where=args.resume, hint="give a larger --steps, --epochs or --time-limit")
    cfg = replace(cfg, checkpoint_every=args.checkpoint_every or None)
    out = _out_folder(args.out or args.resume)
    pairs, names, synthetic = _training_data(args)
    run = TrainRun()
    run.build(pairs, names, cfg, resume=state, synthetic=synthetic, checkpoint_to=out)  # UserError: other data
    return _save_trained(drive(run.events(), "training", args.quiet), out)


def _save_trained(bundle, out: Path) -> int:
    """Save a trained model (with its training state) and print the one-line summary."""
    from napari_unet.models.bundle import save_bundle
    from napari_unet.training.guard import guard_note

    save_bundle(bundle, out)
    val = dict(bundle.meta.get("validation") or {})
    tuned = (bundle.meta.get("postprocess") or {}).get("ap50")
    if tuned is not None and "ap50" in val:  # what predict gives: the post-processing chosen after training
        val = {"ap50": tuned, "ap50 (argmax rule)": val.pop("ap50"), **val}
    summary = ", ".join(f"{k} {v:.3f}" for k, v in val.items() if k != "score")
    note = guard_note(bundle.meta)  # fine-tuning: the fine-tuned or the starting model, and why
    print(f"saved model to {out} ({bundle.meta['training']['steps']} steps{'; ' + summary if summary else ''})"
          + (f"; {note}" if note else ""))
    return 0



def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train`` sub-parser; the defaults shown in --help come from the config dataclasses."""
    from napari_unet import heads
    from napari_unet.config import (CLI_CHECKPOINT_EVERY, CONFIG_TASKS, CPU_SIZES, CPU_VOLUME_SIZES, CUDA_SIZES,
                                    SETTINGS, SYNTHETIC_RATIO, TrainConfig, UNetConfig)

    tdef, udef = TrainConfig(), UNetConfig()
    t = sub.add_parser("train", help="train a model on image/mask folders")
    t.add_argument("images", help="folder of images")
    t.add_argument("masks", help="folder of masks matched to images by file name")
    t.add_argument("--out", default=None, help="model folder to write (with --resume: default the resumed folder)")
    task = SETTINGS["task"]  # the user's words, and "semantic" (TrainConfig's, the older flag value) for classes
    t.add_argument(*task.flags, choices=tuple(dict.fromkeys((*CONFIG_TASKS, *task.choices))), default=tdef.task,
                   help=f"{task.help} (default: %(default)s)")
    t.add_argument("--instance-head", choices=heads.names(), default=tdef.instance_head,
                   help=f"instances: {heads.described()}; default: %(default)s")
    t.add_argument("--n-classes", type=int, default=None, help="semantic: number of classes (default: from masks)")
    t.add_argument(*SETTINGS["sparse"].flags, action="store_true",
                   help=SETTINGS["sparse"].help + " (with --task instances: partial; with semantic: sparse)")
    t.add_argument("--time-limit", type=float, default=None,
                   help=f"seconds (default {tdef.time_limit:g} when no --epochs/--steps)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--steps", type=int, default=None)
    device = SETTINGS["device"]
    t.add_argument(*device.flags, default=tdef.device, choices=device.choices,
                   help=f"{device.help} (default: %(default)s)")
    t.add_argument("--seed", type=int, default=tdef.seed, help="default: %(default)s")
    t.add_argument("--init", default=None,
                   help="starting model: pretrained:nuclei, a model folder, or 'none' for scratch "
                        "(default: pretrained:nuclei for instances, none for semantic)")
    t.add_argument("--in-channels", type=int, default=None,
                   help="network input channels (default: the first image's: 1 for grey, 3 for colour)")
    t.add_argument("--depth", type=int, default=None, help=f"default {udef.depth} (from scratch only)")
    t.add_argument("--base-width", type=int, default=None, help=f"default {udef.base_width} (from scratch only)")
    t.add_argument("--dims", type=int, choices=(2, 3), default=None,
                   help=f"2: 2D images (stacks slice by slice); 3: a 3D U-Net on (Z, Y, X) volumes "
                        f"(default {udef.dims}, or the starting model's; 3D trains from scratch)")
    t.add_argument("--z-scale", type=float, default=tdef.z_scale,
                   help="3D: voxel depth / pixel width, e.g. 2 for 0.5 um pixels and 1 um planes "
                        "(default: %(default)s)")
    scale = SETTINGS["volume_scale"]
    t.add_argument(*scale.flags, type=volume_scale_arg, default=tdef.volume_scale,
                   help=scale.help + " (default: %(default)s)")
    sized = (f"sized to the device: {CPU_SIZES[0]} x {CPU_SIZES[1]}² on the CPU, "
             f"up to {CUDA_SIZES[0][1]} x {CUDA_SIZES[0][2]}² on a GPU; 3D: to the device and the volumes, "
             f"{CPU_VOLUME_SIZES[1]:,} voxels per step on the CPU in patches up to {CPU_VOLUME_SIZES[0]} wide "
             "with side / --z-scale planes, never larger than the volumes")
    t.add_argument("--batch-size", type=int, default=tdef.batch_size, help=f"patches per step (default: {sized})")
    t.add_argument("--patch-size", type=patch_size_arg, default=tdef.patch_size,
                   help="patch side in pixels, along y/x in 3D (z-planes: it / --z-scale), or Z,Y,X extents "
                        "for a 3D model (default: sized as --batch-size says)")
    t.add_argument("--synthetic", default=None, metavar="SYNTH_DIR",
                   help="also train on synthetic pairs (a `synth generate` output: images/ and masks/); "
                        "validation stays on real images")
    ratio = SETTINGS["synthetic_ratio"]
    t.add_argument(*ratio.flags, dest=ratio.name, type=float, default=SYNTHETIC_RATIO,
                   help=f"{ratio.help}: --synthetic's (default: %(default)s)")
    every = SETTINGS["checkpoint_every"]  # the CLI's own default: its --out folder is saved while it trains
    t.add_argument(*every.flags, dest=every.name, type=float, default=CLI_CHECKPOINT_EVERY,
                   help=f"{every.help}; default: %(default)s")
    t.add_argument("--resume", default=None, metavar="MODEL_DIR",
                   help="continue the stopped or killed run saved in MODEL_DIR (its last checkpoint) on the same "
                        "IMAGES and MASKS, with its stored settings, to its own budget: --steps N goes on to step N, "
                        "a time limit for the seconds left; --steps/--epochs/--time-limit set a new budget (also to "
                        "train a finished run further)")
    t.set_defaults(func=cmd_train, default_of=t.get_default)
    return t
