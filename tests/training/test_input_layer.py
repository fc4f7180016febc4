"""Fine-tuning carries the starting model's first layer over to other channels and polarity."""

import numpy as np
import torch

from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.data.dataset import objects_brighter, prepare_pairs
from napari_unet.models.bundle import build_network
from napari_unet.training.checkpoint import load_compatible_weights, transfer_input_layer


def _nets(in_channels: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    start = build_network(TrainConfig(model=UNetConfig(depth=2, base_width=4))).eval()
    for module in start.modules():  # non-trivial running statistics, as in a trained model
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
    net = build_network(TrainConfig(model=UNetConfig(depth=2, base_width=4, in_channels=in_channels))).eval()
    load_compatible_weights(net, start.state_dict())
    return start, net


def test_grey_model_on_colour_sees_the_channel_mean():
    start, net = _nets(3)
    transfer_input_layer(net, start)
    rgb = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(rgb), start(rgb.mean(1, keepdim=True)), atol=1e-5)


def test_inverted_input_layer_sees_one_minus_the_image():
    start, net = _nets(1)
    transfer_input_layer(net, start, invert=True)
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        inner = (slice(None), slice(None), slice(44, -44), slice(44, -44))  # zero padding does not invert near borders
        assert torch.allclose(net(1 - x)[inner], start(x)[inner], atol=1e-4)


def test_polarity_of_the_annotated_objects(showcase):
    image, gt = showcase
    pairs = prepare_pairs([(image, gt)], TrainConfig())
    assert objects_brighter(pairs) is True
    assert objects_brighter(prepare_pairs([(255 - image, gt)], TrainConfig())) is False
    objects_only = np.where(gt > 0, gt + 1, 0)  # partial: objects painted, no background stroke
    assert objects_brighter(prepare_pairs([(image, objects_only)], TrainConfig(sparse=True))) is None
