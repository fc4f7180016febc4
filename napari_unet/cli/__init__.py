"""Command-line interface: ``napari-unet train | predict | evaluate | demo``.

Exit codes: 0 done; 2 bad input or usage (one line on stderr, never a traceback); 1 when some
files of a ``predict`` batch failed (one line each, the others are still predicted) or on an
unexpected error (set ``NAPARI_UNET_DEBUG=1`` to see its traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

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
                        synthetic_ratio=args.synthetic_ratio, z_scale=args.z_scale,
                        dims=TrainRequest.dims if args.dims is None else args.dims)


def patch_size_arg(text: str) -> int | tuple[int, ...]:
    """``--patch-size``: one side ("64") or per-axis extents ("16,64,64")."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a side like 64 or Z,Y,X extents like 16,64,64, got {text!r}")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"patch extents must be positive, got {text!r}")
    return values[0] if len(values) == 1 else values


def _architecture(args: argparse.Namespace) -> dict[str, int]:
    """The architecture the flags ask for (only the ones given)."""
    return {k: v for k, v in (("depth", args.depth), ("base_width", args.base_width), ("dims", args.dims))
            if v is not None}


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
    from napari_unet.workflows.model_spec import start_model
    from napari_unet.workflows.train_request import train_config_for
    from napari_unet.pretrained import fine_tune_config
    from napari_unet.training.engine import Trainer

    if args.checkpoint_every < 0:
        raise UserError("--checkpoint-every must be >= 0")
    if args.resume is not None:
        return _train_resumed(args)
    if args.out is None:
        raise UserError("--out MODEL_DIR is required (unless --resume MODEL_DIR continues a run there)")
    init = start_model(args.init, user_task(args.task, args.sparse), _architecture(args),  # before reading data
                       shown=lambda field: f"--{field.replace('_', '-')}",
                       hint="use --init none to train another architecture from scratch")
    out = _out_folder(args.out)
    pairs, names, synthetic = _training_data(args)
    cfg = train_config_for(train_request(args), [i for i, _ in pairs], [m for _, m in pairs])
    if init is not None:  # its architecture and normalisation; the Trainer re-initialises what does not fit
        cfg = fine_tune_config(cfg, init)
    trainer = Trainer(pairs, cfg, init=init, names=names, checkpoint_to=out, synthetic=synthetic)
    return _save_trained(drive(trainer.run(), "training", args.quiet), out)


def _train_resumed(args: argparse.Namespace) -> int:
    """``train IMAGES MASKS --resume MODEL_DIR``: continue the run saved there on the same data, to
    its own budget or to a new one; the model goes to MODEL_DIR (or --out)."""
    from dataclasses import replace

    from napari_unet.training.engine import Trainer
    from napari_unet.training.state import load_state, resumed_config

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
    trainer = Trainer.resuming(state, pairs, cfg, names=names, checkpoint_to=out, synthetic=synthetic)
    return _save_trained(drive(trainer.run(), "training", args.quiet), out)


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


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_unet.workflows.batch import BatchConfig, collect_inputs, predict_batch
    from napari_unet.config import PredictConfig
    from napari_unet.pretrained import resolve_model
    from napari_unet.models.bundle import load_bundle
    from napari_unet.runtime.device import resolve_device

    folder = resolve_model(args.model)
    bundle = load_bundle(folder, resolve_device(args.device))
    inputs = collect_inputs(args.inputs, recursive=args.recursive)
    if not inputs:
        raise UserError("no images found in the given inputs")
    if args.workers < 1 or args.mc_samples < 2:
        raise UserError("--workers must be >= 1 and --mc-samples >= 2")
    cfg = PredictConfig(tile_size=args.tile_size, device=args.device)
    bcfg = BatchConfig(format=args.format, probabilities=args.probabilities, uncertainty=args.uncertainty,
                       mc_samples=args.mc_samples, workers=args.workers, scheduler=args.scheduler,
                       overwrite=args.overwrite)
    rows = drive(predict_batch(folder, inputs, Path(args.out), cfg, bcfg, preloaded=bundle), "predicting", args.quiet)
    failed = sum(row["status"] == "failed" for row in rows)
    print(f"{len(rows) - failed} label image(s) and {bcfg.summary} in {args.out}")
    if failed:
        print(f"napari-unet: {failed} of {len(rows)} files failed (see the status and error columns of "
              f"{Path(args.out) / bcfg.summary})", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_unet.files.io import pair_files, read_mask
    from napari_unet.metrics import evaluate_instances, evaluate_semantic

    files = pair_files(args.pred, args.gt)
    pairs = []
    for pred, gt in files:
        p, g = read_mask(pred), read_mask(gt)
        if p.shape != g.shape:
            raise UserError(f"{pred.name}: prediction shape {p.shape} differs from ground truth {g.shape}")
        pairs.append((p, g))
    if args.task == "instances":
        result = evaluate_instances(pairs)
        keys = ("ap50", "map", "dice", "iou", "pixel_error")
    else:
        result = evaluate_semantic(pairs)
        keys = tuple(k for k in ("pixel_error", "mean_dice", "mean_iou", "rand_error") if k in result)
    print(f"{len(pairs)} image pair(s)")
    for key in keys:
        print(f"{key:12s} {float(result[key]):.4f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from napari_unet.workflows.demo import run_demo

    summary = drive(run_demo(Path(args.out), args.time_limit, args.seed), "demo", args.quiet)
    print(summary)
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from napari_unet.workflows.export import SUFFIXES, export_model
    from napari_unet.pretrained import resolve_model
    from napari_unet.models.bundle import load_bundle

    folder = resolve_model(args.model)
    bundle = load_bundle(folder)
    default_dir = Path(args.model) if Path(args.model).is_dir() else Path.cwd()  # never inside the package
    if args.format == "bioimageio":
        return _export_bioimageio(args, folder, bundle, Path(args.out) if args.out else default_dir / "model.zip")
    out = Path(args.out) if args.out else default_dir / f"model{SUFFIXES[args.format]}"
    path = drive(export_model(bundle, out, args.format, args.tile), "exporting", args.quiet)
    print(f"wrote {path} and {path.name}.json")
    return 0


def _export_bioimageio(args: argparse.Namespace, folder: Path, bundle, out: Path) -> int:
    """``export-model --format bioimageio``: package, validate and test (napari_unet.workflows.bioimage_io_export)."""
    from napari_unet.workflows.bioimage_io_export import export_bioimageio, package_info
    from napari_unet.files.io import read_image

    info = package_info(folder, license=args.license, authors=tuple(args.author) if args.author else None)
    image = read_image(args.test_image) if args.test_image else None
    path = drive(export_bioimageio(bundle, out, info, test_image=image, tile=args.tile), "exporting", args.quiet)
    print(f"wrote bioimage.io package {path} (licence {info.license})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from napari_unet import heads
    from napari_unet.workflows.batch import BatchConfig
    from napari_unet.config import CPU_SIZES, CPU_VOLUME_SIZES, CUDA_SIZES, PredictConfig, TrainConfig, UNetConfig
    from napari_unet.workflows.train_request import SYNTHETIC_SHARE

    # defaults shown in --help come from the config dataclasses, never retyped here
    tdef, udef, pdef, bdef = TrainConfig(), UNetConfig(), PredictConfig(), BatchConfig()
    parser = argparse.ArgumentParser(prog="napari-unet", description="Train and apply U-Nets for segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on image/mask folders")
    t.add_argument("images", help="folder of images")
    t.add_argument("masks", help="folder of masks matched to images by file name")
    t.add_argument("--out", default=None, help="model folder to write (with --resume: default the resumed folder)")
    t.add_argument("--task", choices=("instances", "semantic"), default=tdef.task, help="default: %(default)s")
    t.add_argument("--instance-head", choices=heads.names(), default=tdef.instance_head,
                   help=f"instances: {heads.described()}; default: %(default)s")
    t.add_argument("--n-classes", type=int, default=None, help="semantic: number of classes (default: from masks)")
    t.add_argument("--sparse", action="store_true",
                   help="masks are partial: 0 = not annotated (ignored), 1 = background, 2.. = objects (instances: "
                        "one id each) or classes (semantic scribbles)")
    t.add_argument("--time-limit", type=float, default=None,
                   help=f"seconds (default {tdef.time_limit:g} when no --epochs/--steps)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--device", default=tdef.device, choices=("auto", "cpu", "cuda", "mps"),
                   help="default: %(default)s (CUDA, then MPS, then CPU)")
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
    t.add_argument("--synthetic-ratio", type=float, default=SYNTHETIC_SHARE,
                   help="share of patches from --synthetic (default: %(default)s)")
    t.add_argument("--checkpoint-every", type=float, default=30.0,
                   help="seconds between atomic saves of the model while training (0 = only at the end; "
                        "default: %(default)s)")
    t.add_argument("--resume", default=None, metavar="MODEL_DIR",
                   help="continue the stopped or killed run saved in MODEL_DIR (its last checkpoint) on the same "
                        "IMAGES and MASKS, with its stored settings, to its own budget: --steps N goes on to step N, "
                        "a time limit for the seconds left; --steps/--epochs/--time-limit set a new budget (also to "
                        "train a finished run further)")
    t.set_defaults(func=cmd_train, default_of=t.get_default)

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("model", help="model folder, or pretrained:nuclei")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder: <stem>.tif|png|ome.zarr labels, summary.csv")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--tile-size", type=int, default=pdef.tile_size,
                   help="images larger than this are predicted in overlapping tiles (default: %(default)s)")
    p.add_argument("--device", default=pdef.device, choices=("auto", "cpu", "cuda", "mps"), help="default: %(default)s")
    p.add_argument("--format", choices=("tif", "png", "ome-zarr"), default=bdef.format,
                   help="label file format (default: %(default)s)")
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_probabilities (float32)")
    p.add_argument("--uncertainty", action="store_true",
                   help="MC-dropout: also write <stem>_uncertainty (total, aleatoric, epistemic"
                        + "".join(f"; {' / '.join(names)} models add {kind}"
                                  for kind, names in heads.uncertainty_givers().items()) + ")")
    p.add_argument("--mc-samples", type=int, default=bdef.mc_samples,
                   help="dropout samples for --uncertainty (default: %(default)s)")
    p.add_argument("--workers", type=int, default=bdef.workers,
                   help="files predicted in parallel (local threads; default: %(default)s)")
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler to run on")
    p.add_argument("--overwrite", action="store_true",
                   help="predict every file again (default: skip files an earlier run of the same model "
                        "and settings completed in --out)")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="score predicted masks against ground truth")
    e.add_argument("pred", help="folder of predicted masks")
    e.add_argument("gt", help="folder of ground-truth masks (matched by file name)")
    e.add_argument("--task", choices=("instances", "semantic"), default="instances", help="default: %(default)s")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train briefly on the bundled nuclei images and segment one")
    d.add_argument("--out", default="demo-output", help="default: %(default)s")
    d.add_argument("--time-limit", type=float, default=60.0, help="seconds of training (default: %(default)s)")
    d.add_argument("--seed", type=int, default=tdef.seed, help="default: %(default)s")
    d.set_defaults(func=cmd_demo)

    x = sub.add_parser("export-model", help="export a model to TorchScript, ONNX or a bioimage.io package")
    x.add_argument("model", help="model folder, bioimage.io package from napari-unet, or pretrained:nuclei")
    x.add_argument("--format", choices=("torchscript", "onnx", "bioimageio"), default="torchscript",
                   help="default: %(default)s; bioimageio: a validated and tested model package .zip "
                        "(needs napari-unet[bioimageio])")
    x.add_argument("--out", default=None,
                   help="file to write (default: MODEL/model.pt, MODEL/model.onnx or MODEL/model.zip)")
    x.add_argument("--tile", type=int, default=None, help="input size for valid-padding models (fixed at export)")
    from napari_unet.workflows.bioimage_io_export import PackageInfo

    x.add_argument("--license", default=None, help="bioimageio: SPDX licence id (default: a shipped model's "
                   f"own, CC0-1.0 for pretrained:nuclei; else {PackageInfo.license})")
    x.add_argument("--author", action="append", default=None,
                   help=f"bioimageio: author name, repeatable (default: {', '.join(PackageInfo.authors)})")
    x.add_argument("--test-image", default=None,
                   help="bioimageio: image the package's test tensors are cut from (default: a bundled nuclei image)")
    x.set_defaults(func=cmd_export_model)

    for sp in (t, p, e, d, x):
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    from napari_unet.cli.diffusion import add_synth_parser  # synth train | generate (diffusion)

    add_synth_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    import logging

    from napari_unet.runtime.threads import prefer_passive_wait

    prefer_passive_wait()  # our own process: before anything loads torch (napari_unet.runtime.threads)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # a corrupt file's own one-line error says enough
    try:
        return args.func(args)
    except UserError as exc:
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("napari-unet: error: out of memory; try a smaller --tile-size or --batch-size", file=sys.stderr)
        return 2
    except Exception as exc:  # last resort: one line, not a traceback
        if os.environ.get("NAPARI_UNET_DEBUG"):
            raise
        print(f"napari-unet: internal error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
