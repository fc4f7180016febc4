import pytest
import torch

from napari_unet.diffusion.config import DiffusionUNetConfig
from napari_unet.diffusion.unet import DiffusionUNet, timestep_embedding


def test_timestep_embedding_shape_and_distinct():
    emb = timestep_embedding(torch.tensor([0, 10, 999]), 15)
    assert emb.shape == (3, 15)
    assert not torch.allclose(emb[0], emb[1])


def test_output_shape_with_and_without_prompts(tiny_net):
    torch.manual_seed(0)
    net = DiffusionUNet(tiny_net)
    x = torch.randn(2, 1, 32, 48)
    t = torch.tensor([3, 70])
    assert net(x, t).shape == (2, 1, 32, 48)
    mask = torch.rand(2, 3, 32, 48)
    ctx, valid = torch.randn(2, 5, 16), torch.tensor([[True, True, False, False, False]] * 2)
    assert net(x, t, mask, ctx, valid).shape == (2, 1, 32, 48)


def test_prompt_and_context_change_the_output(tiny_net):
    torch.manual_seed(0)
    net = DiffusionUNet(tiny_net)
    for p in net.parameters():  # leave the zero-initialised start: every path must matter
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([5])
    mask = torch.zeros(1, 3, 16, 16)
    base = net(x, t, mask)
    mask[:, 0, 4:8, 4:8] = 1
    assert not torch.allclose(net(x, t, mask), base)
    ctx = torch.randn(1, 2, 16)
    assert not torch.allclose(net(x, t, None, ctx), net(x, t, None, ctx * 2))


def test_three_levels_default_and_size_check():
    net = DiffusionUNet(DiffusionUNetConfig())
    assert net.multiple == 4
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 1, 30, 32), torch.tensor([1]))
    assert sum(p.numel() for p in net.parameters()) < 3_000_000  # small enough for a CPU
