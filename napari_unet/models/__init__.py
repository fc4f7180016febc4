"""U-Net models: the configurable ``UNet`` and helpers around it."""

from .unet import UNet, count_parameters, enable_mc_dropout, estimate_flops

__all__ = ["UNet", "count_parameters", "enable_mc_dropout", "estimate_flops"]
