"""The working scale of 3D models: volumes with large objects train and predict scaled down, the
labels come back on the volume's grid, and the model folder records the scale."""

from dataclasses import replace

import numpy as np
import pytest
from helpers import run_trainer

from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.errors import UserError
from napari_unet.events import Message, Preview
from napari_unet.inference import volume_scale
from napari_unet.inference.predict import predict_image
from napari_unet.models.bundle import load_bundle, save_bundle
from napari_unet.training.engine import Trainer

VOLUME = UNetConfig(dims=3, depth=2, base_width=4)


def big_balls(seed: int = 0, shape=(24, 96, 96), radius: float = 16.0, z_scale: float = 1.0):
    """Bright balls of ``radius`` pixel widths in a (Z, Y, X) volume whose planes are ``z_scale`` deep."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape).astype(np.float32)
    z *= z_scale
    image = rng.normal(0.2, 0.05, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint16)
    centres = [(shape[0] * z_scale / 2, cy, cx) for cy in (24, 72) for cx in (24, 72)]
    for i, c in enumerate(centres, start=1):
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < radius**2
        mask[ball] = i
        image[ball] += 1.0
    return image, mask


def test_the_setting_is_parsed_once_with_a_clear_refusal():
    assert volume_scale.parse_volume_scale("Auto") == "auto"
    assert volume_scale.parse_volume_scale("0.5") == 0.5
    assert volume_scale.parse_volume_scale([1, 0.5, 0.5]) == (1.0, 0.5, 0.5)
    for bad in ("half", "0", "-1", "9", [0.5, 0.5]):
        with pytest.raises(UserError, match="volume scale must be"):
            volume_scale.parse_volume_scale(bad)


def test_large_objects_are_brought_to_the_working_diameter_and_small_ones_kept():
    cfg = TrainConfig(model=VOLUME, volume_scale="auto")
    _, big = big_balls()
    assert volume_scale.resolved(TrainConfig(model=VOLUME), [big])[0].volume_scale == (1.0, 1.0, 1.0)  # default off
    assert 26 < volume_scale.plane_diameter([big]) < 34  # the median disc of a ball of 32 across
    decided, told = volume_scale.resolved(cfg, [big])
    fz, fy, fx = decided.volume_scale
    assert fy == fx and abs(fy * volume_scale.plane_diameter([big]) - volume_scale.WORKING_DIAMETER) < 0.5
    assert fz == fy and decided.z_scale == 1.0 and "scaled x" in told
    _, small = big_balls(radius=6.0)
    assert volume_scale.resolved(cfg, [small])[0].volume_scale == (1.0, 1.0, 1.0)
    assert volume_scale.resolved(replace(cfg, volume_scale="off"), [big])[0].volume_scale == (1.0, 1.0, 1.0)
    assert volume_scale.resolved(decided, [small])[0] is decided  # a decided run (resumed) keeps its scale
    flat = replace(TrainConfig(), volume_scale="auto")
    assert volume_scale.resolved(flat, [big[0]])[0].volume_scale == "auto"  # 2D models: not theirs


def test_deep_voxels_lose_planes_last_and_partial_annotations_keep_every_plane():
    """Partial annotations: auto keeps full resolution; a given factor keeps every plane."""
    assert volume_scale.working_factors(0.5, 3.0) == ((1.0, 0.5, 0.5), 1.5)  # planes 3 deep: z kept
    assert volume_scale.working_factors(0.25, 2.0) == ((0.5, 0.25, 0.25), 1.0)  # down to cubes, no further
    _, big = big_balls(z_scale=1.0)
    partial = np.where(big > 0, big + 1, 1).astype(np.uint16)  # 1 = background, 2.. = objects
    partial[1::2] = 0  # every second plane not annotated
    auto, told = volume_scale.resolved(TrainConfig(model=VOLUME, sparse=True, volume_scale="auto"), [partial])
    assert auto.volume_scale == (1.0, 1.0, 1.0) and "fully annotated" in told  # not measured: left as it is
    decided, _ = volume_scale.resolved(TrainConfig(model=VOLUME, sparse=True, volume_scale=0.6), [partial])
    assert decided.volume_scale == (1.0, 0.6, 0.6)
    image = np.zeros(partial.shape, np.float32)
    small_image, small_mask = volume_scale.working_pair(image, partial, decided.volume_scale, 1)
    assert small_mask.shape == small_image.shape and small_mask.shape[0] == partial.shape[0]
    assert set(np.unique(small_mask)) == set(np.unique(partial))  # 0, 1 and every id survive
    assert (small_mask[1::2] == 0).all()


def test_a_model_trained_on_large_nuclei_predicts_them_whole_on_the_volume_grid(tmp_path):
    pairs = [big_balls(seed) for seed in range(2)]
    cfg = TrainConfig(model=VOLUME, volume_scale="auto", steps=40, learning_rate=1e-2, batch_size=2, validate_every=1e9,
                      preview_every=1e-9, seed=0, threads=1)
    trainer = Trainer(pairs, cfg, preview_image=pairs[0][0])
    bundle, events = run_trainer(trainer)
    told = [e.text for e in events if isinstance(e, Message) and "volumes trained" in e.text]
    assert told and "scaled x" in told[0]
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews and previews[-1].labels.shape == pairs[0][0].shape  # shown on the volume's grid
    fz, fy, _ = bundle.config.volume_scale
    assert fy < 0.8 and fz == fy
    assert bundle.config.patch_size[1] <= round(96 * fy) + 1  # patches sized to the scaled volumes
    save_bundle(bundle, tmp_path / "m")
    loaded = load_bundle(tmp_path / "m")
    assert loaded.config.volume_scale == bundle.config.volume_scale
    image, truth = big_balls(seed=5)
    pred = predict_image(loaded, image)
    assert pred.labels.shape == image.shape and pred.probabilities.shape[1:] == image.shape
    assert "volume scale" in pred.sizing.text
    assert volume_scale.input_z_scale(loaded.config) == 1.0
    overlap = (pred.labels > 0) & (truth > 0)
    assert overlap.sum() > 0.5 * (truth > 0).sum()  # the nuclei are found, on the full-resolution grid


def test_a_resumed_3d_run_keeps_the_scale_it_decided(tmp_path):
    from napari_unet.training.state import load_state, resumed_config

    pairs = [big_balls(seed) for seed in range(2)]
    cfg = TrainConfig(model=VOLUME, volume_scale="auto", steps=4, batch_size=1, validate_every=1e9, preview_every=0,
                      seed=0, threads=1)
    first, _ = run_trainer(Trainer(pairs, cfg))
    save_bundle(first, tmp_path / "m")
    state = load_state(tmp_path / "m")
    assert state.config.volume_scale == first.config.volume_scale and first.config.volume_scale[1] < 1
    again, events = run_trainer(Trainer.resuming(state, pairs, resumed_config(state, steps=6)))
    assert again.config.volume_scale == first.config.volume_scale and again.config.z_scale == first.config.z_scale
    assert not any(isinstance(e, Message) and "volumes trained" in e.text for e in events)  # decided once


def test_a_3d_model_drops_fragments_far_below_the_objects_it_learned():
    from helpers import tiny_bundle

    from napari_unet.inference.labels import labels_for
    from napari_unet.models.bundle import ModelBundle

    _, mask = big_balls(radius=10.0)
    cfg = TrainConfig(model=VOLUME)
    learned = volume_scale.learned_volume(cfg, [mask])
    assert learned["objects"] == 4 and 3000 < learned["median"] < 5000  # balls of 10: about 4,200 voxels
    assert volume_scale.learned_volume(replace(cfg, sparse=True), [mask]) is None
    assert volume_scale.learned_volume(TrainConfig(), [mask[0]]) is None
    speck = np.zeros_like(mask)
    speck[10:14, 40:46, 40:46] = 9  # 144 voxels, in the background between the balls
    interior = (mask > 0) | (speck > 0)
    probs = np.stack([1.0 - interior, 0.9 * interior, 0.1 * interior]).astype(np.float32)
    plain = tiny_bundle(dims=3)
    assert labels_for(plain, probs).max() == 5  # the four balls and the speck
    told = ModelBundle(plain.net, plain.config, {volume_scale.KEY: learned})
    assert volume_scale.min_object_size(told, 10) == round(0.25 * learned["median"])
    assert labels_for(told, probs).max() == 4
    assert volume_scale.min_object_size(tiny_bundle(), 10) == 10  # 2D models: as asked


def test_validation_and_the_rule_search_drop_the_fragments_the_labels_drop(monkeypatch):
    import torch

    from napari_unet.data.dataset import PreparedPair
    from napari_unet.heads.calibrate import tune_thresholds
    from napari_unet.inference import predict
    from napari_unet.training.validation import validate

    _, mask = big_balls(radius=10.0)
    speck = np.zeros_like(mask)
    speck[10:14, 40:46, 40:46] = 1  # a false fragment of 144 voxels
    interior = (mask > 0) | (speck > 0)
    probs = np.stack([1.0 - interior, 0.9 * interior, 0.1 * interior]).astype(np.float32)
    monkeypatch.setattr(predict, "predict_normalized", lambda *args, **kwargs: probs)
    pair = PreparedPair(np.zeros((1, *mask.shape), np.float32), (mask > 0).astype(np.int64),
                        np.ones(mask.shape, np.float32), mask, "balls")
    cfg = TrainConfig(model=VOLUME)
    floor = volume_scale.floor_of(volume_scale.learned_volume(cfg, [mask]), 10)
    assert floor > 144
    assert validate(torch.nn.Identity(), [pair], cfg, None)["ap50"] == pytest.approx(0.8)  # 4 of 5 objects true
    assert validate(torch.nn.Identity(), [pair], cfg, None, min_size=floor)["ap50"] == 1.0
    assert tune_thresholds([probs], [mask], min_size=floor)["ap50"] == 1.0


def test_a_3d_run_scores_and_checkpoints_with_the_floor_its_labels_use(tmp_path, monkeypatch):
    from napari_unet.training import engine

    seen = []
    real = engine.validate
    monkeypatch.setattr(engine, "validate", lambda *args, **kwargs: seen.append(
        kwargs.get("min_size", args[6] if len(args) > 6 else None)) or real(*args, **kwargs))
    pairs = [big_balls(seed, radius=10.0) for seed in range(3)]
    cfg = TrainConfig(model=VOLUME, steps=3, batch_size=1, patch_size=32, validate_every=0.0, preview_every=0,
                      checkpoint_every=1e-9, seed=0, threads=1)
    bundle, _ = run_trainer(Trainer(pairs, cfg, checkpoint_to=tmp_path / "ckpt"))
    learned = bundle.meta[volume_scale.KEY]
    assert seen and set(seen) == {volume_scale.floor_of(learned, 10)} and seen[0] > 10
    assert load_bundle(tmp_path / "ckpt").meta[volume_scale.KEY] == learned  # a killed run's labels drop them too
