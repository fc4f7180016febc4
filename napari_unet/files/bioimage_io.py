"""bioimage.io model packages that napari-unet wrote: reading them back, validating and testing them.

A package (see ``bioimage_io_export``) is a zip holding ``rdf.yaml`` (bioimage.io model spec 0.5)
and the files it names. Besides the bioimage.io model (raw image in, softmax probabilities out) it
carries napari-unet's own model folder (``model.json`` + ``model.safetensors``) as attachments,
named in ``rdf.yaml`` -> ``config.napari-unet``: ``load_bundle`` reads those, so ``napari-unet
predict`` and the Predict widget use the package as the original model, post-processing included.
Packages from other tools (arbitrary zoo models) are refused with a clear error.

Reading needs no optional package (zip + YAML). Validating needs ``bioimageio.spec``, the
package's own test ``bioimageio.core`` (``pip install 'napari-unet[bioimageio]'``). Nothing here
reaches the network: a package holds every file it names.
"""

from __future__ import annotations

import json
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from napari_unet.errors import UserError

CONFIG_KEY = "napari-unet"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
EXTRA_HINT = "pip install 'napari-unet[bioimageio]'"


# ---------------------------------------------------------------- reading packages (no extra needed)

def is_package(path: str | os.PathLike) -> bool:
    """True for a zip file, or a folder with ``rdf.yaml``/``bioimageio.yaml`` but no ``model.json``."""
    path = Path(path)
    if path.is_file():
        return zipfile.is_zipfile(path)
    return path.is_dir() and not (path / "model.json").is_file() and any((path / n).is_file() for n in RDF_NAMES)


@contextmanager
def _package_files(path: Path) -> Iterator[tuple[set[str], Callable[[str], bytes]]]:
    """(names in the package, read(name) -> bytes) for a zip or an unpacked package folder."""
    if path.is_dir():
        yield {p.name for p in path.iterdir() if p.is_file()}, lambda name: (path / name).read_bytes()
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"cannot open {path} as a bioimage.io package: {exc}") from None
    with archive:
        yield set(archive.namelist()), archive.read


def read_package_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``rdf.yaml`` of a package; ``UserError`` when there is none."""
    import yaml

    path = Path(path)
    with _package_files(path) as (names, read):
        rdf = next((n for n in RDF_NAMES if n in names), None)
        if rdf is None:
            raise UserError(f"{path} is not a bioimage.io package (no rdf.yaml inside)")
        text = read(rdf)
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: cannot parse {rdf}: {str(exc).splitlines()[0]}") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: {rdf} is not a resource description")
    return content


def read_package_model(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, model.json metadata) of a package napari-unet exported, read from its attachments.

    Other bioimage.io models (no ``config.napari-unet`` entry) are refused: importing arbitrary
    zoo models is not supported.
    """
    from safetensors.torch import load as load_safetensors

    path = Path(path)
    rdf = read_package_config(path)
    ours = (rdf.get("config") or {}).get(CONFIG_KEY) if isinstance(rdf.get("config"), dict) else None
    if not isinstance(ours, dict):
        kind = rdf.get("type", "unknown")
        raise UserError(f"{path} is a bioimage.io {kind} package that napari-unet did not export; only packages "
                        "written by `napari-unet export-model --format bioimageio` can be used (importing other "
                        "zoo models is not supported)")
    files = {key: ours.get(key) for key in ("model_json", "weights")}
    try:
        with _package_files(path) as (names, read):
            missing = [f for f in files.values() if not isinstance(f, str) or f not in names]
            if missing:
                raise UserError(f"{path}: the napari-unet model files {missing} named in rdf.yaml are missing")
            meta = json.loads(read(files["model_json"]))
            tensors = load_safetensors(read(files["weights"]))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot read the napari-unet model inside: {type(exc).__name__}: {exc}"
                        .split("\n")[0]) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: {files['model_json']} is not a napari-unet model description")
    meta.setdefault("package", {"source": str(path), "name": rdf.get("name")})
    return tensors, meta


# ---------------------------------------------------------------- bioimageio.spec / bioimageio.core

def require_spec() -> None:
    """Import ``bioimageio.spec`` (``UserError`` naming the extra when missing) and patch its 0.5.12 bug."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise UserError(f"bioimage.io packages need the optional bioimageio.spec: {EXTRA_HINT}") from None
    _patch_spec_serializer()


_SPEC_BUG = (("bioimageio.spec._internal.io_packaging", "package_file_descr_serializer"),
             ("bioimageio.spec.model.v0_4", "package_weights"))


def _patch_spec_serializer() -> None:
    """Work around a bug of bioimageio.spec 0.5.12 (the version bioimageio.core 0.11 pins).

    Two of its wrap serializers call ``handler(value, info)``, passing pydantic's
    ``SerializationInfo`` as the handler's ``index_key``; the pydantic-core of pydantic 2.14 rejects
    that, so no model description can be built. Later spec releases call ``handler(value)``. We
    give each of the two functions a body that calls the original with a handler dropping that
    argument (swapping its code object, so the serializers pydantic already compiled use it).
    No-op on other spec versions and when already applied.
    """
    import importlib
    import types
    from importlib.metadata import version

    if not version("bioimageio.spec").startswith("0.5.12"):
        return
    for module_name, name in _SPEC_BUG:
        module = importlib.import_module(module_name)
        func, original = getattr(module, name), f"_napari_unet_original_{name}"
        if original in vars(module) or func.__closure__:
            continue
        setattr(module, original, types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__))
        namespace: dict[str, Any] = {}
        exec(f"def {name}(value, handler, info):\n"  # resolved in ``module``'s globals once swapped in
             f"    return {original}(value, lambda v, *_: handler(v), info)\n", namespace)
        func.__code__ = namespace[name].__code__


# ---------------------------------------------------------------- validation and test

def validate_package(path: str | os.PathLike) -> Any:
    """``bioimageio.spec`` validation of a package (format and local files: hashes, test tensors
    against the axes, cover, README); returns its ``ValidationSummary``. Offline: the package holds
    every file it names, and it names no URL (citations are DOIs, which are only checked for form)."""
    require_spec()
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(Path(path), perform_io_checks=True)
    summary = descr.validation_summary
    if isinstance(descr, InvalidDescr) and summary.status != "failed":  # pragma: no cover (defensive)
        summary.status = "failed"
    return summary


def run_package_test(path: str | os.PathLike) -> Any:
    """``bioimageio.core.test_model`` on the package (every weight format, CPU): its test input must
    give its test output; ``None`` when ``bioimageio.core`` is not installed."""
    require_spec()
    try:
        from bioimageio.core import test_model
    except ImportError:
        return None
    import numpy as np
    import torch

    # test_model seeds numpy and torch and sets torch's deterministic mode: give the caller its own back
    deterministic, torch_rng, numpy_rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state(), \
        np.random.get_state()
    try:
        return test_model(Path(path), devices=["cpu"])
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_rng_state(torch_rng)
        np.random.set_state(numpy_rng)


def first_error(summary: Any) -> str:
    """The first error of a ``ValidationSummary``, on one line."""
    for detail in summary.details:
        for err in detail.errors:
            return f"{'.'.join(map(str, err.loc))}: {err.msg}".replace("\n", " ")[:300]
        if detail.status == "failed":
            return f"{detail.name}".replace("\n", " ")[:300]
    return summary.status


def summary_text(summary: Any) -> str:
    """A plain-text rendering of a ``ValidationSummary`` (its markdown table)."""
    return summary.format_md()
