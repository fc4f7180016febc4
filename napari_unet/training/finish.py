"""The end of a training run, once its step loop is over.

``Trainer.run`` asks these in order: whether the final weights beat the best earlier model
(``final_is_better``), the fine-tune guard's verdict on the starting model (``guard_verdict``,
``guarded``, ``guard_message``), what the model folder records about the run (``run_meta``), and
the instance head's post-processing thresholds (``post_processing``).
"""

from __future__ import annotations

import time
from typing import Any, Generator, Sequence

import numpy as np
import torch

from napari_unet import heads
from napari_unet.arrays.volumes import anisotropic_spacing
from napari_unet.config import MIN_SIZE, PredictConfig, TrainConfig
from napari_unet.data.dataset import PreparedPair, count_objects
from napari_unet.events import Message
from napari_unet.heads.calibrate import CONFIDENCE, bootstrap_win_rate, counts_ap, rule_counts
from napari_unet.inference import predict  # through the module, so a patched predictor is seen
from napari_unet.inference import size
from napari_unet.inference.labels import labels_from_probabilities
from napari_unet.metrics import evaluate_instances
from napari_unet.training import guard

KEEP_BEST_MIN_IMAGES = 3  # fewer validation images than this cannot show an earlier model better (instances)


def final_is_better(metrics: dict, best_score: float, final: dict, best: dict) -> bool:
    """Keep the final weights unless an earlier model was better beyond doubt.

    The learning rate decays to 5 % by the end, so the final weights are usually the best;
    an earlier model scoring higher on a dozen validation images was mostly noise (such
    picks kept step-225 models of 886-step runs that scored 0.1 lower on other images).
    With per-image counts (instances) an earlier model stays only if it wins in
    ``CONFIDENCE`` of the bootstrap resamples of the validation images, and never with fewer
    than ``KEEP_BEST_MIN_IMAGES`` of them: resampling one image always picks the model that
    won on it (six 3D volumes hold out one; a 120 s run kept its step-218 model of 425 on a
    0.008 lead, and scored 0.766 on held-out volumes).
    """
    if metrics["score"] >= best_score:
        return True
    if "counts" not in final or "counts" not in best:
        return False
    if len(final["counts"]) < KEEP_BEST_MIN_IMAGES:
        return True
    return bootstrap_win_rate(best["counts"], final["counts"]) < CONFIDENCE


def guard_verdict(start_model: dict, best_metrics: dict, n_val: int) -> dict | None:
    """The fine-tune guard's record: the best fine-tuned model against the starting model's score
    (``Trainer._score_start``'s result).

    The fine-tuned model replaces the starting model only if it scores higher
    (``guard.keep_fine_tuned``); None for a run from scratch or with the guard off.
    """
    if "metrics" not in start_model:
        return start_model.get("record")
    if not best_metrics:
        return guard.not_run("stopped before the fine-tuned model was validated")
    start_score = start_model["metrics"]["score"]
    keep_tuned = guard.keep_fine_tuned(start_score, best_metrics["score"])
    return guard.compared(keep_tuned, start_score, best_metrics["score"], n_val, start_model["seconds"])


def guarded(record: dict | None, start_model: dict, best: tuple) -> tuple:
    """The (weights, metrics, validation maps) the run returns: ``best``, or the starting model's
    when the guard kept it."""
    if record is not None and record["kept"] == guard.START:
        return start_model["state"], start_model["metrics"], start_model["kept"]
    return best


def guard_message(record: dict) -> Message:
    """The guard's verdict for the user (a warning when the starting model stays)."""
    return Message(guard.guard_note({"training": {guard.KEY: record}}),
                   level="warning" if record["kept"] == guard.START else "info")


def agreement(tuned: torch.nn.Module, start: torch.nn.Module, cfg: TrainConfig, pairs: Sequence[PreparedPair],
              dtype: torch.dtype | None) -> float:
    """How far the starting and the fine-tuned networks find the same objects on the annotated
    images: AP@0.5 of the start's instances scored against the fine-tuned ones' (objects pooled;
    the measure is symmetric). Every pixel counts, painted or not: 1 where the fine-tune changed
    nothing the start did not already do, near 0 where the start found other objects."""
    k = heads.n_output_channels(cfg)
    spacing = anisotropic_spacing(cfg)
    told = {} if spacing is None else {"spacing": spacing}

    def labels(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
        probs = predict.predict_normalized(net, image, k, PredictConfig(), dtype)
        return labels_from_probabilities(probs, cfg.task, head=cfg.instance_head, **told)

    was = tuned.training, start.training
    tuned.eval(), start.eval()
    try:
        found = [(labels(start, p.image), labels(tuned, p.image)) for p in pairs[:cfg.validation_max_images]]
    finally:
        tuned.train(was[0]), start.train(was[1])
    return float(evaluate_instances(found)["ap50"])


def keep_by_agreement(agree: float) -> float:
    """The share of the fine-tuned weights in the returned model when the two networks agree on
    ``agree`` (``agreement``) of the objects: ``1 - agree²``. Where the start already finds what
    the fine-tune finds (its own kind of images) the returned model stays near the start, whose
    record spans many images, not one; where they disagree (another kind of image) the fine-tune
    is kept. Measured in docs/benchmarks.md ("Gentle fine-tuning")."""
    return 1.0 - min(max(agree, 0.0), 1.0) ** 2


def run_meta(*, steps: int, seconds: float, setup_seconds: float, device: str, images: int, validation_images: int,
             stopped: bool, batch_size: int, objects_brighter: bool | None, validation: dict,
             record: dict | None) -> dict[str, Any]:
    """The ``meta`` a trained model folder carries: the run's figures, its validation and the guard's record."""
    training = {"steps": steps, "seconds": round(seconds, 1), "setup_seconds": round(setup_seconds, 1),
                "device": device, "images": images, "validation_images": validation_images,
                "stopped_early": stopped, "batch_size": batch_size, "objects_brighter": objects_brighter}
    if record is not None:
        training[guard.KEY] = record
    return {"training": training, "validation": validation}


def object_size(cfg: TrainConfig, pairs: Sequence[PreparedPair], init: Any = None,
                record: dict | None = None) -> dict[str, Any] | None:
    """``meta[size.KEY]`` of a 2D instance model: the size of every annotated object it was given
    (held-out ones included; only the painted objects of partial masks); the starting model's
    when the guard kept its weights; None for other models."""
    if cfg.task != "instances" or cfg.model.dims != 2:
        return None
    if record is not None and record["kept"] == guard.START and init is not None:
        return init.meta.get(size.KEY)
    return size.learned_size([p.instances for p in pairs if p.instances is not None])


def post_processing(net: torch.nn.Module, cfg: TrainConfig, init: Any, meta: dict, *,
                    val_pairs: Sequence[PreparedPair], train_pairs: Sequence[PreparedPair], held_out_objects: bool,
                    kept: dict, stopped: bool, dtype: torch.dtype | None,
                    learned: dict | None = None,
                    annotated: Sequence[PreparedPair] = (), min_size: int = MIN_SIZE) -> Generator[object, None, dict]:
    """The post-processing the model carries: the starting model's (same head; its lengths
    scaled to the object size ``learned`` on this run, ``size.rule_for_size``, and its split
    height raised where a higher one keeps the ``annotated`` pairs' painted objects whole,
    ``split_for_painted``), or thresholds tuned on this run's images (objects under ``min_size``
    dropped, as validation drops them); records the tuning time in ``meta``."""
    same_head = init is not None and (init.task, init.config.instance_head) == (cfg.task, cfg.instance_head)
    postprocess = init.postprocess if same_head else {}
    head, whole_images = heads.of(cfg), bool(val_pairs) and not held_out_objects
    if not _tunes(meta, head, whole_images, kept, stopped, bool(val_pairs)):
        if postprocess and learned is not None:
            postprocess, ratio = size.rule_for_size(postprocess, size.learned_diameter({size.KEY: learned}),
                                                    size.learned_diameter(init.meta))
            if ratio != 1:
                meta["training"]["rule_scaled"] = round(ratio, 3)
                yield Message(f"the starting model's split height scaled x{ratio:.2f} to the objects' size "
                              f"({postprocess['split_height']} px)")
        # a split height is the 3-class rule's (``heads.calibrate``), inherited from a start of the same head
        if postprocess and postprocess.get("split_height") and annotated and not guard.kept_start(meta) \
                and cfg.model.dims == 2:
            postprocess, record = split_for_painted(net, cfg, postprocess, annotated, dtype)
            if record is not None:
                meta["training"]["split_on_painted"] = record
            if record is not None and (record["chosen"], record["seed_chosen"]) != \
                    (record["inherited"], record["seed_inherited"]):
                yield Message(f"split height {record['chosen']} px, seeds {seed_words(record['seed_chosen'])}: "
                              f"they keep the painted objects whole (AP@0.5 on the {record['objects']} painted "
                              f"objects {record['ap50_chosen']:.2f}, {record['ap50_inherited']:.2f} with the "
                              f"starting model's {record['inherited']} px, {seed_words(record['seed_inherited'])})")
        return postprocess
    # Thresholds are chosen on whole held-out images. A head that ``tunes_in_sample`` (star,
    # flow) with none (one or two annotated images, validated on a few held-out objects at
    # most) chooses them on the training images: two numbers fitted in-sample, and a short
    # run's object probability is often below the default 0.5 everywhere, which would show
    # the user no objects at all. The 3-class rule is not fitted on a few objects of one
    # image: it does not carry.
    tune_on = val_pairs if whole_images else train_pairs[:cfg.validation_max_images]
    tune_start = time.perf_counter()
    tuned = tune(net, cfg, tune_on, dtype, kept.get("probs", []) if whole_images else [],
                 kept.get("rule_counts") if whole_images else None, min_size)
    meta["training"]["tuning_seconds"] = round(time.perf_counter() - tune_start, 1)
    if tuned is None:
        return postprocess
    which = "validation" if whole_images else "training (no held-out images)"
    yield Message(head.tune_message(tuned, len(tune_on), which))
    return tuned


SPLIT_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)  # split heights tried on the painted objects: the inherited one times these
# seed thresholds tried with them besides the inherited one; None: interior the likeliest class
PAINTED_SEEDS: tuple[float | None, ...] = (0.5, None)


def seed_words(threshold: float | None) -> str:
    """How a seed rule reads in a message."""
    return "where interior is the likeliest class" if threshold is None else f"interior > {threshold:g}"


def split_for_painted(net: torch.nn.Module, cfg: TrainConfig, rule: dict, pairs: Sequence[PreparedPair],
                      dtype: torch.dtype | None) -> tuple[dict, dict | None]:
    """(``rule`` with the split height and seed threshold that best keep the painted objects
    whole, what was measured; None when there was nothing to measure).

    An inherited 3-class rule splits an interior region at every saddle of its distance map
    deeper than ``split_height``. The height fits the starting model's objects (round nuclei);
    a fine-tuned model's interiors of other objects (EM cells with organelles) can have deeper
    saddles, and a height scaled to the size alone cuts them in pieces, the painted ones too.
    Its seed threshold fits the start's confidence: a model fine-tuned on a few objects of
    another kind is less sure of their interiors, and a seed region cut by its holes and dents
    splits them too. Every pair of a height (the inherited one times ``SPLIT_FACTORS``) and a
    seed threshold (the inherited one, ``PAINTED_SEEDS``) is scored on the painted objects of
    the annotated images (AP@0.5; all of them, held-out ones included; predicted objects lying
    mostly on unannotated pixels ignored); the best replaces the inherited rule only when it
    scores higher there; on a tie the inherited seed threshold, then the lowest height, stays.
    Heights are only raised (a lower one merges touching objects, and the start's own rule
    already separates those); seeds only widened (a lower threshold or the likeliest class).
    docs/benchmarks.md, "Post-processing at the objects' size" and "The seed rule on the
    painted objects"."""
    pairs = [p for p in pairs[:cfg.validation_max_images] if p.instances is not None and p.instances.any()]
    if not pairs:
        return rule, None
    k = heads.n_output_channels(cfg)
    was = net.training
    net.eval()
    try:
        probs = [predict.predict_normalized(net, p.image, k, PredictConfig(), dtype) for p in pairs]
    finally:
        net.train(was)
    truths = [p.truth for p in pairs]
    inherited, seed = float(rule["split_height"]), rule.get("seed_threshold")
    wider = [] if seed is None else [s for s in PAINTED_SEEDS if s is None or s < seed]  # seeds only widen
    scores = {}
    for threshold in [seed, *wider]:
        for factor in SPLIT_FACTORS:
            height = round(inherited * factor, 2)
            counts = rule_counts(probs, truths, threshold, rule.get("fg_threshold", 0.5), height)
            scores[(threshold, height)] = counts_ap(counts)
    start_rule = (seed, round(inherited, 2))
    chosen = max(scores, key=lambda r: (scores[r], r[0] == seed, -r[1]))  # the best; on a tie the start's seeds, low
    objects = count_objects(pairs)
    record = {"inherited": inherited, "chosen": chosen[1], "seed_inherited": seed, "seed_chosen": chosen[0],
              "objects": objects, "ap50_inherited": round(scores[start_rule], 4), "ap50_chosen": round(scores[chosen], 4),
              "ap50_by_rule": {f"{'likeliest' if s is None else s} / {h}": round(a, 4) for (s, h), a in scores.items()}}
    if chosen == start_rule:
        return rule, record
    return {**rule, "split_height": chosen[1], "seed_threshold": chosen[0]}, record


def _tunes(meta: dict, head: Any, whole_images: bool, kept: dict, stopped: bool, validated: bool) -> bool:
    """Whether the run chooses its own thresholds: not when the guard kept the starting model as
    it was (its own post-processing, not one re-tuned on these few images), nor for a semantic
    model; on whole held-out images, or in-sample for a head that allows it."""
    if guard.kept_start(meta) or head is None or not (whole_images or head.tunes_in_sample):
        return False
    return bool(kept) or not stopped or (head.tunes_in_sample and not validated)


def tune(net: torch.nn.Module, cfg: TrainConfig, pairs: Sequence[PreparedPair], dtype: torch.dtype | None,
         maps: list[np.ndarray], known: dict | None = None, min_size: int = MIN_SIZE) -> dict | None:
    """The instance head's post-processing chosen on ``pairs`` (``Head.tune``; None: its default).

    ``maps``: the kept model's validation maps (from the validation that chose it), else
    empty and predicted here; ``known``: what validation scored on them (``Head.score``'s
    ``rule_counts``). A stopped run is tuned too, on those maps (post-processing only, a few
    seconds), so a model a user stops early splits touching objects like one that ran to its end.
    ``min_size``: the smallest object kept (``known`` was counted with it).
    """
    if not maps:
        k = heads.n_output_channels(cfg)
        maps, known = [predict.predict_normalized(net, p.image, k, PredictConfig(), dtype)
                       for p in pairs], None
    spacing = anisotropic_spacing(cfg)
    told = {} if spacing is None else {"spacing": spacing}
    tuned = heads.of(cfg).tune(maps, [p.truth for p in pairs], known, min_size=min_size, **told)
    return None if tuned is None else {k: (round(v, 4) if isinstance(v, float) else v) for k, v in tuned.items()}
