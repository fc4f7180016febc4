import json

import numpy as np
import pytest
import torch

from napari_unet.diffusion.bundle import load_diffusion, save_diffusion
from napari_unet.diffusion.config import SampleConfig
from napari_unet.diffusion.prompts import unpack_shapes
from napari_unet.diffusion.sample import synthesize
from napari_unet.diffusion.train import DiffusionTrainer, random_crops
from napari_unet.errors import UserError
from napari_unet.events import Finished, LossReport, Message, Progress


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


@pytest.fixture(scope="module")
def pairs(small_pairs):
    return [(im[:64, :64], m[:64, :64]) for im, m in small_pairs[:3]]


def test_cond_drop_rate_in_training_batches(pairs, tiny_cfg, monkeypatch):
    """The condition (mask channels and tags) is dropped for about cond_drop of the samples."""
    from dataclasses import replace

    from napari_unet.diffusion.unet import DiffusionUNet

    seen = []
    forward = DiffusionUNet.forward

    def spy(self, x, t, mask=None, context=None, context_mask=None):
        seen.append((mask.detach().clone(), context_mask.detach().clone()))
        return forward(self, x, t, mask, context, context_mask)

    monkeypatch.setattr(DiffusionUNet, "forward", spy)
    cfg = replace(tiny_cfg, steps=25, batch_size=8, crop_size=8, cond_drop=0.25)
    _run(DiffusionTrainer(pairs, cfg, tags=[["dense"]] * len(pairs)).run())
    masks = torch.cat([m for m, _ in seen])  # (200, 3, 8, 8)
    valid = torch.cat([v for _, v in seen])  # (200, M)
    dropped = masks[:, 2].amax(dim=(1, 2)) == 0  # the "present" channel is zero only when dropped
    assert 0.15 < dropped.float().mean() < 0.35
    no_tags = ~valid[:, 1]
    assert not (dropped & ~no_tags).any()  # a dropped mask always goes with dropped tags
    assert 0.3 < no_tags.float().mean() < 0.6  # 1 - (1 - 0.25)^2 = 0.44: tags are also dropped alone
    assert masks[dropped].abs().sum() == 0


def test_unannotated_images_supply_unconditional_crops(pairs, tiny_cfg, monkeypatch):
    """Images without masks give about ``unannotated_share`` of the crops, always without a prompt;
    every batch keeps at least one annotated crop."""
    from dataclasses import replace

    from napari_unet.diffusion.schedulers import NoiseSchedule
    from napari_unet.diffusion.unet import DiffusionUNet

    clean, prompts = [], []
    add_noise, forward = NoiseSchedule.add_noise, DiffusionUNet.forward
    monkeypatch.setattr(NoiseSchedule, "add_noise", lambda self, x0, noise, t: clean.append(x0.clone())
                        or add_noise(self, x0, noise, t))
    monkeypatch.setattr(DiffusionUNet, "forward", lambda self, x, t, mask=None, context=None, context_mask=None:
                        prompts.append(mask.clone()) or forward(self, x, t, mask, context, context_mask))
    cfg = replace(tiny_cfg, steps=40, batch_size=4, crop_size=8, cond_drop=0.0, unannotated_share=0.5)
    flat = np.full((40, 50), 7.0, np.float32)  # a constant image normalises to -1 everywhere
    bundle, events = _run(DiffusionTrainer(pairs, cfg, unannotated=[flat, flat]).run())
    assert bundle.meta["training"]["unannotated_images"] == 2
    assert any("3 training image(s) + 2 without masks (50% of the crops)" in e.text
               for e in events if isinstance(e, Message))
    x0, masks = torch.cat(clean), torch.cat(prompts)  # (160, 1, 8, 8), (160, 3, 8, 8)
    unprompted = masks.abs().amax(dim=(1, 2, 3)) == 0
    from_flat = (x0 == -1).flatten(1).all(dim=1)
    assert torch.equal(unprompted, from_flat)  # with cond_drop 0, exactly the unannotated crops lack a prompt
    assert 0.3 < from_flat.float().mean() < 0.65  # Binomial(4, 0.5) capped at 3 of 4: mean 0.48
    assert (~from_flat).view(40, 4).any(dim=1).all()


def test_train_generator_save_load_and_sample(pairs, tiny_cfg, tmp_path):
    trainer = DiffusionTrainer(pairs, tiny_cfg, tags=[["dense"], ["dim"], []])
    bundle, events = _run(trainer.run())
    assert isinstance(events[0], Message) and isinstance(events[-1], Finished)
    assert [e.done for e in events if isinstance(e, Progress)] == [1, 2, 3]
    assert bundle.meta["training"]["steps"] == 3 and bundle.config.tags == ("dense", "dim")
    assert bundle.shapes is not None and len(unpack_shapes(bundle.shapes)) > 0
    folder = save_diffusion(bundle, tmp_path / "diff")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["kind"] == "napari-unet/diffusion" and meta["config"]["crop_size"] == 32
    loaded = load_diffusion(folder)
    for (k, a), (_, b) in zip(bundle.net.state_dict().items(), loaded.net.state_dict().items()):
        assert torch.equal(a, b), k
    assert np.array_equal(loaded.shapes, bundle.shapes)

    masks = [pairs[0][1][:32, :30], pairs[1][1][:32, :30]]  # 30 is not a multiple of 2: padded inside
    cfg = SampleConfig(steps=4, guidance=2.0, seed=5, batch_size=2, low_precision=False)
    images, events = _run(synthesize(loaded, masks, cfg, tags=[["dense"], []]))
    assert [e.done for e in events if isinstance(e, Progress)] == [2, 4, 6, 8]
    assert len(images) == 2 and images[0].shape == (32, 30) and images[0].dtype == np.uint8
    again, _ = _run(synthesize(loaded, masks[:1], SampleConfig(steps=4, guidance=2.0, seed=5, batch_size=1,
                                                                 low_precision=False), tags=[["dense"]]))
    assert np.array_equal(again[0], images[0])  # same seed, same image, whatever the batching


def test_stop_and_bad_input(pairs, tiny_cfg):
    from dataclasses import replace

    with pytest.raises(UserError, match="unannotated images must be in"):
        DiffusionTrainer(pairs, replace(tiny_cfg, unannotated_share=1.0))
    trainer = DiffusionTrainer(pairs, replace(tiny_cfg, steps=None, time_limit=60))
    gen = trainer.run()
    next(gen)
    trainer.stop()
    bundle, _ = _run(gen)
    assert bundle.meta["training"]["stopped_early"]
    with pytest.raises(UserError, match="does not match"):
        _run(DiffusionTrainer([(pairs[0][0], pairs[0][1][:10])], tiny_cfg).run())
    with pytest.raises(UserError, match="multiple of 2"):
        _run(DiffusionTrainer(pairs, replace(tiny_cfg, crop_size=33)).run())
    with pytest.raises(UserError, match="tags for 1"):
        DiffusionTrainer(pairs, tiny_cfg, tags=[["a"]])


def test_random_crops_mirror_small_images():
    image = np.linspace(-1, 1, 20 * 24, dtype=np.float32).reshape(1, 20, 24)
    prompt = np.zeros((3, 20, 24), np.float32)
    imgs, prompts, idx = random_crops([(image, prompt)], 32, 3, np.random.default_rng(0))
    assert imgs.shape == (3, 1, 32, 32) and prompts.shape == (3, 3, 32, 32) and idx.tolist() == [0, 0, 0]
