"""Configuration dataclasses shared by the core, the CLI and the widgets.

Every long-running core function takes one of these instead of a long list of keyword
arguments. They are plain data (JSON-serialisable via ``to_dict``/``from_dict``) so a model
folder can carry the exact configuration it was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")

Task = Literal["instances", "semantic"]
InstanceHead = str  # a name in the instance-head registry (``napari_unet.heads.names()``)
Polarity = Literal["keep", "auto"]  # "auto": bright-background images are inverted before the network
SHAPE = "shape"  # the uncertainty map of a head whose maps draw an object's outline (rays, flows): ``heads``


# -- one name per setting ----------------------------------------------------------------------
# A setting the CLI, the widgets and a model folder's model.json share has one name: its config field
# (and model.json key); the CLI flag is that name with dashes (``--mc-samples``; older flags stay as
# aliases), the widget label is ``Setting.label``. Its choices and help live in ``SETTINGS`` below, its
# default on the dataclass field; where two front ends default differently on purpose, the difference
# is a named constant here. ``tests/widgets/test_setting_names.py`` checks the CLI and widgets against it.

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")  # "auto": CUDA, then MPS, then the CPU
# the task a user picks (a project's ``mode``, an annotation mode); ``TrainConfig`` stores it as ``task`` +
# ``sparse`` (``workflows.classes``): "partial" is instances + sparse, "classes" / "sparse" are semantic
USER_TASKS: tuple[str, ...] = ("instances", "partial", "classes", "sparse")
CONFIG_TASKS: tuple[str, ...] = ("instances", "semantic")  # ``TrainConfig.task``: what model.json holds
TASK_LABELS: dict[str, str] = {"instances": "instances", "partial": "partial instances (unpainted = unknown)",
                               "sparse": "sparse classes", "classes": "classes (every pixel labelled)"}
UNCERTAINTY_KINDS: tuple[str, ...] = ("epistemic", "total", "aleatoric", SHAPE)  # the maps an uncertainty holds
MIN_SIZE = 10  # smallest predicted instance kept, pixels (``PredictConfig.min_size``)
ANNOTATE_MIN_SIZE = 20  # the Annotate widget's "Min size" (erase small regions, threshold start): a painted
# speck is erased more eagerly than a predicted object
MC_SAMPLES_WHEN_ASKED = 8  # MC-dropout samples where uncertainty is asked for by a switch (batch export's
# ``uncertainty``, the Predict widget, the demo); ``PredictConfig.mc_samples`` 0 means no uncertainty
SYNTHETIC_RATIO = 0.5  # share of patches from synthetic pairs when there are any (``TrainConfig``: 0, none)
LIVE_UNCERTAINTY_MC = 4  # the Train widget's preview MC samples: its live uncertainty layer starts on
# (``TrainConfig.preview_mc_samples`` 0: the CLI shows no previews)
CLI_CHECKPOINT_EVERY = 30.0  # ``train --checkpoint-every``: the CLI saves its --out folder every 30 s;
# ``TrainConfig.checkpoint_every`` None: a ``Trainer`` (the widget's included) saves only when asked


@dataclass(frozen=True)
class Setting:
    """A setting's name (config field, model.json key, CLI flag with dashes), widget label, choices, help."""

    name: str
    label: str
    help: str
    choices: tuple[Any, ...] = ()
    aliases: tuple[str, ...] = ()  # further CLI flags that set it (older names)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.flag, *self.aliases)


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("task", "Task", "what the masks hold: instances (object ids, 0 = background), partial (instances "
            "with 0 = not annotated, 1 = background, 2.. = objects), classes (a class per pixel; also 'semantic'), "
            "sparse (class scribbles, 0 = not annotated, 1 = background)", USER_TASKS),
    Setting("sparse", "Sparse", "masks are partial: 0 = not annotated (ignored), 1 = background, 2.. = objects "
            "(instances: one id each) or classes (semantic scribbles)"),
    Setting("synthetic_ratio", "Synthetic ratio", "share of patches from synthetic pairs (if any)",
            aliases=("--synthetic-share",)),
    Setting("mc_samples", "MC samples", "MC-dropout samples for the uncertainty (more: smoother, slower)"),
    Setting("preview_mc_samples", "Preview MC samples",
            "MC-dropout passes per preview for the live uncertainty layer (0 = off)"),
    Setting("uncertainty", "Uncertainty", "MC-dropout: also compute the uncertainty maps"),
    Setting("uncertainty_kind", "Uncertainty kind",
            "epistemic: what the model has not learnt (annotate there); aleatoric: ambiguous pixels; total: both; "
            "shape (star and flow heads): the spread of the rays or flows, where an outline is unsure",
            UNCERTAINTY_KINDS),
    Setting("device", "Device", "auto: CUDA, then MPS, then the CPU", DEVICES),
    Setting("min_size", "Min size", "smallest object kept, pixels"),
    Setting("diameter", "Object diameter",
            "auto: measure the objects and scale the image so they come to the size the model learned; off: "
            "predict the image as it is; a number: the objects' diameter in pixels"),
    Setting("volume_scale", "Volume scale",
            "3D: off: full resolution; auto: volumes whose objects are large for a 3D patch train and predict "
            "scaled down (the labels come back at full resolution); a number: that factor along y/x"),
    Setting("checkpoint_every", "Checkpoint every (s)",
            "seconds between atomic saves of the model while training (0 = only at the end)"),
)}


def setting(name: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field that carries its ``SETTINGS`` row (``dataclasses.fields(cls)[i].metadata``)."""
    return field(default=default, metadata={"setting": SETTINGS[name]}, **kwargs)


def setting_of(cls: type, name: str) -> Setting | None:
    """The ``Setting`` a config field carries (None for a plain field)."""
    return next((f.metadata.get("setting") for f in dataclasses.fields(cls) if f.name == name), None)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, ignoring unknown keys and recursing into nested configs."""
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        sub = _NESTED.get((cls, f.name))
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net (Ronneberger 2015, with common later options)."""

    in_channels: int = 1
    out_channels: int = 3
    dims: Literal[2, 3] = 2
    depth: int = 4  # number of down-sampling steps
    base_width: int = 8  # channels after the first block; doubles at each level (16: 1.9x slower per step)
    padding: Literal["same", "valid"] = "same"
    norm: Literal["batch", "group", "none"] = "batch"
    dropout: float = 0.1  # dropout in the deepest blocks; used for MC-dropout
    attention: bool = False  # additive attention gates on the skips (Oktay 2018)
    upsample: Literal["transpose", "interpolate"] = "transpose"
    reduce_after_concat: bool = False  # 1x1 conv halving channels after concatenation
    checkpointing: bool = False  # gradient checkpointing of the conv blocks
    side_channels: int = 0  # extra outputs from a side branch at half resolution (star rays, flows)
    side_width: int = 32  # channels of the side branch's two 3x3 convolutions


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied on the training device."""

    elastic: bool = True
    elastic_grid: int = 3  # control points per axis of the coarse displacement grid
    elastic_sigma: float = 10.0  # std-dev of control-point displacements, pixels
    flip: bool = True
    rot90: bool = True
    zoom: float = 2.0  # objects magnified by a factor drawn log-uniformly in [1/zoom, zoom] (1 = off): the same
    # objects at another magnification are found, not shattered (docs/experiments.md, "Zoom augmentation")
    zoom_3d: float = 1.0  # the same for 3D models: off, since zooming out a patch as deep as the volume mirrors
    # most of it along z (six 32-plane nuclei volumes, 300 steps: AP@0.5 0.82 off, 0.77 at 1.25, 0.66-0.70 at 2;
    # docs/benchmarks.md, "3D defaults")
    intensity_scale: float = 0.2  # image * U(1-s, 1+s)
    intensity_shift: float = 0.1  # image + U(-s, s)
    gamma: float = 0.2  # image ** exp(U(-g, g)) on the [0, 1]-ranged part
    noise: float = 0.03  # Gaussian noise std (in normalised units)
    probability: float = 1.0  # chance that a sample is augmented at all


@dataclass(frozen=True)
class LossConfig:
    """Weighted cross-entropy with the U-Net border weight map, plus optional Dice."""

    border_w0: float = 10.0
    border_sigma: float = 5.0
    balance_classes: bool = True  # the w_c term
    balance_power: float = 0.5  # w_c = (frequency of the commonest class / frequency) ** power; 1 = full balance
    dice_weight: float = 0.0
    # Partial instance annotations: each unannotated pixel pulls weakly towards background with this
    # weight (the annotated pixels' weights are ~1-10). Where nothing is painted, most of an image is
    # usually background; an unpainted object that looks like the painted ones is outvoted by them,
    # while background nobody painted is still learned. 0 = unannotated pixels take no part.
    unannotated_background: float = 0.01


# (batch size, patch side) of a training run that leaves them unset (None), by device; chosen in
# ``runtime.device.default_sizes``. CUDA rows: (GPU memory in GB at least, batch, patch), largest
# first; the top one is the H100 measurement (32 x 256² patches trained x2.6 faster per pixel than
# 8 x 128²); smaller cards keep the 256² patch and halve the batch with the memory.
CPU_SIZES: tuple[int, int] = (8, 128)  # also GPUs under 10 GB
MPS_SIZES: tuple[int, int] = (16, 128)  # Apple GPUs share the RAM: twice the CPU's pixels (not measured)
CUDA_SIZES: tuple[tuple[float, int, int], ...] = ((40.0, 32, 256), (20.0, 16, 256), (10.0, 8, 256))
# 3D models (``runtime.sizes.volume_sizes``): (patch side along y/x, voxels per step). The patch holds
# side / z_scale planes (about a cube of tissue), never more than the volumes along any axis; the batch
# fills the voxel budget. CPU: measured (docs/benchmarks.md, "3D defaults"); MPS and CUDA: not measured,
# sized so a step's activations stay a few GB (CUDA rows: GPU memory in GB at least, side, voxels).
CPU_VOLUME_SIZES: tuple[int, int] = (64, 2 * 16 * 64 * 64)  # also GPUs under 10 GB
MPS_VOLUME_SIZES: tuple[int, int] = (64, 4 * 16 * 64 * 64)
CUDA_VOLUME_SIZES: tuple[tuple[float, int, int], ...] = ((40.0, 128, 4 * 128**3), (20.0, 128, 2 * 128**3),
                                                         (10.0, 96, 96**3))
MAX_VOLUME_BATCH = 16  # volumes much smaller than the patch budget: at most this many patches per step
# 3D prediction tiles are sized by memory (``runtime.sizes.volume_tile``): the largest tile whose forward
# pass, on its input of tile + 2 * halo voxels per axis (clipped to the volume), fits the device's budget.
# Forward memory per input voxel: VOLUME_FORWARD_BYTES[0] + VOLUME_FORWARD_BYTES[1] * base width (bf16 on
# a CPU, any depth; measured 117-118 / 144-184 / 254-288 bytes at width 4 / 8 / 16: docs/benchmarks.md,
# "3D streaming").
VOLUME_FORWARD_BYTES: tuple[float, float] = (64.0, 16.0)
CPU_VOLUME_FORWARD_GB = 0.75  # CPU: one tile's forward pass, leaving room for the stream's buffers (2 GB target)
CUDA_VOLUME_FORWARD_SHARE = 0.5  # CUDA: this share of the card's free memory (fp32 activations counted twice)
MAX_VOLUME_TILE = 256  # a tile's side at most (its blending buffers grow with tile x tile x X on the host)
# voxels of context each 3D tile reads around it (at most the network's receptive radius, 96 for depth 4):
# the smallest halo whose tiles give the whole-volume instances (docs/benchmarks.md, "3D streaming")
VOLUME_HALO_CONTEXT = 32


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data."""

    task: Task = setting("task", "instances")  # "instances" | "semantic" here: USER_TASKS map onto it + sparse
    # instances: what the model outputs, a registered ``heads`` name; the default is also what model folders
    # written before heads existed hold (no key): 3 classes + watershed
    instance_head: InstanceHead = "3class"
    n_rays: int = 32  # star head: rays per pixel
    model: UNetConfig = field(default_factory=UNetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    n_classes: int = 2  # semantic task: number of classes including background
    patch_size: int | tuple[int, ...] | None = None  # patch side; None = sized to the device (``CPU_SIZES``,
    # ``CUDA_SIZES``...) and in 3D to the volumes (``runtime.sizes``); 3D: an int is the side along y/x (z gets
    # patch_size / z_scale planes), a tuple the (z, y, x) extents (what the 3D default stores)
    z_scale: float = 1.0  # 3D: voxel depth / pixel width (anisotropy); elastic warps and border weights use it
    # 3D: "off" | "auto" | a y/x factor: volumes with large objects train and predict scaled down
    # (``inference.volume_scale``; off by default: auto merged more touching nuclei on the one real volume
    # measured); a run stores the (z, y, x) factors it used, and z_scale of that grid
    volume_scale: str | float | tuple[float, ...] = setting("volume_scale", "off")
    batch_size: int | None = None  # patches per step; None = sized to the device
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    epochs: int | None = None  # passes over the training patches; None = until time limit
    steps: int | None = None  # hard cap on optimiser steps
    time_limit: float | None = 120.0  # seconds; None = no limit
    validation_fraction: float = 0.15
    validation_max_images: int = 12  # validation predicts at most this many held-out images
    validate_every: float = 30.0  # seconds between validations
    preview_every: float = 5.0  # seconds between preview events (0 = never)
    preview_mc_samples: int = setting("preview_mc_samples", 0)  # >0: previews carry MC-dropout epistemic uncertainty
    device: str = setting("device", "auto")  # one of DEVICES
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None = torch default
    low_precision: bool | None = None  # bf16 on CPU / AMP on CUDA; None = auto
    sparse: bool = setting("sparse", False)  # labels use 0 = unannotated, 1 = background, 2.. = classes
    percentiles: tuple[float, float] = (1.0, 99.8)
    polarity: Polarity = "keep"  # "auto": images with a bright background are inverted (arrays.normalize.POLARITIES)
    boundary_width: int = 1  # instances task: pixels of each object's rim that form the boundary class
    # seconds between atomic saves to the Trainer's checkpoint folder; the CLI's default: CLI_CHECKPOINT_EVERY
    checkpoint_every: float | None = setting("checkpoint_every", None)
    # fraction of patches drawn from the Trainer's synthetic pairs (0..1); a request's default: SYNTHETIC_RATIO
    synthetic_ratio: float = setting("synthetic_ratio", 0.0)
    fine_tune_guard: bool = True  # fine-tuning: keep the starting model if it validates better (training.guard)
    # fine-tuning: the returned weights are this share of the fine-tuned ones plus the rest of the
    # starting model's (``training.checkpoint.blend_towards``); 1 = the fine-tuned weights as they are;
    # None = chosen by how far the two agree on the annotated images (``training.finish.keep_by_agreement``)
    fine_tune_keep: float | None = 1.0


@dataclass(frozen=True)
class PredictConfig:
    """How to apply a trained model."""

    tile_size: int = 1024  # "same" models see whole images up to this size; larger ones are tiled
    volume_tile_size: int = 0  # 3D models: tile side per axis; 0 = by memory (``runtime.sizes.volume_tile``)
    volume_context: int = VOLUME_HALO_CONTEXT  # 3D models: halo each tile reads (capped at the receptive radius)
    overlap: int = 64
    batch_size: int = 1
    device: str = setting("device", "auto")
    mc_samples: int = setting("mc_samples", 0)  # >0: MC-dropout samples for uncertainty
    min_size: int = setting("min_size", MIN_SIZE)  # smallest instance kept, pixels
    # "auto" | "off" | the objects' diameter in pixels: the image is scaled so its objects come to the size
    # the model learned (``inference.size``; 2D models; docs/benchmarks.md, "Object size at prediction")
    diameter: str | float = setting("diameter", "auto")
    threads: int | None = None


_NESTED: dict[tuple[type, str], type] = {
    (TrainConfig, "model"): UNetConfig,
    (TrainConfig, "augment"): AugmentConfig,
    (TrainConfig, "loss"): LossConfig,
}
