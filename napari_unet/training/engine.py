"""The training loop, written as a generator of events.

``Trainer.run()`` yields ``Message``, ``Progress``, ``LossReport``, ``ValidationReport``,
``Preview`` and finally ``Finished``; it returns the best ``ModelBundle``. The CLI drives it
with a progress bar, the napari widget in a thread worker. Stopping takes effect at the next
step (``Trainer.stop()``), and new annotations can be swapped in while it runs
(``Trainer.update_pairs()``). Checkpoints and the returned model carry the run's training state
(``training.state``), from which ``Trainer.resuming`` continues a stopped or killed run.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch

from napari_unet import heads
from napari_unet.config import PredictConfig, TrainConfig
from napari_unet.data.augment import augment_batch
from napari_unet.data.dataset import (MixedSampler, PatchSampler, PreparedPair, hold_out_objects,
                                      objects_brighter, objects_brighter_of, prepare_pairs,
                                      split_validation, without_zones)
from napari_unet.arrays.normalize import has_nonfinite, prepare_image
from napari_unet.data.targets import pack, unpack
from napari_unet.errors import UserError
from napari_unet.events import Finished, LossReport, Message, Preview, Progress, ValidationReport
from napari_unet.heads.calibrate import CONFIDENCE, bootstrap_win_rate
from napari_unet.models.bundle import ModelBundle, build_network, cpu_state_dict, save_bundle
from napari_unet.training import guard
from napari_unet.training.checkpoint import load_compatible_weights, transfer_input_layer
from napari_unet.runtime.device import (autocast, channels_last_format, describe, describe_precision,
                                          release_cached_memory, start_run, with_device_sizes)
from napari_unet.heads.losses import segmentation_loss
from napari_unet.runtime.sizes import describe_sizes
from napari_unet.training.state import (Position, Sitting, TrainingState, capture, check_same_data, data_fingerprint,
                                        fraction_of, restore, resumed_config, step_budget)
from napari_unet.arrays.volumes import anisotropic_spacing, check_volume_config, patch_shape, voxel_spacing
from napari_unet.inference import predict  # through the module, so a patched predictor is seen
from napari_unet.inference.labels import labels_from_probabilities
from napari_unet.inference.uncertainty import mc_uncertainty
from napari_unet.models import enable_mc_dropout
from napari_unet.training.validation import validate

Pairs = Sequence[tuple[np.ndarray, np.ndarray]]
KEEP_BEST_MIN_IMAGES = 3  # fewer validation images than this cannot show an earlier model better (instances)


def learning_rate(base: float, fraction: float) -> float:
    """Linear warm-up over the first 3 %, then cosine decay to 5 % of ``base``."""
    if fraction < 0.03:
        return base * (0.1 + 0.9 * fraction / 0.03)
    t = (fraction - 0.03) / 0.97
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def steps_per_epoch(pairs: Sequence[PreparedPair], cfg: TrainConfig) -> int:
    """Batches needed to see every annotated pixel about once."""
    pixels = sum(int((p.target >= 0).sum()) for p in pairs)
    return max(1, math.ceil(pixels / (math.prod(patch_shape(cfg)) * cfg.batch_size)))


class Trainer:
    """One training run over (image, mask) pairs; see the module docstring."""

    def __init__(self, pairs: Pairs, cfg: TrainConfig, *, init: ModelBundle | None = None,
                 names: Sequence[str] | None = None, validation: Pairs | None = None,
                 preview_image: np.ndarray | None = None,
                 checkpoint_to: str | os.PathLike | None = None, synthetic: Pairs | None = None,
                 resume: TrainingState | None = None) -> None:
        """``checkpoint_to``: model folder saved atomically every ``cfg.checkpoint_every`` seconds.

        ``synthetic``: extra (image, mask) pairs (e.g. from the diffusion model) that supply a
        ``cfg.synthetic_ratio`` share of the training patches; validation uses real pairs only.
        ``resume``: continue that run (its starting model replaces ``init``); see ``resuming``.
        """
        self.cfg = cfg
        self._resume = resume
        if resume is not None:
            init = resume.start_bundle()
        self._synthetic = synthetic
        self._checkpoint_to = None if checkpoint_to is None else Path(checkpoint_to)
        self._pairs, self._names, self._validation = pairs, names, validation
        self._init = init
        self._preview = preview_image
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: tuple[Pairs, Sequence[str] | None] | None = None
        self._per_epoch = 1  # steps per epoch of the training pairs (set by ``run``)

    @classmethod
    def resuming(cls, state: TrainingState, pairs: Pairs, cfg: TrainConfig | None = None, **kwargs) -> "Trainer":
        """A Trainer that continues ``state``'s run on ``pairs`` with ``cfg`` (``training.state.resumed_config``;
        default: the stored config and budget). ``UserError`` unless ``pairs``, ``names`` and
        ``synthetic`` (in ``kwargs``, as for ``Trainer``) are the data the run trained on."""
        check_same_data(state, pairs, kwargs.get("names"), kwargs.get("synthetic"))
        return cls(pairs, cfg if cfg is not None else resumed_config(state), resume=state, **kwargs)

    def stop(self) -> None:
        """Ask the run to end at its next step; the best model so far is kept."""
        self._stop.set()

    def update_pairs(self, pairs: Pairs, names: Sequence[str] | None = None) -> None:
        """Replace the training pairs (e.g. after the user painted more); picked up at the next step."""
        with self._lock:
            self._pending = (pairs, names)

    def set_preview_image(self, image: np.ndarray | None) -> None:
        """Change which image the ``Preview`` events show."""
        self._preview = image

    def _take_pending(self) -> tuple[Pairs, Sequence[str] | None] | None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:  # the data a checkpoint's fingerprint describes
            self._pairs, self._names = pending
        return pending

    def _synthetic_sampler(self, rng: np.random.Generator) -> PatchSampler | None:
        """Patches of the synthetic pairs, or None when there are none or the ratio is 0."""
        if not self._synthetic or self.cfg.synthetic_ratio <= 0:
            return None
        return self._patches(prepare_pairs(self._synthetic, self.cfg), rng)

    def _patches(self, pairs: Sequence[PreparedPair], rng: np.random.Generator, focus_annotated: bool = False) -> PatchSampler:
        """The patch sampler for ``pairs``; batches also carry the instance ids when the head needs them."""
        head = heads.of(self.cfg)
        return PatchSampler(pairs, patch_shape(self.cfg), rng, focus_annotated=focus_annotated,
                            with_instances=head is not None and head.needs_ids)

    def _build(self, device: torch.device, channels_last: bool,
               brighter: bool | None = None) -> tuple[torch.nn.Module, list[str]]:
        """The network, with the starting model's weights where they fit (``fresh``: the names left
        initialised). The start's first layer is carried over to another channel count, and
        inverted when the annotated objects' polarity (``brighter``) is not the start's."""
        net = build_network(self.cfg)
        fresh: list[str] = []
        if self._init is not None:
            state = self._init.net.state_dict()
            if self._init.config.task != self.cfg.task:  # same shape, other meaning: a fresh head
                state = {k: v for k, v in state.items() if not k.startswith("head.")}
            elif self._init.config.instance_head != self.cfg.instance_head:  # another instance head: fresh outputs
                state = {k: v for k, v in state.items() if not k.startswith(("head.", "side."))}
            fresh = load_compatible_weights(net, state)
            input_weight = next(name for name, p in net.named_parameters() if p is net.input_layer[0].weight)
            invert = brighter is not None and brighter != objects_brighter_of(self._init)
            if invert or input_weight in fresh:
                transfer_input_layer(net, self._init.net, invert)
                fresh = [name for name in fresh if name != input_weight]
        net.to(device)
        if channels_last:
            net.to(memory_format=channels_last_format(self.cfg.model.dims))
        return net, fresh

    def run(self) -> Generator[object, None, ModelBundle]:
        cfg = self.cfg
        check_volume_config(cfg)
        heads.check_head_dims(cfg.task, cfg.instance_head, cfg.model.dims)
        setup_start = time.perf_counter()
        rng, device, dtype = start_run(cfg.seed, cfg.threads, cfg.device, cfg.low_precision)
        channels_last = dtype is not None and (cfg.model.dims == 2 or device.type == "cpu")  # 3D: measured on CPUs
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        n_bad = sum(has_nonfinite(image) for image, _ in self._pairs)
        if n_bad:
            yield Message(f"{n_bad} image(s) hold NaN/Inf pixels; they are replaced by the image median",
                          level="warning")

        prepared = prepare_pairs(self._pairs, cfg, self._names)
        # unset batch/patch size: sized to the device (and in 3D to the volumes)
        cfg = self.cfg = with_device_sizes(cfg, device, [p.target.shape for p in prepared])
        yield Message(f"training on {describe_precision(device, dtype)}, "
                      f"{describe_sizes(cfg.batch_size, patch_shape(cfg))} per step")
        zones: dict[str, np.ndarray] = {}  # objects held out for validation, by image (one or two images)
        if self._validation is not None:
            train_pairs, val_pairs = prepared, prepare_pairs(self._validation, cfg)
        else:
            train_pairs, val_pairs = split_validation(prepared, cfg.validation_fraction, cfg.seed,
                                                      cfg.validation_max_images)
            if not val_pairs and cfg.task == "instances":
                train_pairs, val_pairs, zones = hold_out_objects(prepared, cfg.validation_fraction, cfg.seed)
                if val_pairs:
                    held = sum(np.unique(p.truth[p.truth > 0]).size for p in val_pairs)
                    yield Message(f"validation on {held} held-out annotated object(s) "
                                  "(too few images to hold out whole ones)")
        sampler = self._patches(train_pairs, rng, cfg.sparse)
        synthetic = self._synthetic_sampler(rng)
        if synthetic is not None:
            sampler = MixedSampler(sampler, synthetic, cfg.synthetic_ratio, rng)
            yield Message(f"{len(synthetic.pairs)} synthetic pair(s) supply {cfg.synthetic_ratio:.0%} of the patches")
        if cfg.task == "instances" and cfg.sparse and not any((p.target == 0).any() for p in train_pairs):
            yield Message("no background painted (label 1): paint a stroke of background around or between "
                          "objects, or the model learns that everything is an object", level="warning")
        brighter = objects_brighter(train_pairs)
        net, fresh = self._build(device, channels_last, brighter)
        if self._init is not None:
            yield Message(f"fine-tuning; re-initialised {len(fresh)} tensors that did not fit" if fresh else "fine-tuning")
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

        self._per_epoch = steps_per_epoch(train_pairs, cfg)
        total_steps = step_budget(cfg, self._per_epoch)
        if total_steps is None and cfg.time_limit is None:
            raise ValueError("give at least one of steps, epochs or time_limit")

        # The starting model never saw the annotations: with held-out objects (one or two images) it is
        # scored on all of them, the fine-tuned model on the held-out ones only (a fair estimate each;
        # the start's from five times the objects: two held-out objects alone made ties the rule).
        start_model = yield from self._score_start(net, fresh, val_pairs, dtype, prepared if zones else None)
        start = time.perf_counter()  # the time limit covers training, not data preparation
        setup_seconds = start - setup_start
        yield Message(f"prepared {len(train_pairs)} training and {len(val_pairs)} validation image(s) "
                      f"in {setup_seconds:.1f} s")
        sitting = Sitting(net, optimizer, scaler, rng, generator, device)
        pos = yield from self._position(sitting)  # step, best model so far...; restored when resuming
        losses: list[float] = []
        last_report = last_val = last_preview = last_checkpoint = start
        start -= pos.seconds  # a resumed run's clock goes on from its earlier sittings (time limit, progress)
        k = heads.n_output_channels(cfg)
        net.train()

        def fraction_done() -> float:
            return fraction_of(pos.step, time.perf_counter() - start, total_steps, cfg.time_limit)

        while not self._stop.is_set() and fraction_done() < 1.0:
            pending = self._take_pending()
            if pending is not None:
                train_pairs = without_zones(prepare_pairs(pending[0], cfg, pending[1]), zones)
                sampler = self._patches(train_pairs, rng, cfg.sparse)
                if synthetic is not None:
                    sampler = MixedSampler(sampler, synthetic, cfg.synthetic_ratio, rng)
                yield Message(f"training data updated: {len(train_pairs)} image(s)")
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg.learning_rate, fraction_done())
            try:
                loss = self._step(net, optimizer, scaler, sampler.sample(pos.batch), device, dtype, channels_last,
                                  generator)
            except torch.cuda.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                release_cached_memory(device)
                if pos.batch == 1:
                    raise UserError("the GPU ran out of memory even with batch size 1; "
                                    "use a smaller patch size or train on the CPU") from None
                pos.batch //= 2
                yield Message(f"GPU out of memory: batch size halved to {pos.batch}; retrying", level="warning")
                continue
            except MemoryError:
                raise UserError("out of memory (RAM) while training; use a smaller batch or patch size") from None
            pos.step += 1
            step = pos.step
            losses.append(loss)
            now = time.perf_counter()
            elapsed = now - start
            remaining = None if cfg.time_limit is None else max(cfg.time_limit - elapsed, 0.0)
            yield Progress(step, total_steps, elapsed, f"step {step}", remaining)
            if now - last_report >= 1.0:
                yield LossReport(step, float(np.mean(losses)), elapsed)
                losses, last_report = [], now
            if self._checkpoint_to is not None and cfg.checkpoint_every and now - last_checkpoint >= cfg.checkpoint_every:
                self._save_checkpoint(sitting, pos, now - start)
                last_checkpoint = time.perf_counter()
            if val_pairs and now - last_val >= cfg.validate_every:
                latest: dict = {}
                metrics = validate(net, val_pairs, cfg, dtype, self._stop.is_set, latest)
                if metrics is None:  # cancelled half-way through
                    break
                improved = metrics["score"] > pos.best_score
                if improved:
                    pos.best_state, pos.best_score, pos.best_metrics = cpu_state_dict(net), metrics["score"], metrics
                    pos.kept = latest
                yield ValidationReport(step, metrics, improved, time.perf_counter() - start)
                last_val = time.perf_counter()
            if self._preview is not None and cfg.preview_every > 0 and now - last_preview >= cfg.preview_every:
                yield self._preview_event(net, step, dtype, k)
                last_preview = time.perf_counter()

        stopped, finished, step = self._stop.is_set(), fraction_done() >= 1.0, pos.step
        if losses:  # steps since the last report (a fast GPU can finish between two reports)
            yield LossReport(step, float(np.mean(losses)), time.perf_counter() - start)
        if val_pairs and not stopped:  # a stopped run ends now: no final validation
            latest = {}
            metrics = validate(net, val_pairs, cfg, dtype, keep=latest)
            # held-out objects of one image are too few to prefer an earlier model to the final one
            improved = bool(zones) or self._final_is_better(metrics, pos.best_score, latest, pos.kept)
            if improved:
                pos.best_state, pos.best_metrics, pos.kept = None, metrics, latest
            yield ValidationReport(step, metrics, improved, time.perf_counter() - start)
        resume = self._snapshot(sitting, pos, finished, time.perf_counter() - start)  # before the best weights load
        best_state, best_metrics, kept, batch = pos.best_state, pos.best_metrics, pos.kept, pos.batch
        record = self._guard_record(start_model, best_metrics, len(val_pairs))
        if record is not None and record["kept"] == guard.START:
            best_state, best_metrics, kept = start_model["state"], start_model["metrics"], start_model["kept"]
        if record is not None:
            yield Message(guard.guard_note({"training": {guard.KEY: record}}),
                          level="warning" if record["kept"] == guard.START else "info")
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        del optimizer, scaler, sitting
        release_cached_memory(device)  # the optimiser state and activations; the model stays
        elapsed = time.perf_counter() - start
        meta = {"training": {"steps": step, "seconds": round(elapsed, 1), "setup_seconds": round(setup_seconds, 1),
                             "device": describe(device),
                             "images": len(train_pairs), "validation_images": len(val_pairs),
                             "stopped_early": stopped, "batch_size": batch,
                             "objects_brighter": brighter if brighter is not None else objects_brighter_of(self._init)},
                "validation": best_metrics}
        if record is not None:
            meta["training"][guard.KEY] = record
        same_head = self._init is not None and (self._init.task, self._init.config.instance_head) == (cfg.task, cfg.instance_head)
        postprocess = self._init.postprocess if same_head else {}
        head, whole_images = heads.of(cfg), bool(val_pairs) and not zones
        if guard.kept_start(meta):
            pass  # the starting model as it was: its own post-processing, not one re-tuned on these few images
        elif head is not None and (whole_images or head.tunes_in_sample) and \
                (kept or not stopped or (head.tunes_in_sample and not val_pairs)):
            # Thresholds are chosen on whole held-out images. A head that ``tunes_in_sample`` (star,
            # flow) with none (one or two annotated images, validated on a few held-out objects at
            # most) chooses them on the training images: two numbers fitted in-sample, and a short
            # run's object probability is often below the default 0.5 everywhere, which would show
            # the user no objects at all. The 3-class rule is not fitted on a few objects of one
            # image: it does not carry.
            tune_on = val_pairs if whole_images else train_pairs[:cfg.validation_max_images]
            tune_start = time.perf_counter()
            tuned = self._tune(net, tune_on, dtype, kept.get("probs", []) if whole_images else [],
                               kept.get("rule_counts") if whole_images else None)
            meta["training"]["tuning_seconds"] = round(time.perf_counter() - tune_start, 1)
            if tuned is not None:
                postprocess = tuned
                which = "validation" if whole_images else "training (no held-out images)"
                yield Message(head.tune_message(tuned, len(tune_on), which))
        if postprocess:
            meta["postprocess"] = postprocess
        bundle = ModelBundle(net, cfg, meta, resume)
        yield Finished({"steps": step, "seconds": elapsed, **best_metrics})
        return bundle

    def _step(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
              arrays: tuple[np.ndarray, ...], device: torch.device, dtype: torch.dtype | None,
              channels_last: bool, generator: torch.Generator) -> float:
        """One optimiser step on a batch of (images, targets, weights[, instance ids]); returns the loss."""
        images, targets, weights, *ids = (torch.from_numpy(a).to(device) for a in arrays)
        spacing = voxel_spacing(self.cfg)
        if ids:  # the head learns from the ids: they go through the same nearest-neighbour warp as the classes
            images, codes, weights = augment_batch(images, pack(targets, ids[0]), weights, self.cfg.augment, generator,
                                                   spacing)
            targets, warped = unpack(codes)
        else:
            images, targets, weights = augment_batch(images, targets, weights, self.cfg.augment, generator, spacing)
        if channels_last:
            images = images.contiguous(memory_format=channels_last_format(self.cfg.model.dims))
        with autocast(device, dtype):
            logits = net(images)  # (B, K, *P)
        head = heads.of(self.cfg)
        extra = [torch.from_numpy(a).to(device) for a in head.targets(warped.cpu().numpy(), self.cfg)] if ids else []
        if head is not None:
            loss = head.loss(logits, targets, weights, extra, self.cfg)
        else:
            loss = segmentation_loss(logits, targets, weights, self.cfg.loss.dice_weight)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    def _score_start(self, net: torch.nn.Module, fresh: list[str], val_pairs: Sequence[PreparedPair],
                     dtype: torch.dtype | None,
                     annotated: Sequence[PreparedPair] | None = None) -> Generator[object, None, dict]:
        """Score the starting model (``net`` before training) for the fine-tune guard (``training.guard``).

        ``annotated``: every annotated pair, when validation holds out objects (the starting model never
        saw any annotation, so all of them score it). Returns ``{}`` for a run from scratch (or with the
        guard off), ``{"record": ...}`` when the
        guard cannot run, else the start's ``metrics``, validation ``kept`` (probabilities and
        counts, which replace the run's if the starting model stays), CPU ``state`` and ``seconds``.
        """
        if self._init is None or not self.cfg.fine_tune_guard:
            return {}
        if fresh:
            return {"record": guard.not_run(f"{len(fresh)} tensors were re-initialised for this task, "
                                            "so the starting model cannot be scored on it")}
        if not val_pairs:
            return {"record": guard.not_run("no validation images")}
        began, kept = time.perf_counter(), {}
        metrics = validate(net, annotated or val_pairs, self.cfg, dtype, self._stop.is_set, kept)
        if metrics is None:
            return {"record": guard.not_run("stopped while scoring the starting model")}
        on = "all annotated objects" if annotated else f"{len(val_pairs)} image(s)"
        yield Message(f"starting model: validation score {metrics['score']:.3f} on {on}")
        return {"metrics": metrics, "kept": kept, "state": cpu_state_dict(net), "seconds": time.perf_counter() - began}

    def _guard_record(self, start_model: dict, best_metrics: dict, n_val: int) -> dict | None:
        """The fine-tune guard's verdict: the best fine-tuned model against ``_score_start``'s result.

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

    @staticmethod
    def _final_is_better(metrics: dict, best_score: float, final: dict, best: dict) -> bool:
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

    def _tune(self, net: torch.nn.Module, pairs: Sequence[PreparedPair], dtype: torch.dtype | None,
              maps: list[np.ndarray], known: dict | None = None) -> dict | None:
        """The instance head's post-processing chosen on ``pairs`` (``Head.tune``; None: its default).

        ``maps``: the kept model's validation maps (from the validation that chose it), else
        empty and predicted here; ``known``: what validation scored on them (``Head.score``'s
        ``rule_counts``). A stopped run is tuned too, on those maps (post-processing only, a few
        seconds), so a model a user stops early splits touching objects like one that ran to its end.
        """
        if not maps:
            k = heads.n_output_channels(self.cfg)
            maps, known = [predict.predict_normalized(net, p.image, k, PredictConfig(), dtype)
                           for p in pairs], None
        spacing = anisotropic_spacing(self.cfg)
        told = {} if spacing is None else {"spacing": spacing}
        tuned = heads.of(self.cfg).tune(maps, [p.truth for p in pairs], known, **told)
        return None if tuned is None else {k: (round(v, 4) if isinstance(v, float) else v) for k, v in tuned.items()}

    def _position(self, sitting: Sitting) -> Generator[object, None, Position]:
        """Where the loop starts: step 0, or where the resumed run stopped (its weights, optimiser,
        best model and random states are restored into ``sitting``)."""
        if self._resume is None:
            return Position(batch=self.cfg.batch_size)
        pos, warning = restore(self._resume, sitting)
        yield Message(f"resuming at step {pos.step} ({pos.seconds:.0f} s trained)")
        if warning is not None:
            yield Message(warning, level="warning")
        return pos

    def _snapshot(self, sitting: Sitting, pos: Position, finished: bool, seconds: float) -> TrainingState:
        """The run's training state now (``training.state``)."""
        data = {"data": data_fingerprint(self._pairs, self._names), "synthetic": data_fingerprint(self._synthetic),
                "steps_per_epoch": self._per_epoch}
        return capture(sitting, pos, self.cfg, finished=finished, seconds=seconds, init=self._init, data=data)

    def _save_checkpoint(self, sitting: Sitting, pos: Position, seconds: float) -> None:
        """Save the current weights and the training state atomically: a killed run still leaves a
        usable model, and ``--resume`` continues it."""
        meta = {"training": {"steps": pos.step, "seconds": round(seconds, 1), "checkpoint": True}}
        state = self._snapshot(sitting, pos, False, seconds)
        save_bundle(ModelBundle(sitting.net, self.cfg, meta, state), self._checkpoint_to)

    def _preview_event(self, net: torch.nn.Module, step: int, dtype: torch.dtype | None, k: int) -> Preview:
        chw = prepare_image(self._preview, self.cfg.model.in_channels, self.cfg.percentiles, self.cfg.model.dims,
                            self.cfg.polarity)
        net.eval()
        uncertainty = None
        try:
            if self.cfg.preview_mc_samples > 0:  # MC-dropout: mean prediction + epistemic uncertainty

                enable_mc_dropout(net)
                maps = mc_uncertainty(np.stack([predict.predict_normalized(net, chw, k, PredictConfig(), dtype)
                                                for _ in range(self.cfg.preview_mc_samples)]), heads.of(self.cfg))
                probs, uncertainty = maps["probabilities"], maps["epistemic"]
            else:
                probs = predict.predict_normalized(net, chw, k, PredictConfig(), dtype)
        finally:
            net.train()
        return Preview(step, 0, probs, labels_from_probabilities(probs, self.cfg.task, head=self.cfg.instance_head,
                                                                 spacing=anisotropic_spacing(self.cfg)),
                       uncertainty)


def train(pairs: Pairs, cfg: TrainConfig, **kwargs) -> Generator[object, None, ModelBundle]:
    """Shortcut for ``Trainer(pairs, cfg, **kwargs).run()``."""
    return (yield from Trainer(pairs, cfg, **kwargs).run())
