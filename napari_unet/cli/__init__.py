"""Command-line interface: ``napari-unet train | predict | evaluate | demo | export-model | synth``.

``train`` lives in ``cli.train``, ``synth`` in ``cli.diffusion``; the other commands here.

Exit codes: 0 done; 2 bad input or usage (one line on stderr, never a traceback); 1 when some
files of a ``predict`` batch failed (one line each, the others are still predicted) or on an
unexpected error (set ``NAPARI_UNET_DEBUG=1`` to see its traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from napari_unet.cli.drive import drive
from napari_unet.cli.train import add_train_parser, patch_size_arg, train_request  # noqa: F401 (the package's API)
from napari_unet.errors import UserError


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_unet.workflows.batch import BatchConfig, collect_inputs, predict_batch
    from napari_unet.config import PredictConfig
    from napari_unet.runtime.device import resolve_device
    from napari_unet.workflows.model_spec import batch_source

    folder, bundle = batch_source(args.model, device=resolve_device(args.device))  # loaded once, here
    inputs = collect_inputs(args.inputs, recursive=args.recursive)
    if not inputs:
        raise UserError("no images found in the given inputs")
    if args.workers < 1 or args.mc_samples < 2:
        raise UserError("--workers must be >= 1 and --mc-samples >= 2")
    if args.min_size < 0:
        raise UserError("--min-size must be >= 0")
    from napari_unet.inference.size import parse_diameter

    cfg = PredictConfig(tile_size=args.tile_size, device=args.device, min_size=args.min_size,
                        diameter=parse_diameter(args.diameter))
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
    from napari_unet.workflows.model_spec import model_path, resolve_model

    folder = model_path(args.model)
    bundle = resolve_model(folder)
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
    """The parser of every command, one sub-parser each (``--quiet`` on all but ``synth``'s own)."""
    parser = argparse.ArgumentParser(prog="napari-unet", description="Train and apply U-Nets for segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train_parser, _predict_parser, _evaluate_parser, _demo_parser, _export_parser):
        add(sub).add_argument("--quiet", action="store_true", help="no progress bar")

    from napari_unet.cli.diffusion import add_synth_parser  # synth train | generate (diffusion)

    add_synth_parser(sub)
    return parser


# each sub-parser's defaults shown in --help come from the config dataclasses, never retyped here
def _predict_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from napari_unet import heads
    from napari_unet.config import SETTINGS, PredictConfig
    from napari_unet.workflows.batch import BatchConfig

    pdef, bdef = PredictConfig(), BatchConfig()
    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("model", help="model folder, or pretrained:nuclei")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder: <stem>.tif|png|ome.zarr labels, summary.csv")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--tile-size", type=int, default=pdef.tile_size,
                   help="images larger than this are predicted in overlapping tiles (default: %(default)s)")
    device = SETTINGS["device"]
    p.add_argument(*device.flags, default=pdef.device, choices=device.choices, help="default: %(default)s")
    p.add_argument("--format", choices=("tif", "png", "ome-zarr"), default=bdef.format,
                   help="label file format (default: %(default)s)")
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_probabilities (float32)")
    p.add_argument(*SETTINGS["uncertainty"].flags, action="store_true",
                   help=f"{SETTINGS['uncertainty'].help}: write <stem>_uncertainty (total, aleatoric, epistemic"
                        + "".join(f"; {' / '.join(names)} models add {kind}"
                                  for kind, names in heads.uncertainty_givers().items()) + ")")
    mc = SETTINGS["mc_samples"]
    p.add_argument(*mc.flags, type=int, default=bdef.mc_samples,  # BatchConfig's: uncertainty asked for by a switch
                   help=f"{mc.help}; at least 2 for --uncertainty (default: %(default)s)")
    p.add_argument(*SETTINGS["min_size"].flags, type=int, default=pdef.min_size,
                   help=f"{SETTINGS['min_size'].help} (default: %(default)s)")
    diameter = SETTINGS["diameter"]
    p.add_argument(*diameter.flags, default=str(pdef.diameter), metavar="auto|off|PIXELS",
                   help=f"{diameter.help} (default: %(default)s)")
    p.add_argument("--workers", type=int, default=bdef.workers,
                   help="files predicted in parallel (local threads; default: %(default)s)")
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler to run on")
    p.add_argument("--overwrite", action="store_true",
                   help="predict every file again (default: skip files an earlier run of the same model "
                        "and settings completed in --out)")
    p.set_defaults(func=cmd_predict)
    return p


def _evaluate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from napari_unet.config import CONFIG_TASKS

    e = sub.add_parser("evaluate", help="score predicted masks against ground truth")
    e.add_argument("pred", help="folder of predicted masks")
    e.add_argument("gt", help="folder of ground-truth masks (matched by file name)")
    e.add_argument("--task", choices=CONFIG_TASKS, default=CONFIG_TASKS[0],
                   help="instance or class masks (default: %(default)s)")
    e.set_defaults(func=cmd_evaluate)
    return e


def _demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from napari_unet.config import TrainConfig

    d = sub.add_parser("demo", help="train briefly on the bundled nuclei images and segment one")
    d.add_argument("--out", default="demo-output", help="default: %(default)s")
    d.add_argument("--time-limit", type=float, default=60.0, help="seconds of training (default: %(default)s)")
    d.add_argument("--seed", type=int, default=TrainConfig.seed, help="default: %(default)s")
    d.set_defaults(func=cmd_demo)
    return d


def _export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from napari_unet.workflows.bioimage_io_export import PackageInfo

    x = sub.add_parser("export-model", help="export a model to TorchScript, ONNX or a bioimage.io package")
    x.add_argument("model", help="model folder, bioimage.io package from napari-unet, or pretrained:nuclei")
    x.add_argument("--format", choices=("torchscript", "onnx", "bioimageio"), default="torchscript",
                   help="default: %(default)s; bioimageio: a validated and tested model package .zip "
                        "(needs napari-unet[bioimageio])")
    x.add_argument("--out", default=None,
                   help="file to write (default: MODEL/model.pt, MODEL/model.onnx or MODEL/model.zip)")
    x.add_argument("--tile", type=int, default=None, help="input size for valid-padding models (fixed at export)")
    x.add_argument("--license", default=None, help="bioimageio: SPDX licence id (default: a shipped model's "
                   f"own, CC0-1.0 for pretrained:nuclei; else {PackageInfo.license})")
    x.add_argument("--author", action="append", default=None,
                   help=f"bioimageio: author name, repeatable (default: {', '.join(PackageInfo.authors)})")
    x.add_argument("--test-image", default=None,
                   help="bioimageio: image the package's test tensors are cut from (default: a bundled nuclei image)")
    x.set_defaults(func=cmd_export_model)
    return x


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
