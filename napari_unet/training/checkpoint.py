"""Fine-tuning helpers: copy the weights of a starting model that fit a new network, and blend
the fine-tuned weights back towards them at the end of a run."""

from __future__ import annotations

from typing import Sequence

import torch


def load_compatible_weights(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor whose name and shape fit; return the names left freshly initialised.

    Used to fine-tune from a model with a different number of input channels or classes:
    only the first and last layers are re-initialised.
    """
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(fitting, strict=False)
    return sorted(k for k in own if k not in fitting)


def transfer_input_layer(net: torch.nn.Module, start: torch.nn.Module, invert: bool = False) -> None:
    """Give ``net``'s first convolution the starting network's, for any channel count and polarity.

    Channels: the start's filters summed over its input channels see the grey image; spread
    evenly over ``net``'s channels they see the mean of those channels, so a grey model starts
    on a colour image as it would on its grey version (and a colour model on a grey image as on
    that grey repeated), instead of from random filters. ``invert``: the filters see ``1 - x``
    (the images are normalised to about 0..1), so a model that learned bright objects on a dark
    background starts out right on dark objects on a light one; the constant that inversion adds
    to every feature is taken out of the batch norm's running mean, so the start model's
    predictions on the inverted images equal its own on the originals (exactly away from the
    borders, where zero padding does not invert).
    """
    conv, norm = net.input_layer
    source, _ = start.input_layer
    with torch.no_grad():
        grey = source.weight.sum(dim=1, keepdim=True)  # (O, 1, *K)
        weight = grey.repeat(1, conv.weight.shape[1], *([1] * (grey.ndim - 2))) / conv.weight.shape[1]
        if invert:
            constant = weight.sum(dim=tuple(range(1, weight.ndim)))  # (O,): the filters' response to 1
            weight = -weight
            if isinstance(norm, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) and norm.running_mean is not None:
                norm.running_mean -= constant
            if conv.bias is not None:
                conv.bias += constant
        conv.weight.copy_(weight)


def blend_towards(net: torch.nn.Module, start: dict[str, torch.Tensor], keep: float,
                  fresh: Sequence[str] = ()) -> int:
    """Move ``net``'s weights to ``keep * fine-tuned + (1 - keep) * start`` in place; return how
    many tensors were blended.

    ``start``: the network's state before fine-tuning (after ``transfer_input_layer``). Every
    floating-point tensor is blended, batch-norm running statistics included (they are averaged
    like the weights they go with); ``fresh`` names (re-initialised for this task: the start holds
    nothing for them) and integer buffers (``num_batches_tracked``) keep their fine-tuned values.
    A straight line between two weights of one fine-tuning run stays in one basin: the blend
    predicts between the two models (WiSE-FT, Wortsman et al. 2022), docs/benchmarks.md
    ("Gentle fine-tuning").
    """
    skip = set(fresh)
    blended = 0
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if name in skip or name not in start or not value.is_floating_point():
                continue
            value.lerp_(start[name].to(value), 1.0 - keep)
            blended += 1
    return blended
