"""What an array is: a plain image, an image with channels, colour, a stack of images, a volume.

One rule for the CLI (files) and the widgets (napari layers, which add an ``rgb`` flag):

- ``rgb`` (napari's flag): the last axis is colour; anything before the image is a stack.
- a model's input channels, when known, settle an ambiguous axis: a first or last axis of that
  length (> 1) is the channel axis (a one-channel model averages the channels it is given).
- otherwise a short axis (<= ``MAX_CHANNELS``) beside a long one is channels: last (H, W, C)
  before first (C, H, W); a 3D array with no short axis is a stack (Z, H, W).
- ``dims=3`` asks for volumes (a 2D image, (H, W) or (H, W, C), is refused): (Z, Y, X) is one volume; (Z, C, Y, X), (C, Z, Y, X) or, with
  ``rgb``, (Z, Y, X, C) one with channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Iterator, Literal

import numpy as np

from napari_unet.arrays.volumes import annotated_z_range
from napari_unet.errors import UserError

MAX_CHANNELS = 4  # longest axis still read as channels (RGBA)

Kind = Literal["image", "channels", "rgb", "stack", "volume"]


@dataclass(frozen=True)
class ArrayLayout:
    """Where the axes of an array are. ``spatial``: the shape of one image (or volume)."""

    kind: Kind
    spatial: tuple[int, ...]
    channel_axis: int | None = None  # index in the full array; None: one channel
    stack_axis: int | None = None  # 0 for stacks of images; None otherwise
    n_channels: int = 1

    @property
    def is_stack(self) -> bool:
        return self.stack_axis is not None

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Where ``spatial`` lies in the full array: every axis but the channel and stack axes."""
        ndim = len(self.spatial) + (self.channel_axis is not None) + (self.stack_axis is not None)
        return tuple(a for a in range(ndim) if a not in (self.channel_axis, self.stack_axis))


def array_layout(shape: tuple[int, ...], rgb: bool = False, model_channels: int | None = None,
                 dims: int = 2) -> ArrayLayout:
    """The layout of an array of ``shape`` for a ``dims``-D model (see the module rules)."""
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    if dims == 3 and (n == 2 or (n == 3 and not rgb and shape[-1] <= MAX_CHANNELS < shape[0])):
        raise UserError(f"a 3D model needs (Z, Y, X) volumes, got a 2D image of shape {shape}")
    if n < dims:
        raise UserError(f"expected a {dims}D image, got shape {shape}")
    if n == dims:
        return ArrayLayout("volume" if dims == 3 else "image", shape)
    if rgb:
        if n > dims + 2:
            raise UserError(f"cannot read a colour array of shape {shape}")
        stack = 0 if n == dims + 2 else None
        return ArrayLayout("rgb", shape[-1 - dims:-1], n - 1, stack, shape[-1])
    if n == dims + 1:
        axis = _channel_axis(shape, model_channels, dims)
        if axis is None:
            if dims == 3:
                raise UserError(f"an array of shape {shape} has no channel axis of at most {MAX_CHANNELS}")
            return ArrayLayout("stack", shape[1:], None, 0, 1)
        axis %= n
        spatial = shape[:axis] + shape[axis + 1:]
        return ArrayLayout("volume" if dims == 3 else "channels", spatial, axis, None, shape[axis])
    if n == dims + 2 and dims == 2:  # a stack of images with channels: (Z, C, H, W) or (Z, H, W, C)
        inner = array_layout(shape[1:], False, model_channels, dims)
        if inner.channel_axis is None:
            raise UserError(f"cannot read an array of shape {shape}: a stack of images with channels has a "
                            f"channel axis of at most {MAX_CHANNELS}")
        return ArrayLayout("stack", inner.spatial, inner.channel_axis + 1, 0, inner.n_channels)
    raise UserError(f"expected a {dims}D image (optionally with channels or as a stack), got shape {shape}")


def _channel_axis(shape: tuple[int, ...], model_channels: int | None, dims: int) -> int | None:
    """-1, 0, 1 (volumes: (Z, C, Y, X)) or None (no channel axis) for an array one axis longer than an image."""
    if model_channels is not None and model_channels > 1:
        if shape[-1] == model_channels and shape[0] != model_channels:
            return -1
        if shape[0] == model_channels:
            return 0
    if dims == 3 and shape[1] <= MAX_CHANNELS < min(shape[0], shape[-1]):
        return 1
    if shape[-1] <= MAX_CHANNELS < shape[0]:
        return -1
    if shape[0] <= MAX_CHANNELS:
        return 0
    if shape[-1] <= MAX_CHANNELS:
        return -1
    return None


def annotated_planes(name: str, image: np.ndarray, labels: np.ndarray, dims: int = 2,
                     zero_unannotated: bool = False) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, labels) training pairs of one annotated array: a 2D pair as is; a stack
    (Z, H, W) with (Z, H, W) labels (for a 2D model) as its annotated slices, named ``name[z]``;
    for a 3D model a volume as its annotated z-range (``volumes.annotated_z_range``), or whole when
    ``zero_unannotated`` (partial annotations and scribbles: 0 is "not annotated" on every plane,
    so a few painted planes keep the planes around them as context and nothing is taught there)."""
    image, labels = np.asarray(image), np.asarray(labels)
    if dims == 3 and labels.ndim == 3 and image.shape[:3] == labels.shape:
        planes = slice(None) if zero_unannotated else annotated_z_range(labels)
        yield name, image[planes], labels[planes]
        return
    if dims == 2 and labels.ndim == 3 and image.shape[:3] == labels.shape:
        for z in range(labels.shape[0]):
            if labels[z].any():
                yield f"{name}[{z}]", image[z], labels[z]
        return
    yield name, image, labels


def is_volume(shape: Sequence[int], rgb: bool = False) -> bool:
    """True when an array of ``shape`` is a stack/volume rather than one 2D image (a 2D model
    would read it as a stack), e.g. (Z, Y, X) with Z and X > 4, or (Z, Y, X, C)."""
    try:
        return array_layout(shape, rgb, dims=2).is_stack
    except UserError:  # no 2D reading of it at all, e.g. 4D without a channel axis
        return len(shape) == 4
