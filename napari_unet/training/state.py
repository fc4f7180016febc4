"""A run's training state: what continues an interrupted run where it stopped (``--resume``, *Resume*).

Saved inside the model folder, beside the weights and in the same atomic swap, by every checkpoint
and at the end of a run: ``training_state.safetensors`` holds the tensors (the current weights, the
optimiser's moments, the best weights so far, the starting model, the torch random states) and
``training_state.json`` the rest (the ``TrainConfig``, step, training seconds, best score, the numpy
random state, a fingerprint of the data). No pickle is involved.

A resumed run rebuilds the network from the stored config, re-prepares the same data (the
validation split depends only on the data and the seed), then restores ``Position`` and the random
states: on the CPU it continues bit for bit where an uninterrupted run would have been.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from napari_unet.config import TrainConfig, from_dict, to_dict
from napari_unet.errors import UserError
from napari_unet.files.io import recover_model_folder
from napari_unet.models.bundle import ModelBundle, build_network, cpu_state_dict, load_bundle

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STATE_FILES = (STATE_TENSORS, STATE_JSON)
STATE_VERSION = 1


@dataclass
class Position:
    """Where a run stands besides its network and optimiser; the step loop updates it."""

    batch: int  # patches per step (halved after running out of GPU memory)
    step: int = 0
    seconds: float = 0.0  # training seconds of the earlier sittings (a resumed run's clock starts here)
    best_state: dict[str, torch.Tensor] | None = None  # CPU weights kept by validation; None: the current ones
    best_score: float = -1.0
    best_metrics: dict[str, float] = field(default_factory=dict)
    kept: dict = field(default_factory=dict)  # the kept model's validation outputs (only "counts" is saved)


@dataclass(frozen=True)
class Sitting:
    """The live objects of a run whose state a checkpoint takes (and a resumed run restores)."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    rng: np.random.Generator  # patch sampling
    generator: torch.Generator  # augmentation (on the training device)
    device: torch.device


def fraction_of(step: int, seconds: float, total_steps: int | None, time_limit: float | None) -> float:
    """How much of a run's budget is spent: the larger of its step and time fractions."""
    parts = [step / total_steps] if total_steps else []
    parts += [seconds / time_limit] if time_limit else []
    return max(parts) if parts else math.inf


def step_budget(cfg: TrainConfig, per_epoch: int) -> int | None:
    """The optimiser steps ``cfg`` allows (``steps``, ``epochs`` of ``per_epoch`` steps: the smaller), or None."""
    if cfg.epochs is None:
        return cfg.steps
    epoch_steps = cfg.epochs * per_epoch
    return min(cfg.steps or epoch_steps, epoch_steps)


def data_fingerprint(pairs: Sequence[tuple[np.ndarray, np.ndarray]] | None,
                     names: Sequence[str] | None = None) -> list[list]:
    """Names and shapes of (image, mask) pairs: cheap, and enough to tell another data set."""
    if not pairs:
        return []
    names = list(names) if names is not None and len(names) == len(pairs) else [f"#{i}" for i in range(len(pairs))]
    return [[str(n), list(np.shape(image)), str(np.asarray(image).dtype), list(np.shape(mask))]
            for n, (image, mask) in zip(names, pairs)]


def fingerprint_difference(then: list[list], now: list[list]) -> str | None:
    """A short description of how ``now`` differs from ``then`` (None: the same data)."""
    if then == now:
        return None
    old, new = {row[0]: row[1:] for row in then}, {row[0]: row[1:] for row in now}
    added, missing = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if added or missing:
        listed = "; ".join(part for part in (f"new: {', '.join(added[:3])}" if added else "",
                                              f"missing: {', '.join(missing[:3])}" if missing else "") if part)
        return f"{len(then)} pair(s) then, {len(now)} now; {listed}"
    changed = next((name for name in old if old[name] != new[name]), None)
    if changed is None:  # the order decides the validation split and the patches drawn
        return "the same pairs in another order"
    return f"{changed} was {_shape_text(old[changed])}, is {_shape_text(new[changed])}"


def _shape_text(row: list) -> str:
    image, dtype, mask = row
    return f"{'x'.join(map(str, image))} {dtype} with a {'x'.join(map(str, mask))} mask"


@dataclass(frozen=True)
class TrainingState:
    """A snapshot of a run: ``tensors`` (CPU) and ``info`` (JSON-ready); see the module docstring."""

    tensors: dict[str, torch.Tensor]
    info: dict[str, Any]

    @property
    def config(self) -> TrainConfig:
        return from_dict(TrainConfig, self.info["config"])

    @property
    def step(self) -> int:
        return int(self.info["step"])

    @property
    def seconds(self) -> float:
        return float(self.info["seconds"])

    @property
    def finished(self) -> bool:
        """The run spent its budget (a stopped or killed run has not)."""
        return bool(self.info["finished"])

    def describe(self) -> str:
        """'20 of 40 steps' / '35 of 120 s' style progress of the stored run."""
        cfg, total = self.config, step_budget(self.config, int(self.info.get("steps_per_epoch") or 1))
        if total:
            return f"{self.step} of {total} steps"
        return f"{self.seconds:.0f} of {cfg.time_limit:g} s ({self.step} steps)"

    def files(self) -> dict[str, bytes]:
        """The two files saved beside the weights (``models.bundle.save_bundle``)."""
        from safetensors.torch import save

        return {STATE_TENSORS: save({k: v.contiguous() for k, v in self.tensors.items()}),
                STATE_JSON: json.dumps(self.info, indent=1, sort_keys=True).encode()}

    def start_bundle(self) -> ModelBundle | None:
        """The model the run started from (None for a run from scratch), as the run was given it."""
        init = self.info.get("init")
        if init is None:
            return None
        net = build_network(from_dict(TrainConfig, init["config"]))
        net.load_state_dict(_prefixed(self.tensors, "init."))
        return ModelBundle(net.eval(), from_dict(TrainConfig, init["config"]), init["meta"])


def capture(sitting: Sitting, pos: Position, cfg: TrainConfig, *, finished: bool, seconds: float,
            init: ModelBundle | None, data: dict[str, Any]) -> TrainingState:
    """The ``TrainingState`` of a run now (``data``: fingerprints and ``steps_per_epoch``)."""
    s = sitting
    tensors = {f"net.{k}": v for k, v in cpu_state_dict(s.net).items()}
    tensors.update({f"best.{k}": v for k, v in (pos.best_state or {}).items()})
    optim = s.optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, values in optim["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().to("cpu", copy=True)
            else:
                scalars[f"{index}.{name}"] = value
    tensors["random.torch"] = torch.get_rng_state()
    tensors["random.augment"] = s.generator.get_state()
    if s.device.type == "cuda":
        tensors["random.cuda"] = torch.cuda.get_rng_state(s.device)
    if "counts" in pos.kept:
        tensors["kept.counts"] = torch.from_numpy(np.asarray(pos.kept["counts"], np.float64))
    info = {"version": STATE_VERSION, "config": to_dict(cfg), "step": pos.step, "seconds": round(seconds, 3),
            "batch": pos.batch, "finished": finished, "best_score": pos.best_score, "best_metrics": pos.best_metrics,
            "has_best": pos.best_state is not None, "numpy_random": s.rng.bit_generator.state,
            "optimizer_groups": optim["param_groups"], "optimizer_scalars": scalars,
            "scaler": s.scaler.state_dict() if s.scaler is not None else None, "device": s.device.type, **data,
            "init": None if init is None else {"config": to_dict(init.config), "meta": init.meta}}
    if init is not None:
        tensors.update({f"init.{k}": v for k, v in cpu_state_dict(init.net).items()})
    return TrainingState(tensors, info)


def restore(state: TrainingState, sitting: Sitting) -> tuple[Position, str | None]:
    """Load ``state`` into a fresh run's objects; returns its ``Position`` and a warning (or None).

    Call it after everything that draws random numbers while setting up (building the network).
    On another device type the augmentation's random stream cannot be restored: it restarts.
    """
    s, t, info = sitting, state.tensors, state.info
    s.net.load_state_dict(_prefixed(t, "net."))
    optim: dict[str, Any] = {"state": {}, "param_groups": info["optimizer_groups"]}
    for key, value in [*((k[len("optim."):], v) for k, v in t.items() if k.startswith("optim.")),
                       *info["optimizer_scalars"].items()]:
        index, name = key.split(".", 1)
        optim["state"].setdefault(int(index), {})[name] = value
    s.optimizer.load_state_dict(optim)
    if s.scaler is not None and info.get("scaler"):
        s.scaler.load_state_dict(info["scaler"])
    s.rng.bit_generator.state = info["numpy_random"]
    torch.set_rng_state(t["random.torch"])
    warning = None
    if s.device.type == info["device"]:
        s.generator.set_state(t["random.augment"])
        if "random.cuda" in t:
            torch.cuda.set_rng_state(t["random.cuda"], s.device)
    else:
        warning = (f"the run trained on {info['device']}, it resumes on {s.device.type}: the augmentation's "
                   "random stream restarts (the result differs from an uninterrupted run)")
    kept = {"counts": t["kept.counts"].numpy()} if "kept.counts" in t else {}
    best = _prefixed(t, "best.") if info["has_best"] else None
    return Position(info["batch"], state.step, state.seconds, best, info["best_score"], info["best_metrics"],
                    kept), warning


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def has_state(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a training state to resume."""
    return all((Path(folder) / name).is_file() for name in STATE_FILES)


def load_state(folder: str | os.PathLike) -> TrainingState:
    """The training state saved in a model folder (``UserError`` when there is none or it is unreadable)."""
    from safetensors.torch import load_file


    folder = Path(folder)
    recover_model_folder(folder)  # a save a kill interrupted between its two renames
    if not folder.is_dir():
        raise UserError(f"no such model folder: {folder}")
    if not has_state(folder):
        raise UserError(f"{folder} holds no training state to resume ({STATE_TENSORS} and {STATE_JSON}); "
                        "only folders written by napari-unet training runs do")
    try:
        info = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
    except Exception as exc:  # corrupt or truncated: one line, never a traceback
        raise UserError(f"cannot read the training state in {folder}: {type(exc).__name__}: {exc}"
                        .split("\n")[0][:300]) from None
    if not isinstance(info, dict) or int(info.get("version", 0)) != STATE_VERSION:
        raise UserError(f"the training state in {folder} has another format (version {info.get('version')!r}, "
                        f"this napari-unet reads {STATE_VERSION})")
    return TrainingState(tensors, info)


def load_resumable(folder: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBundle:
    """``load_bundle(folder)`` with its training state attached (``bundle.resume``) when it has a
    readable one; the model alone otherwise (the state only matters to resuming)."""
    bundle = load_bundle(folder, device)
    if has_state(folder):
        try:
            bundle.resume = load_state(folder)
        except UserError:
            pass
    return bundle


def resumed_config(state: TrainingState, *, steps: int | None = None, epochs: int | None = None,
                   time_limit: float | None = None, device: str | None = None, where: str = "the model",
                   hint: str = "ask for more steps, epochs or seconds") -> TrainConfig:
    """The config a resumed run trains with: the stored one, with a new budget if any is given.

    Without a new budget the run continues to its own (``--steps N``: to step N; a time limit: for
    the seconds left). A given budget replaces the stored one (the learning-rate schedule then follows
    the new length from where the run is). ``UserError`` when the budget is already spent.
    """
    cfg = state.config
    extend = any(v is not None for v in (steps, epochs, time_limit))
    if extend:
        if time_limit is not None and time_limit <= 0:
            raise UserError("the time limit must be positive")
        cfg = replace(cfg, steps=steps, epochs=epochs, time_limit=time_limit)
    if device is not None:
        cfg = replace(cfg, device=device)
    total = step_budget(cfg, int(state.info.get("steps_per_epoch") or 1))
    if fraction_of(state.step, state.seconds, total, cfg.time_limit) >= 1.0:
        done = f"{state.step} steps, {state.seconds:.0f} s trained"
        if extend:
            raise UserError(f"{where} has already trained beyond that budget ({done}); {hint} to train it further")
        raise UserError(f"{where} holds a finished run ({state.describe()}); {hint} to train it further, "
                        "or start a new run from it (fine-tuning)")
    return cfg


def check_same_data(state: TrainingState, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                    names: Sequence[str] | None = None,
                    synthetic: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """``UserError`` unless ``pairs`` (names and shapes) and ``synthetic`` are the data the run trained on."""
    for what, then, now in (("training images", state.info["data"], data_fingerprint(pairs, names)),
                            ("synthetic pairs", state.info.get("synthetic") or [], data_fingerprint(synthetic))):
        difference = fingerprint_difference(then, now)
        if difference is not None:
            raise UserError(f"these are not the {what} the run trained on ({difference}); "
                            "a run resumes on the same data only")
