"""Post-processing thresholds chosen on the held-out images, and kept in the model folder."""

from dataclasses import replace

import numpy as np
from skimage.draw import disk

from napari_unet.config import TrainConfig, UNetConfig
from napari_unet.events import Message, ValidationReport
from napari_unet.heads.calibrate import pooled_ap50, tune_thresholds
from napari_unet.models.bundle import load_bundle, save_bundle
from napari_unet.training.engine import Trainer
from napari_unet.training.finish import final_is_better
from napari_unet.workflows.model_spec import resolve_model

from helpers import run_trainer as run


def touching_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two touching discs whose interiors the argmax rule joins through a lukewarm neck."""
    gt = np.zeros((64, 96), np.uint16)
    gt[disk((32, 32), 16)] = 1
    gt[disk((32, 62), 16)] = 2
    gt[:, 47:48][gt[:, 47:48] > 0] = 1  # they share the column x = 47
    probs = np.zeros((3, 64, 96), np.float32)
    probs[0] = 1.0
    inside = gt > 0
    probs[:, inside] = np.array([0.02, 0.95, 0.03])[:, None]
    neck = inside & (np.abs(np.arange(96) - 47) <= 2)[None, :]
    probs[:, neck] = np.array([0.05, 0.60, 0.35])[:, None]  # interior wins the argmax, but not confidently
    return probs, gt


def test_tuning_splits_objects_the_argmax_rule_merges():
    probs, gt = touching_pair()
    # one merged object: it matches one disc (IoU just over 0.5) and misses the other: 1 / (1 + 1)
    assert pooled_ap50([probs], [gt], None, 0.5) == 0.5
    tuned = tune_thresholds([probs], [gt])
    assert tuned["ap50_argmax"] == 0.5
    assert tuned["ap50"] == 1.0 and tuned["seed_threshold"] >= 0.6  # seeds need more than the neck's 0.60


def test_tuning_keeps_the_prior_rule_unless_another_is_clearly_better(monkeypatch):
    from napari_unet.heads import calibrate

    probs, gt = touching_pair()
    probs[:, probs[1] == np.float32(0.60)] = np.array([0.05, 0.1, 0.85])[:, None]  # a clear rim: every rule splits
    tuned = tune_thresholds([probs], [gt])
    assert tuned["ap50"] == tuned["ap50_argmax"] == 1.0
    assert {k: tuned[k] for k in calibrate.PRIOR_RULE} == calibrate.PRIOR_RULE  # a tie keeps the prior

    monkeypatch.setattr(calibrate, "PRIOR_RULE", {"seed_threshold": 0.99, "split_height": None, "fg_threshold": 0.5})
    tuned = tune_thresholds([probs], [gt])  # a prior that finds no seeds scores 0: the argmax rule wins clearly
    assert tuned["seed_threshold"] is None and tuned["fg_threshold"] == 0.5 and tuned["split_height"] is None


def test_tuning_reuses_counts_it_is_given(monkeypatch):
    from napari_unet.heads import calibrate

    probs, gt = touching_pair()
    fresh = tune_thresholds([probs], [gt])
    known = {(None, None, 0.5): calibrate.rule_counts([probs], [gt], None, 0.5),
             (0.5, 1.0, 0.5): calibrate.rule_counts([probs], [gt], 0.5, 0.5, 1.0)}
    done, original = [], calibrate.rule_counts
    monkeypatch.setattr(calibrate, "rule_counts",
                        lambda probs, instances, seed, fg, split=None, seeds=None, spacing=None, min_size=10:
                        done.append((seed, split, fg, seeds is None)) or original(probs, instances, seed, fg, split, seeds,
                                                                                  min_size=min_size))
    assert tune_thresholds([probs], [gt], known=known) == fresh
    assert (None, None, 0.5, True) not in done and (0.5, 1.0, 0.5, True) not in done
    assert len(done) == len(calibrate.SEED_RULES) - 2 + len(calibrate.FG_THRESHOLDS) - 1 + 1  # + the prior rule


def test_splitting_separates_interiors_joined_by_a_neck():
    probs, gt = touching_pair()
    probs[:, probs[1] == np.float32(0.60)] = np.array([0.02, 0.95, 0.03])[:, None]  # the neck is sure interior
    assert pooled_ap50([probs], [gt], 0.9, 0.5) == 0.5  # no threshold separates them now
    assert pooled_ap50([probs], [gt], 0.5, 0.5, split_height=1.0) == 1.0
    assert tune_thresholds([probs], [gt])["split_height"] is not None


def fake_tuning(monkeypatch) -> dict:
    """Replace the threshold search (tested above) by a fixed answer; returns what it was given."""
    from napari_unet.heads import calibrate

    seen = {}

    def fake_tune(probs, instances, should_stop=None, known=None, spacing=None, min_size=10):
        seen.update(n=len(probs), shapes=[p.shape for p in probs], known=known)
        return {"seed_threshold": 0.8, "split_height": 1.0, "fg_threshold": 0.6, "ap50": 0.7, "ap50_argmax": 0.5,
                "confidence": 0.995}

    monkeypatch.setattr(calibrate, "tune_thresholds", fake_tune)
    return seen


def count_predictions(monkeypatch) -> list:
    from napari_unet.inference import predict

    calls, original = [], predict.predict_normalized
    monkeypatch.setattr(predict, "predict_normalized", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


TINY = TrainConfig(model=UNetConfig(depth=2, base_width=8), steps=5, time_limit=None, batch_size=2,
                   validate_every=1e9, low_precision=False)


def test_trained_model_carries_tuned_or_inherited_thresholds(small_pairs, tmp_path, monkeypatch):
    seen, predictions = fake_tuning(monkeypatch), count_predictions(monkeypatch)
    bundle, events = run(Trainer(small_pairs[:2], TINY, validation=small_pairs[2:4]))
    assert seen["n"] == 2 and seen["shapes"][0] == (3, *small_pairs[2][0].shape[:2])
    assert len(predictions) == 2  # tuning reuses the final validation's probabilities
    assert set(seen["known"]) == {(None, None, 0.5), (0.5, 1.0, 0.5), (0.7, 1.0, 0.5)}  # and the rules it scored
    assert all(c.shape == (2, 3) for c in seen["known"].values())
    assert any("AP@0.5 0.500 (argmax rule) -> 0.700 with the searched rule" in e.text
               for e in events if isinstance(e, Message))
    assert bundle.postprocess == {"seed_threshold": 0.8, "fg_threshold": 0.6, "split_height": 1.0}
    assert load_bundle(save_bundle(bundle, tmp_path / "m")).postprocess == bundle.postprocess

    # fine-tuning without validation images keeps the starting model's thresholds
    nuclei = resolve_model("pretrained:nuclei")
    assert nuclei.postprocess
    tuned_cfg = replace(nuclei.config, steps=2, time_limit=None, batch_size=2, validation_fraction=0.0,
                        validate_every=1e9, threads=1)
    child, _ = run(Trainer(small_pairs[:2], tuned_cfg, init=nuclei))
    assert child.postprocess == nuclei.postprocess


def test_keep_best_score_counts_the_splitting_rules(monkeypatch):
    import torch

    from napari_unet.config import TrainConfig
    from napari_unet.data.dataset import PreparedPair
    from napari_unet.inference import predict
    from napari_unet.training.validation import validate

    probs, gt = touching_pair()
    probs[:, probs[1] == np.float32(0.60)] = np.array([0.02, 0.95, 0.03])[:, None]  # joined interiors
    monkeypatch.setattr(predict, "predict_normalized", lambda *args, **kwargs: probs)
    pair = PreparedPair(np.zeros((1, *gt.shape), np.float32), (gt > 0).astype(np.int64),
                        np.ones(gt.shape, np.float32), gt, "touching")
    scores = validate(torch.nn.Identity(), [pair], TrainConfig(), None)
    assert scores["ap50"] == 0.5  # the argmax rule merges the two discs
    assert scores["score"] == 1.0  # a split rule separates them, and the run keeps that model


def test_a_stopped_run_is_tuned_on_the_validation_that_chose_its_model(small_pairs, monkeypatch):
    seen, predictions = fake_tuning(monkeypatch), count_predictions(monkeypatch)
    trainer = Trainer(small_pairs[:2], replace(TINY, steps=50, validate_every=0.0), validation=small_pairs[2:4])
    gen, events = trainer.run(), []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            bundle = stop.value
            break
        if isinstance(events[-1], ValidationReport):
            trainer.stop()  # the user presses Stop after the first validation
    assert bundle.meta["training"]["stopped_early"] and bundle.meta["training"]["steps"] < 50
    assert sum(isinstance(e, ValidationReport) for e in events) == 1
    assert seen["n"] == 2 and len(predictions) == 2  # tuned without predicting again
    assert bundle.postprocess == {"seed_threshold": 0.8, "fg_threshold": 0.6, "split_height": 1.0}


def test_bootstrap_trusts_consistent_gains_not_one_lucky_image():
    from napari_unet.heads.calibrate import bootstrap_win_rate

    worse = np.tile([[8.0, 2.0, 2.0]], (12, 1))  # (TP, FP, FN) per image, 10 objects each
    steady = worse + [[1.0, -1.0, -1.0]]  # one more object right on every image
    assert bootstrap_win_rate(steady, worse) == 1.0
    worse[0] = [60, 20, 40]  # a crowded image of 100 objects...
    lucky = worse + [[-1.0, 1.0, 1.0]]  # ...where a rule that is worse on the eleven others
    lucky[0] = [80, 10, 20]  # does far better: better pooled AP, but carried by one image
    pooled = lambda c: c[:, 0].sum() / c.sum()  # noqa: E731
    assert pooled(lucky) > pooled(worse)
    assert 0.3 < bootstrap_win_rate(lucky, worse) < 0.9


def test_final_weights_stay_unless_an_earlier_model_was_better_beyond_doubt():
    final = {"counts": np.tile([[8.0, 2.0, 2.0]], (12, 1))}
    noisy = {"counts": final["counts"].copy()}
    noisy["counts"][0] = [10.0, 0.0, 0.0]  # one image better, the rest equal
    steady = {"counts": final["counts"] + [[1.0, -1.0, -1.0]]}  # better on every image
    assert final_is_better({"score": 0.70}, 0.65, final, noisy)  # higher score: kept at once
    assert final_is_better({"score": 0.66}, 0.68, final, noisy)  # lower, but only by chance
    assert not final_is_better({"score": 0.66}, 0.75, final, steady)
    assert not final_is_better({"score": 0.66}, 0.68, {}, {})  # semantic runs: the higher score
    one = {"counts": steady["counts"][:1]}  # one validation image (a few volumes): no doubt can be shown
    assert final_is_better({"score": 0.66}, 0.75, {"counts": final["counts"][:1]}, one)
