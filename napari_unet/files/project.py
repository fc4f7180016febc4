"""A training set of image/annotation pairs, saved as a project folder (TIFF + JSON).

Layout of a project folder::

    project.json              mode, class names, sample names (in order), synthetic pairs
    images/<name>.tif         the images
    labels/<name>.tif         the annotations
    synthetic/images/<n>.tif  accepted diffusion-made images (training only, never validation)
    synthetic/masks/<n>.tif   their prompt masks; project.json records prompt, tags, seed, guidance

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file: what is on disk is always the previous or the new version.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_unet.errors import UserError
from napari_unet.files.io import read_image, read_mask, write_image, write_json

PROJECT_KIND = "napari-unet/project"
PROJECT_VERSION = 1


@dataclass
class Sample:
    """One image with its annotation (labels in the project's mode)."""

    name: str
    image: np.ndarray
    labels: np.ndarray


@dataclass
class SyntheticPair:
    """A generated image with the mask it was drawn for, and how it was made (prompt, seed, ...)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    origin: dict = field(default_factory=dict)  # JSON-ready: prompt, tags, seed, guidance, steps


def safe_name(name: str) -> str:
    """A file-system-safe stem for a layer name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "image"


@dataclass
class Project:
    """An ordered set of samples annotated in one mode: the user task ("instances", "sparse" or "classes")."""

    mode: str = "instances"
    class_names: list[str] = field(default_factory=lambda: ["background", "object"])
    samples: dict[str, Sample] = field(default_factory=dict)
    synthetic: dict[str, SyntheticPair] = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(self.samples)

    def add(self, name: str, image: np.ndarray, labels: np.ndarray) -> None:
        """Add or replace a sample; the label image must match the image's spatial shape."""
        image, labels = np.asarray(image), np.asarray(labels)
        if labels.shape != image.shape[: labels.ndim] and labels.shape != image.shape[-labels.ndim:]:
            raise UserError(f"{name}: annotation shape {labels.shape} does not match image shape {image.shape}")
        self.samples[name] = Sample(name, image, labels)

    def remove(self, name: str) -> None:
        self.samples.pop(name, None)

    def update_labels(self, name: str, labels: np.ndarray) -> None:
        self.samples[name].labels = np.asarray(labels)

    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The real (image, labels) pairs; synthetic ones are apart (``synthetic_pairs``)."""
        return [(s.image, s.labels) for s in self.samples.values()]

    def add_synthetic(self, image: np.ndarray, labels: np.ndarray, origin: dict | None = None,
                      name: str | None = None) -> str:
        """Keep a generated pair (a fresh ``synthetic_NNNN`` name unless given); returns its name."""
        image, labels = np.asarray(image), np.asarray(labels)
        if labels.shape != image.shape[: labels.ndim]:
            raise UserError(f"synthetic mask shape {labels.shape} does not match image shape {image.shape}")
        if name is None:
            taken = {safe_name(n) for n in self.synthetic}
            name = next(f"synthetic_{k:04d}" for k in range(len(taken) + 1) if f"synthetic_{k:04d}" not in taken)
        self.synthetic[name] = SyntheticPair(name, image, labels, dict(origin or {}))
        return name

    def synthetic_pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The accepted synthetic (image, mask) pairs, for ``Trainer(..., synthetic=...)``."""
        return [(s.image, s.labels) for s in self.synthetic.values()]

    # -- files -------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write every sample and the project description (atomically, file by file)."""
        folder = Path(folder)
        try:
            for sample in self.samples.values():
                self.save_image(folder, sample.name)
                self.save_labels(folder, sample.name)
            for name in self.synthetic:
                self.save_synthetic(folder, name)
            self._write_description(folder)
        except OSError as exc:
            raise UserError(f"cannot save the project to {folder}: {exc.strerror or exc}") from exc
        return folder

    def save_labels(self, folder: str | os.PathLike, name: str) -> Path:
        """Write one sample's annotation (what autosave calls after each edit)."""
        path = Path(folder) / "labels" / f"{safe_name(name)}.tif"
        write_image(path, self.samples[name].labels)
        return path

    def save_image(self, folder: str | os.PathLike, name: str) -> Path:
        """Write one sample's image."""
        path = Path(folder) / "images" / f"{safe_name(name)}.tif"
        write_image(path, self.samples[name].image)
        return path

    def save_synthetic(self, folder: str | os.PathLike, name: str) -> None:
        """Write one synthetic pair's image and mask (``synthetic/images``, ``synthetic/masks``)."""
        pair = self.synthetic[name]
        write_image(Path(folder) / "synthetic" / "images" / f"{safe_name(name)}.tif", pair.image)
        write_image(Path(folder) / "synthetic" / "masks" / f"{safe_name(name)}.tif", pair.labels)

    def missing_files(self, folder: str | os.PathLike) -> tuple[list[str], list[str]]:
        """Names of the samples and synthetic pairs whose files ``folder`` lacks (to copy them there)."""
        folder = Path(folder)
        samples = [n for n in self.samples if not all((folder / sub / f"{safe_name(n)}.tif").is_file()
                                                      for sub in ("images", "labels"))]
        synthetic = [n for n in self.synthetic if not all((folder / "synthetic" / sub / f"{safe_name(n)}.tif").is_file()
                                                          for sub in ("images", "masks"))]
        return samples, synthetic

    def save_description(self, folder: str | os.PathLike) -> None:
        """Write ``project.json`` (mode, classes, sample list, synthetic pairs)."""
        self._write_description(Path(folder))

    def _write_description(self, folder: Path) -> None:
        write_json(folder / "project.json", {
            "kind": PROJECT_KIND, "version": PROJECT_VERSION, "mode": self.mode,
            "class_names": self.class_names,
            "samples": [{"name": s.name, "file": f"{safe_name(s.name)}.tif"} for s in self.samples.values()],
            "synthetic": [{"name": s.name, "file": f"{safe_name(s.name)}.tif", "origin": s.origin}
                          for s in self.synthetic.values()],
        })

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Project":
        """Read a project folder written by ``save``."""

        folder = Path(folder)
        description = folder / "project.json"
        if not description.is_file():
            raise UserError(f"{folder} is not a napari-unet project (no project.json)")
        try:
            meta = json.loads(description.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{description} is damaged: {exc}") from exc
        if meta.get("kind") != PROJECT_KIND:
            raise UserError(f"{folder} is not a napari-unet project")
        if int(meta.get("version", 0)) > PROJECT_VERSION:
            raise UserError(f"{folder} was written by a newer napari-unet; please upgrade")
        project = cls(mode=meta.get("mode", "instances"), class_names=list(meta.get("class_names", [])))
        for entry in meta.get("samples", []):
            image_path, labels_path = folder / "images" / entry["file"], folder / "labels" / entry["file"]
            if not image_path.is_file():
                raise UserError(f"{folder}: image {entry['file']} is missing")
            image = read_image(image_path)
            labels = read_mask(labels_path) if labels_path.is_file() else np.zeros(image.shape[:2], np.uint32)
            project.samples[entry["name"]] = Sample(entry["name"], image, labels)
        for entry in meta.get("synthetic", []):
            image_path = folder / "synthetic" / "images" / entry["file"]
            mask_path = folder / "synthetic" / "masks" / entry["file"]
            if not (image_path.is_file() and mask_path.is_file()):
                raise UserError(f"{folder}: synthetic pair {entry['file']} is missing")
            project.synthetic[entry["name"]] = SyntheticPair(entry["name"], read_image(image_path),
                                                             read_mask(mask_path), dict(entry.get("origin", {})))
        return project
