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
