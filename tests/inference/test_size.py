"""Object size at prediction: the size statistic on objects of known size, the factor rule, the
learned size a training run records, and the shipped model finding nuclei imaged at twice the
magnification whole (auto) where it shatters them as they are (off)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unet.config import PredictConfig, TrainConfig
from napari_unet.errors import UserError
from napari_unet.inference import size


def discs(radius: float, shape: tuple[int, int] = (256, 256), n: int = 12, seed: int = 0) -> np.ndarray:
    """Instance labels of ``n`` non-overlapping discs of ``radius`` on a jittered grid."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    step = int(2.6 * radius) + 2
    centres = [(y, x) for y in range(step // 2 + 1, shape[0] - step // 2, step)
               for x in range(step // 2 + 1, shape[1] - step // 2, step)]
    for i, (y, x) in enumerate(centres[:n], start=1):
        cy, cx = y + rng.uniform(-1, 1), x + rng.uniform(-1, 1)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_the_diameter_of_discs_follows_their_magnification(scale):
    base, _ = size.diameter_of(discs(8) > 0)
    seen, parts = size.diameter_of(discs(8 * scale, shape=(512, 512)) > 0)
    assert parts == 12 and abs(base - 16) <= 1.5
    assert seen / base == pytest.approx(scale, rel=0.1)


def test_the_estimate_is_blind_to_how_the_objects_are_split_and_to_specks():
    truth = discs(10)
    shattered = truth * 4 + (np.indices(truth.shape).sum(0) % 4)  # every disc cut into stripes of other ids
    shattered[truth == 0] = 0
    specks = truth.copy()
    rng = np.random.default_rng(1)
    for y, x in rng.integers(0, 256, (30, 2)):
        if not truth[max(y - 3, 0):y + 3, max(x - 3, 0):x + 3].any():
            specks[y:y + 2, x:x + 2] = 999  # 2x2 noise: many parts, few pixels
    base, _ = size.diameter_of(truth > 0)
    assert size.diameter_of(shattered > 0)[0] == base
    assert size.diameter_of(specks > 0)[0] == pytest.approx(base, rel=0.05)


def test_the_factor_has_a_dead_zone_and_a_clamp():
    assert size.factor_for(16, 16) == 1.0
    assert size.factor_for(16, 16 * 0.9 * size.DEAD_ZONE) == 1.0
    assert size.factor_for(16, 32) == pytest.approx(0.5)
    assert size.factor_for(16, 4) == pytest.approx(4.0) and size.factor_for(16, 1) == size.MAX_FACTOR
    assert size.factor_for(16, 18, dead_zone=1.0) == pytest.approx(16 / 18)  # a given diameter: no dead zone
    # a model that learned a range of sizes keeps all of them and brings the others to its nearer end
    assert size.factor_for((10, 42), 8) == size.factor_for((10, 42), 50) == 1.0
    assert size.factor_for((10, 42), 5) == pytest.approx(2.0) and size.factor_for((10, 42), 84) == pytest.approx(0.5)


@pytest.mark.parametrize("value, message", [(-3, "positive"), ("0", "positive"), ("big", "auto, off or a number"),
                                            ("nan", "positive")])
def test_a_bad_diameter_is_one_line(value, message):
    with pytest.raises(UserError, match=message) as info:
        size.parse_diameter(value)
    assert "\n" not in str(info.value)
    assert size.parse_diameter(" Auto ") == "auto" and size.parse_diameter("25") == 25.0


def test_rescaling_round_trips_the_grid():
    labels = discs(6, shape=(100, 130))
    image = (labels > 0).astype(np.float32)
    small = size.rescale_image(image, 0.5, [0, 1])
    assert small.shape == (50, 65)
    back = size.resize_labels(labels[::2, ::2], (100, 130))
    assert back.shape == (100, 130) and set(np.unique(back)) <= set(np.unique(labels))
    maps = size.resize_maps(np.stack([image, 1 - image])[:, ::2, ::2], (100, 130))
    assert maps.shape == (2, 100, 130)


def test_a_training_run_records_the_size_of_the_painted_objects():
    from napari_unet.events import run_to_end
    from napari_unet.training.engine import Trainer

    labels = discs(7, shape=(96, 96), n=9)
    image = np.where(labels > 0, 200, 20).astype(np.uint8)
    cfg = TrainConfig(steps=2, time_limit=None, batch_size=2, patch_size=64, validation_fraction=0.0, seed=0,
                      preview_every=0, threads=1)
    bundle = run_to_end(Trainer([(image, labels)], cfg).run())
    assert bundle.meta[size.KEY]["diameter"] == pytest.approx(14, abs=1.5)
    # partial masks: only the painted objects (ids 2..) count, here three of them, twice as large
    partial = np.ones((96, 96), np.uint16)
    big = discs(14, shape=(96, 96), n=3)
    partial[big > 0] = big[big > 0] + 1
    partial[:, 80:] = 0  # a strip not annotated
    sparse = run_to_end(Trainer([(np.where(big > 0, 200, 20).astype(np.uint8), partial)],
                                TrainConfig(**{**cfg.__dict__, "sparse": True})).run())
    assert sparse.meta[size.KEY]["diameter"] == pytest.approx(28, abs=2)


@pytest.fixture(scope="module")
def nuclei():
    """``pretrained:nuclei`` and the bundled nuclei image with its annotation."""
    from napari_unet.data.samples import load_sample
    from napari_unet.workflows.model_spec import resolve_model

    image, mask = load_sample()
    return resolve_model("pretrained:nuclei", None), image, mask


def test_the_shipped_model_records_its_learned_size(nuclei):
    bundle, _, _ = nuclei
    assert size.learned_diameter(bundle.meta) == pytest.approx(15.6, abs=0.1)


def test_nuclei_at_twice_the_magnification_are_found_whole_with_auto(nuclei):
    """A model that learned these nuclei at 1x (the shipped weights with the size a fine-tune on
    this crop records) and the crop upscaled 2x: as it is it splits or misses them (lower AP@0.5);
    auto measures them at about twice its learned size, shrinks the image and finds them."""
    from dataclasses import replace

    from napari_unet.inference.predict import predict_image
    from napari_unet.metrics import evaluate_instances

    shipped, image, mask = nuclei
    crop, truth = image[:256, :256], mask[:256, :256]
    bundle = replace(shipped, meta={**shipped.meta, size.KEY: size.learned_size([truth])})
    big = ndi.zoom(crop.astype(np.float32), 2, order=1, grid_mode=True, mode="nearest")
    big_truth = np.repeat(np.repeat(truth, 2, 0), 2, 1)
    one = predict_image(bundle, crop, PredictConfig(diameter="off"))
    off = predict_image(bundle, big, PredictConfig(diameter="off"))
    auto = predict_image(bundle, big, PredictConfig(diameter="auto"))
    assert auto.labels.shape == big.shape and auto.probabilities.shape[1:] == big.shape
    assert auto.sizing.how == "auto" and 0.4 <= auto.sizing.factor <= 0.65, auto.sizing  # to its range's top
    ap = {k: evaluate_instances([(p.labels, t)])["ap50"]
          for k, p, t in (("1x", one, truth), ("off", off, big_truth), ("auto", auto, big_truth))}
    assert ap["auto"] > ap["off"] + 0.1, ap
    assert ap["auto"] >= 0.9 * ap["1x"], ap


def test_auto_never_enlarges(nuclei):
    """An image of noise with hardly any objects: specks measured as tiny objects would ask for a
    large upscale; auto only shrinks, so the image is predicted as it is."""
    from napari_unet.inference.predict import predict_image

    bundle, _, _ = nuclei
    noise = np.random.default_rng(0).normal(20, 6, (256, 256)).clip(0, 255).astype(np.uint8)
    pred = predict_image(bundle, noise, PredictConfig(diameter="auto"))
    assert pred.sizing.seen < pred.sizing.learned / size.DEAD_ZONE  # the first pass was fooled...
    assert pred.sizing.factor == 1.0 and pred.sizing.how.startswith("smaller than learned")


def test_a_shrink_the_scaled_prediction_does_not_confirm_is_undone():
    from napari_unet.inference.predict import confirmed

    asked = size.Sizing(size.AUTO, 0.5, 16.0, 32.0, (16.0, 16.0))
    assert confirmed(asked, discs(8)) == asked  # the scaled objects measure 16 px: the learned size
    undone = confirmed(asked, discs(3))  # 6 px: the first estimate was wrong
    assert undone.factor == 1.0 and undone.how.startswith("not confirmed")


def test_a_given_diameter_is_a_fixed_factor_and_off_is_off(nuclei):
    from napari_unet.inference.predict import predict_image

    bundle, image, _ = nuclei
    crop = image[:128, :128]
    given = predict_image(bundle, crop, PredictConfig(diameter=31.2))
    assert given.sizing.how == "given" and given.sizing.factor == pytest.approx(0.5, abs=0.01)
    assert given.labels.shape == crop.shape
    assert predict_image(bundle, crop, PredictConfig(diameter="off")).sizing.factor == 1.0


def test_3d_models_refuse_a_given_diameter_and_skip_auto():
    from helpers import tiny_bundle

    from napari_unet.inference.predict import predict_image

    bundle = tiny_bundle(dims=3)
    bundle.meta[size.KEY] = {"diameter": 10.0}
    volume = np.random.default_rng(0).random((8, 32, 32)).astype(np.float32)
    assert predict_image(bundle, volume, PredictConfig(diameter="auto")).sizing.factor == 1.0
    with pytest.raises(UserError, match="2D images only"):
        predict_image(bundle, volume, PredictConfig(diameter=12))


def test_cli_predict_takes_the_diameter_and_prints_what_it_used(nuclei, tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.files.io import write_image

    _, image, _ = nuclei
    write_image(tmp_path / "n.png", image[:192, :192])
    assert main(["predict", "pretrained:nuclei", str(tmp_path / "n.png"), "--out", str(tmp_path / "o"),
                 "--diameter", "31", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "n.png: object size: given 31.0 px, learned 15.6 px; image scaled x0.50" in out
    assert "scale" in (tmp_path / "o" / "summary.csv").read_text().splitlines()[0]
    assert main(["predict", "pretrained:nuclei", str(tmp_path / "n.png"), "--out", str(tmp_path / "o2"),
                 "--diameter", "-4", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diameter must be a positive number" in err[0]


def test_the_split_height_follows_the_object_size():
    rule = {"fg_threshold": 0.7, "seed_threshold": 0.6, "split_height": 1.0}
    assert size.rule_for_size(rule, 18.0, 15.6) == (rule, 1.0)  # within the dead zone: kept
    scaled, ratio = size.rule_for_size(rule, 46.8, 15.6)
    assert ratio == pytest.approx(3.0) and scaled == {**rule, "split_height": 3.0}  # only the length moves
    assert size.rule_for_size(rule, 4.0, 16.0)[0]["split_height"] == 0.25
    assert size.rule_for_size(rule, 500.0, 15.6)[1] == size.MAX_FACTOR
    assert size.rule_for_size({**rule, "split_height": None}, 46.8, 15.6)[1] == 1.0  # no split: nothing to scale
    assert size.rule_for_size(rule, None, 15.6) == (rule, 1.0)


def test_a_fine_tune_on_large_objects_carries_a_split_height_at_their_size(nuclei):
    from napari_unet.events import Message, run_to_end
    from napari_unet.pretrained import fine_tune_config
    from napari_unet.training.engine import Trainer

    start = nuclei[0]
    cfg = TrainConfig(task="instances", steps=2, time_limit=None, batch_size=2, patch_size=64, seed=0,
                      preview_every=0, threads=1, validation_fraction=0.0)
    cfg = fine_tune_config(cfg, start)

    def fine_tune(radius: float) -> tuple:
        labels = discs(radius, shape=(192, 192), n=9)
        told: list[str] = []
        bundle = run_to_end(Trainer([(np.where(labels > 0, 200, 20).astype(np.uint8), labels)], cfg, init=start).run(),
                            lambda e: told.append(e.text) if isinstance(e, Message) else None)
        return bundle, told

    big, told = fine_tune(22)  # diameter ~44: about 2.8x the 15.6 px the start learned
    ratio = big.meta[size.KEY]["diameter"] / size.learned_diameter(start.meta)
    assert ratio > size.DEAD_ZONE
    scaled = round(start.postprocess["split_height"] * ratio, 2)
    chosen = big.meta["training"]["split_on_painted"]  # then raised where that keeps the painted discs whole
    assert chosen["inherited"] == pytest.approx(scaled) and big.postprocess["split_height"] == chosen["chosen"]
    assert chosen["chosen"] >= scaled and chosen["ap50_chosen"] >= chosen["ap50_inherited"]
    assert big.meta["training"]["rule_scaled"] == pytest.approx(ratio, abs=1e-3)
    assert any("split height scaled" in t for t in told)
    same, _ = fine_tune(8)  # diameter ~16: the start's own size, its rule kept as it is
    assert same.postprocess == start.postprocess and "rule_scaled" not in same.meta["training"]


def test_one_annotated_image_learns_the_range_of_its_objects_sizes():
    """One image of small and large discs: the learned range spans both sizes (not the image's one
    median twice), so ``auto`` leaves images at that magnification alone and still shrinks 2x ones."""
    mixed = discs(5, n=6).astype(np.uint16)
    large = discs(9, n=6, seed=1)
    mixed[:, 128:] = np.where(large[:, :128] > 0, large[:, :128] + 100, 0)
    learned = size.learned_size([mixed])
    low, high = size.learned_range({size.KEY: learned})
    assert low <= 11 and high >= 17, learned
    assert size.factor_for((low, high), 16) == 1.0 and size.factor_for((low, high), 10) == 1.0
    assert size.factor_for((low, high), 2 * high * size.DEAD_ZONE) < 1.0


def test_the_learned_range_reaches_the_objects_that_hold_the_area():
    """Painted objects of many small and two large ones, the small holding most of the area: the
    learned size is theirs, but the range reaches the large ones (the area-weighted 90th
    percentile), so an image of the same objects where the large ones hold most of the area (its
    seen size, area-weighted, is theirs) is predicted as it is. With the objects' plain 90th
    percentile the range stopped at the small ones and ``auto`` shrank such an image: ten painted
    EM cells learned 6-32 px and the sections, 60 px seen, were shrunk x0.54 (docs/benchmarks.md,
    "Post-processing at the objects' size")."""
    painted = np.zeros((256, 256), np.uint16)
    large = discs(16, shape=(256, 128), n=2, seed=1)
    painted[:, :128] = discs(4, shape=(256, 128), n=40)
    painted[:, 128:] = np.where(large > 0, large + 100, 0)
    learned = size.learned_size([painted])
    assert learned["diameter"] < 10  # the small discs hold most of the area
    low, high = size.learned_range({size.KEY: learned})
    assert high >= 30, learned
    other = painted.copy()
    other[:, :128] = discs(4, shape=(256, 128), n=8)  # fewer small ones: the large hold most of the area
    seen, _ = size.diameter_of(other > 0)
    assert seen > 30 and size.factor_for((low, high), seen) == 1.0
    assert size.factor_for((low, high), 3 * seen) < 1.0  # the same objects at three times the magnification


def test_the_split_height_is_raised_where_the_inherited_one_cuts_the_painted_objects(nuclei):
    """The shipped model and ten painted nuclei with their rings: at the magnification it learned its
    1 px split height keeps them whole and stays (a tie keeps it); at three times the
    magnification it cuts them, and a higher height, scored on the painted objects, is chosen."""
    from napari_unet.data.dataset import prepare_pairs
    from napari_unet.pretrained import fine_tune_config
    from napari_unet.training import finish

    start, image, mask = nuclei
    cfg = fine_tune_config(TrainConfig(task="instances", sparse=True, threads=1), start)

    def painted(labels: np.ndarray) -> np.ndarray:
        ids = [i for i in np.unique(labels)[1:] if (labels == i).sum() >= 30 * (labels.shape[0] // 256) ** 2][:10]
        out = np.zeros(labels.shape, np.uint16)
        for j, i in enumerate(ids, start=2):
            obj = labels == i
            out[ndi.binary_dilation(obj, iterations=5) & ~ndi.binary_dilation(obj) & (labels == 0)] = 1  # ring
            out[obj] = j
        return out

    rule = dict(start.postprocess)
    same, record = finish.split_for_painted(start.net, cfg, rule, prepare_pairs([(image[:256, :256],
                                                                                 painted(mask[:256, :256]))], cfg), None)
    assert same == rule and record["objects"] == 10 and record["chosen"] == rule["split_height"]
    big = ndi.zoom(image[:256, :256].astype(np.float32), 3, order=1, grid_mode=True, mode="nearest")
    big_mask = np.repeat(np.repeat(mask[:256, :256], 3, 0), 3, 1)
    raised, record = finish.split_for_painted(start.net, cfg, rule, prepare_pairs([(big, painted(big_mask))], cfg), None)
    assert raised["split_height"] > rule["split_height"] and record["chosen"] == raised["split_height"]
    assert record["ap50_chosen"] > record["ap50_inherited"] + 0.2
    assert raised["fg_threshold"] == rule["fg_threshold"]  # only the seeds may also widen: a lower threshold
    assert raised["seed_threshold"] in (rule["seed_threshold"], 0.5, None) and record["seed_chosen"] == \
        raised["seed_threshold"]


def test_the_seeds_widen_where_the_inherited_threshold_misses_the_painted_objects(monkeypatch):
    """A fine-tune unsure of its painted objects' interiors (0.55, under the start's 0.6) gets no seed
    from the start's threshold; a lower one, scored on the painted objects, finds them; objects it
    already finds keep the start's seeds (a tie)."""
    from napari_unet.data.dataset import prepare_pairs
    from napari_unet.inference import predict
    from napari_unet.training import finish

    labels = discs(10, shape=(128, 128), n=4)
    painted = np.where(labels > 0, labels + 1, 0).astype(np.uint16)
    painted[(ndi.binary_dilation(labels > 0, iterations=4)) & (labels == 0)] = 1  # rings
    cfg = TrainConfig(task="instances", sparse=True, threads=1)
    pairs = prepare_pairs([(np.where(labels > 0, 200, 20).astype(np.uint8), painted)], cfg)
    rule = {"seed_threshold": 0.6, "split_height": 1.0, "fg_threshold": 0.5}

    def probs_with(interior: float) -> np.ndarray:
        inside = (labels > 0).astype(np.float32)
        return np.stack([1 - inside, interior * inside, (1 - interior) * inside])

    monkeypatch.setattr(predict, "predict_normalized", lambda *args, **kwargs: probs_with(0.55))
    widened, record = finish.split_for_painted(torch.nn.Identity(), cfg, rule, pairs, None)
    assert record["ap50_inherited"] == 0.0 and record["ap50_chosen"] == 1.0
    assert widened == {**rule, "seed_threshold": 0.5}  # the nearer of the wider rules on a tie
    monkeypatch.setattr(predict, "predict_normalized", lambda *args, **kwargs: probs_with(0.9))
    assert finish.split_for_painted(torch.nn.Identity(), cfg, rule, pairs, None)[0] == rule
