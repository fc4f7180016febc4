"""Fine-tuning helper: copy the weights of a starting model that fit a new network."""

from __future__ import annotations

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
