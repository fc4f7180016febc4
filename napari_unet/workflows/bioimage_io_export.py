"""Exporting a model as a bioimage.io model package (``export-model --format bioimageio``).

The package (a .zip, bioimage.io model spec 0.5) holds:
- ``rdf.yaml``: axes (batch, channel, [z,] y, x), the percentile normalisation of the model's
  ``TrainConfig`` as ``scale_range`` preprocessing, the output described as **softmax
  probabilities** per class (not logits), licence, authors, citations, tags;
- weights: TorchScript (the source entry) and ONNX opset 17 (converted from it) where the ONNX
  packages are installed, both ``export.export_model`` files of the same network;
- test input/output tensors (.npy) and the same as .tif sample tensors, a 2:1 cover image, a
  README (the model card when the model has one, plus a *Validation* section);
- attachments ``model.json`` + ``model.safetensors``: napari-unet's own model folder, so our
  post-processing (not part of the bioimage.io model) runs when napari-unet loads the package.

It is built with ``bioimageio.spec`` descriptors, saved with its ``save_bioimageio_package``,
validated with ``load_description`` and, when ``bioimageio.core`` is installed, tested with its
``test_model``: every weight format must reproduce the test output. All offline.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator

import numpy as np

from napari_unet import __version__
from napari_unet.arrays.normalize import normalize, to_channels_first
from napari_unet.data.samples import load_sample
from napari_unet.errors import UserError
from napari_unet.events import Finished, Message, Progress, relay
from napari_unet.files.bioimage_io import CONFIG_KEY, first_error, require_spec, run_package_test, validate_package
from napari_unet.pretrained import REGISTRY

INPUT_ID, OUTPUT_ID = "raw", "probabilities"
TEST_SIZE = 256  # the largest side of the test tensors (same networks)
UNET_CITATIONS = (
    ("Ronneberger, Fischer & Brox (2015): U-Net: Convolutional Networks for Biomedical Image Segmentation. "
     "MICCAI 2015, LNCS 9351, 234-241.", "10.1007/978-3-319-24574-4_28"),
    ("Falk et al. (2019): U-Net: deep learning for cell counting, detection, and morphometry. "
     "Nature Methods 16, 67-70.", "10.1038/s41592-018-0261-2"),
)
DSB2018_CITATION = ("Caicedo et al. (2019): Nucleus segmentation across imaging experiments: the 2018 Data "
                    "Science Bowl. Nature Methods 16, 1247-1253.", "10.1038/s41592-019-0612-7")


@dataclass(frozen=True)
class PackageInfo:
    """What the package says about the model beyond its network: who, under which licence, why."""

    name: str | None = None  # letters, digits, spaces and _+-() only (spec rule); None: from the task
    license: str = "CC-BY-4.0"  # an SPDX id
    authors: tuple[str, ...] = ("napari-unet user",)
    card: str | None = None  # markdown for the README (a model card)
    citations: tuple[tuple[str, str], ...] = ()  # (text, DOI) beyond the U-Net papers, e.g. the data
    tags: tuple[str, ...] = ()


SHIPPED_INFO = {  # the shipped starting models (napari_unet.pretrained.REGISTRY names)
    "nuclei": PackageInfo(name="napari-unet nuclei fluorescence U-Net (DSB 2018)", license="CC0-1.0",
                          authors=("napari-unet developers",), citations=(DSB2018_CITATION,),
                          tags=("nuclei", "fluorescence-light-microscopy", "dsb2018")),
}


def package_info(folder: str | os.PathLike | None, **overrides: Any) -> PackageInfo:
    """Defaults for the package of the model in ``folder``: a shipped model's own (``pretrained:nuclei``
    is CC0, like its data), otherwise CC-BY-4.0; ``MODEL_CARD.md`` beside the model becomes the README.
    ``overrides`` (``None`` values ignored) replace fields, e.g. a user's ``license`` and ``authors``."""
    from dataclasses import replace


    info = PackageInfo()
    if folder is not None and Path(folder).is_dir():
        here = Path(folder).resolve()
        for name, entry in REGISTRY.items():
            if name in SHIPPED_INFO and entry.folder.resolve() == here:
                info = SHIPPED_INFO[name]
        card = here / "MODEL_CARD.md"
        if card.is_file():
            info = replace(info, card=card.read_text())
    return replace(info, **{k: v for k, v in overrides.items() if v is not None})


def default_test_image(dims: int) -> np.ndarray:
    """The bundled showcase nuclei image (2D), or a small volume of shifted copies of it (3D)."""

    image = load_sample()[0]
    if dims == 2:
        return image
    return np.stack([np.roll(image, 4 * z, axis=1) for z in range(32)])


def make_test_input(bundle: Any, image: np.ndarray, tile: int | None = None) -> np.ndarray:
    """The raw (1, C, *S) float32 test tensor: a centred crop (mirror-padded when too small) of a size
    the network takes: multiples of ``2**depth`` up to ``tile`` (default 256) for same networks, the
    export size (``tile``, default 128 output) for valid networks."""

    mcfg = bundle.config.model
    chw = to_channels_first(image, mcfg.in_channels, mcfg.dims).astype(np.float32)  # (C, *S)
    multiple = 2**mcfg.depth
    if mcfg.padding == "valid":
        sizes = [bundle.net.valid_input_size(tile or 128)] * mcfg.dims
    else:
        cap = max(multiple, (tile or TEST_SIZE) // multiple * multiple)
        sizes = [min(cap, max(multiple, n // multiple * multiple)) for n in chw.shape[1:]]
    short = [max(0, s - n) for s, n in zip(sizes, chw.shape[1:])]
    chw = np.pad(chw, [(0, 0)] + [(k // 2, k - k // 2) for k in short], mode="symmetric")
    crop = tuple(slice((n - s) // 2, (n - s) // 2 + s) for s, n in zip(sizes, chw.shape[1:]))
    return np.ascontiguousarray(chw[(slice(None), *crop)][None])  # (1, C, *S)


def write_cover(raw: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """A 2:1 png: the input (first channel, contrast-stretched; the output's part for valid networks)
    beside the foreground probability (1 - background) as a heat map; the middle plane of a volume."""
    import imageio.v3 as iio

    img, fg = raw[0, 0], 1.0 - probs[0, 0]  # (*S)
    if img.ndim == 3:
        img, fg = img[img.shape[0] // 2], fg[fg.shape[0] // 2]
    img = img[tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(img.shape, fg.shape))]  # valid: centre
    lo, hi = np.percentile(img, (1, 99.8))
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    left = np.repeat(img[..., None], 3, axis=-1)
    right = np.stack([fg, fg * 0.6, np.zeros_like(fg)], axis=-1)
    iio.imwrite(path, (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8))


def readme_text(bundle: Any, info: PackageInfo) -> str:
    """The package documentation: the model card (or a short description), how the package maps to
    napari-unet, and a *Validation* section when the card has none."""
    mcfg, (low, high) = bundle.config.model, bundle.config.percentiles
    parts = [info.card.rstrip() + "\n" if info.card else
             f"# napari-unet {bundle.task} model\n\nA {mcfg.dims}D U-Net trained with napari-unet "
             f"(depth {mcfg.depth}, base width {mcfg.base_width}, {mcfg.padding} padding, "
             f"{mcfg.in_channels} input channel(s)).\n"]
    parts.append(
        "## This bioimage.io package\n\n"
        f"- Input `{INPUT_ID}`: float32 (batch, channel, {', '.join('zyx'[-mcfg.dims:])}) raw intensities; "
        f"the `scale_range` preprocessing maps each channel's per-image percentiles {low} / {high} to 0 / 1, "
        "as napari-unet does.\n"
        + ("- Polarity: napari-unet inverts an image whose median lies nearer its high percentile than its "
           "low one (a bright background) before this network; bioimage.io has no such step, so invert "
           "such images (max - x) before giving them to this package.\n"
           if bundle.config.polarity == "auto" else "")
        + f"- Output `{OUTPUT_ID}`: float32 softmax probabilities (not logits) of "
        f"{', '.join(bundle.class_names)}.\n"
        "- Instance post-processing (seeded watershed) is not part of the bioimage.io model. napari-unet's "
        "own model folder travels as attachments (`model.json`, `model.safetensors`): "
        "`napari-unet predict THIS.zip IMAGES --out OUT` and the Predict widget give its full result.\n"
        "- Weights: TorchScript and, where ONNX was installed, ONNX (opset 17), both from the same network.\n"
        + (f"- Valid padding: the input size is fixed (that of the test input); the output is its centre, "
           f"{bundle.net.output_crop(int(bundle.net.valid_input_size(128)))} px smaller on each side.\n"
           if mcfg.padding == "valid" else ""))
    if not info.card or not re.search(r"#.*[vV]alidation", info.card):
        val = bundle.meta.get("val_split") or bundle.meta.get("validation") or {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in val.items() if isinstance(v, (int, float)) and k != "score")
        parts.append("## Validation\n\n" + (f"Recorded on held-out images at training time: {shown}." if shown else
                                            "No validation figures were recorded for this model; evaluate it on "
                                            "annotated images of your own (`napari-unet evaluate`).") + "\n")
    return "\n".join(parts)


def describe(spec: Any, bundle: Any, info: PackageInfo, files: dict[str, Path], raw: np.ndarray,
             expected: np.ndarray, weights: dict[str, Any]) -> Any:
    """The ``ModelDescr`` (spec 0.5) of the package; ``files`` maps roles to the files written."""

    mcfg, task, (low, high) = bundle.config.model, bundle.task, bundle.config.percentiles
    space = ["z", "y", "x"][-mcfg.dims:]
    if mcfg.padding == "same":  # any multiple of 2**depth; the output is as large as the input
        step = 2**mcfg.depth
        in_sizes: list[Any] = [spec.ParameterizedSize(min=step, step=step)] * mcfg.dims
        out_sizes: list[Any] = [spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(a))
                                for a in space]
    else:  # valid networks are exported for one input size
        in_sizes, out_sizes = list(raw.shape[2:]), list(expected.shape[2:])
    channels = [spec.Identifier(_identifier(n, i)) for i, n in enumerate(bundle.output_names)]
    head = bundle.head  # an instance head describes its own maps (a semantic model: softmax classes)
    output = head.output_description if head is not None else "softmax probabilities per class (channels sum to 1)"
    value_range = head.output_range if head is not None else (0.0, 1.0)
    file = lambda role: spec.FileDescr(source=files[role])  # noqa: E731
    return spec.ModelDescr(
        name=info.name or f"napari-unet {task} U-Net",
        description=(f"{mcfg.dims}D U-Net ({task}) trained with napari-unet: raw image in, softmax "
                     f"probabilities of {', '.join(bundle.class_names)} out."),
        authors=[spec.Author(name=a) for a in info.authors],
        cite=[spec.CiteEntry(text=t, doi=spec.Doi(d)) for t, d in (*UNET_CITATIONS, *info.citations)],
        license=spec.LicenseId(info.license),
        documentation=file("readme"), covers=[file("cover")],
        tags=list(dict.fromkeys(["unet", f"unet{mcfg.dims}d", "pytorch", "napari-unet", "segmentation",
                                 f"{'instance' if task == 'instances' else 'semantic'}-segmentation", *info.tags])),
        inputs=[spec.InputTensorDescr(
            id=spec.TensorId(INPUT_ID), description="raw image; normalised by the preprocessing",
            axes=[spec.BatchAxis(),
                  spec.ChannelAxis(channel_names=[spec.Identifier(f"channel{c}") for c in range(mcfg.in_channels)]),
                  *[spec.SpaceInputAxis(id=spec.AxisId(a), size=s) for a, s in zip(space, in_sizes)]],
            test_tensor=file("test_input"), sample_tensor=file("sample_input"),
            data=spec.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
                axes=[spec.AxisId(a) for a in space], min_percentile=low, max_percentile=high))],
        )],
        outputs=[spec.OutputTensorDescr(
            id=spec.TensorId(OUTPUT_ID), description=output,
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=channels),
                  *[spec.SpaceOutputAxis(id=spec.AxisId(a), size=s) for a, s in zip(space, out_sizes)]],
            test_tensor=file("test_output"), sample_tensor=file("sample_output"),
            data=spec.IntervalOrRatioDataDescr(type="float32", range=value_range),
        )],
        weights=spec.WeightsDescr(**weights),
        attachments=[file("model_json"), file("model_weights")],
        config=spec.Config(**{CONFIG_KEY: {
            "format_version": 1, "napari_unet_version": __version__,
            "model_json": files["model_json"].name, "weights": files["model_weights"].name,
            "task": task, "classes": list(bundle.class_names), "output": "softmax probabilities",
            "percentiles": [low, high], "postprocess": bundle.postprocess,
            "note": "the attachments are napari-unet's model folder: napari-unet runs its own post-processing",
        }}),
    )


def export_bioimageio(bundle: Any, out: str | os.PathLike, info: PackageInfo = PackageInfo(),
                      test_image: np.ndarray | None = None, tile: int | None = None,
                      run_test: bool = True) -> Generator[object, None, Path]:
    """Write ``bundle`` as the bioimage.io package ``out`` (.zip); validate it (``bioimageio.spec``)
    and, with ``run_test`` and ``bioimageio.core`` installed, run its own test. ``test_image``: the
    raw image the test tensors are cut from (default: a bundled nuclei image). Returns ``out``."""
    require_spec()
    import tifffile
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec
    from pydantic import ValidationError

    from napari_unet.workflows.export import Probabilities, export_model  # deferred, as torch above

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"a bioimage.io package is a .zip file, not {out.name}")
    try:
        spec.LicenseId(info.license)
    except ValidationError:
        raise UserError(f"licence {info.license!r} is not an SPDX licence id known to bioimage.io "
                        "(e.g. CC-BY-4.0, CC0-1.0, MIT, BSD-3-Clause)") from None
    start = time.perf_counter()
    raw = make_test_input(bundle, default_test_image(bundle.config.model.dims) if test_image is None else test_image,
                          tile)
    net = Probabilities(bundle.net.float().cpu().eval()).eval()
    with torch.no_grad():  # what napari-unet computes: our normalisation, then the network
        expected = net(torch.from_numpy(normalize(raw[0], bundle.config.percentiles)[None])).numpy()
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp_name:
        tmp = Path(tmp_name)
        files = {"test_input": tmp / "test_input.npy", "test_output": tmp / "test_output.npy",
                 "sample_input": tmp / "sample_input.tif", "sample_output": tmp / "sample_output.tif",
                 "cover": tmp / "cover.png", "readme": tmp / "README.md"}
        weights: dict[str, Any] = {}
        yield from _messages_of(export_model(bundle, tmp / "weights_torchscript.pt", "torchscript", tile))
        weights["torchscript"] = spec.TorchscriptWeightsDescr(
            source=tmp / "weights_torchscript.pt", pytorch_version=spec.Version(torch.__version__.split("+")[0]),
            comment="torch.jit.trace of the U-Net followed by a softmax over classes")
        try:
            yield from _messages_of(export_model(bundle, tmp / "weights.onnx", "onnx", tile))
            weights["onnx"] = spec.OnnxWeightsDescr(source=tmp / "weights.onnx", opset_version=17,
                                                    parent="torchscript", comment="torch.onnx.export of the same network")
        except UserError as exc:  # the ONNX packages are missing: TorchScript only
            yield Message(f"no ONNX weights in the package: {exc}", level="warning")
        np.save(files["test_input"], raw)
        np.save(files["test_output"], expected)
        tifffile.imwrite(files["sample_input"], raw[0])
        tifffile.imwrite(files["sample_output"], expected[0])
        write_cover(raw, expected, files["cover"])
        files["readme"].write_text(readme_text(bundle, info))
        own = _save_own_model(bundle, tmp / "napari-unet-model")
        files.update(model_json=own / "model.json", model_weights=own / "model.safetensors")
        yield Progress(1, 3, time.perf_counter() - start, "files written")
        try:
            descr = describe(spec, bundle, info, files, raw, expected, weights)
        except ValidationError as exc:  # e.g. a licence that is no SPDX id, a name with odd characters
            raise UserError(f"cannot describe the model for bioimage.io: {_pydantic_reason(exc)}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp.zip")
        try:
            save_bioimageio_package(descr, output_path=staged)
            summary = validate_package(staged)
            yield Message(f"bioimage.io validation (bioimageio.spec, format and files): {summary.status}")
            if summary.status == "failed":
                raise UserError(f"the package failed bioimage.io validation: {first_error(summary)}")
            yield Progress(2, 3, time.perf_counter() - start, "validated")
            tested = run_package_test(staged) if run_test else None
            if tested is not None:
                yield Message(f"bioimage.io model test (bioimageio.core, {', '.join(sorted(weights))}): "
                              f"{tested.status}")
                if tested.status != "passed":
                    raise UserError(f"the package's own test failed: {first_error(tested)}")
            os.replace(staged, out)
        finally:
            staged.unlink(missing_ok=True)
    yield Progress(3, 3, time.perf_counter() - start, "done")
    yield Finished({"weights": sorted(weights), "validation": summary.status,
                         "test": None if tested is None else tested.status})
    return out


def _identifier(name: str, i: int) -> str:
    """A channel name the spec accepts (a Python identifier): ``class 1`` -> ``class_1``."""
    text = re.sub(r"\W+", "_", str(name)).strip("_") or f"class_{i}"
    return text if text[0].isalpha() else f"c_{text}"


def _save_own_model(bundle: Any, folder: Path) -> Path:
    """napari-unet's model folder for the attachments; float16 weights stay float16 (shipped models)."""
    import dataclasses

    # deferred: imports torch
    from napari_unet.models.bundle import save_bundle

    save_bundle(dataclasses.replace(bundle, resume=None), folder)  # a package carries no training state
    if bundle.meta.get("weights_dtype") == "float16":
        from safetensors.torch import save_file

        state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in bundle.net.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
    return folder


def _messages_of(events: Generator) -> Generator[object, None, Any]:
    """Run an inner export, passing on its messages only (its own progress counts would confuse a bar)."""
    return (yield from relay(events, lambda event: event if isinstance(event, Message) else None))


def _pydantic_reason(exc: Exception) -> str:
    """The first error of a pydantic ``ValidationError`` on one line: where, and what."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return str(exc).splitlines()[0]
    err = errors[0]
    return f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg', '')}".replace("\n", " ")[:300]
