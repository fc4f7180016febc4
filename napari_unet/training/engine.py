"""The training loop, written as a generator of events.

``Trainer.run()`` yields ``Message``, ``Progress``, ``LossReport``, ``ValidationReport``,
``Preview`` and finally ``Finished``; it returns the best ``ModelBundle``. The CLI drives it
with a progress bar, the napari widget in a thread worker. Stopping takes effect at the next
step (``Trainer.stop()``), and new annotations can be swapped in while it runs
(``Trainer.update_pairs()``). Checkpoints and the returned model carry the run's training state
(``training.state``), from which ``Trainer.resuming`` continues a stopped or killed run.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch

from napari_unet import heads
from napari_unet.config import MIN_SIZE, PredictConfig, TrainConfig
from napari_unet.data.augment import augment_batch
from napari_unet.data.dataset import (MixedSampler, PatchSampler, PreparedPair, count_objects, hold_out_objects,
                                      objects_brighter, objects_brighter_of, prepare_pairs,
                                      split_validation, without_zones)
from napari_unet.arrays.normalize import has_nonfinite, prepare_image
from napari_unet.data.targets import PULL_OBJECTS, pack, pull_for_painted, unannotated_pull, unpack
from napari_unet.errors import UserError
from napari_unet.events import Finished, LossReport, Message, Preview, Progress, ValidationReport
from napari_unet.models.bundle import ModelBundle, build_network, cpu_state_dict, save_bundle
from napari_unet.training import finish, guard
from napari_unet.training.checkpoint import blend_towards, load_compatible_weights, transfer_input_layer
from napari_unet.runtime.device import (autocast, channels_last_format, describe, release_cached_memory, run_setup,
                                        start_run, with_device_sizes)
from napari_unet.heads.losses import segmentation_loss
from napari_unet.training.state import (Position, Sitting, TrainingState, capture, check_same_data, data_fingerprint,
                                        fraction_of, restore, resumed_config, step_budget)
from napari_unet.arrays.volumes import anisotropic_spacing, check_volume_config, patch_shape, voxel_spacing
from napari_unet.inference import predict  # through the module, so a patched predictor is seen
from napari_unet.inference import size, volume_scale
from napari_unet.inference.labels import labels_from_probabilities
from napari_unet.inference.uncertainty import mc_uncertainty
from napari_unet.models import enable_mc_dropout
from napari_unet.training.spared import START_AGREES, painted_background, spared_pixels, start_sees
from napari_unet.training.validation import validate

Pairs = Sequence[tuple[np.ndarray, np.ndarray]]


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


@dataclass
class Setup:
    """What ``Trainer._setup`` hands the step loop."""

    device: torch.device
    dtype: torch.dtype | None  # low precision, or None for float32
    channels_last: bool
    train_pairs: list[PreparedPair]
    val_pairs: list[PreparedPair]
    zones: dict  # objects held out for validation, by image
    sampler: object  # training patches (mixed with synthetic pairs when asked)
    synthetic: PatchSampler | None
    brighter: bool | None  # whether the annotated objects are brighter than their background
    total_steps: int | None  # None: the time limit alone
    start_model: object  # the starting model's score, for the fine-tune guard
    setup_seconds: float
    sitting: Sitting | None  # None once the run is finished (frees the optimiser)
    pos: Position
    start: float  # perf_counter when the steps begin (after the data preparation)
    prepared: list[PreparedPair]  # every annotated image (the blend's agreement is measured on them)
    fresh: list[str]  # tensors re-initialised because they did not fit the starting model
    blend_from: dict | None  # the starting weights a fine-tune is blended back towards (None: no blend)


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
        self._loss_cfg = cfg  # what the loss reads: ``cfg`` with the pull scaled to the painted objects (``_set_pull``)
        self._spared_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # image id -> (image, the start's objects)
        self._preview = preview_image
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: tuple[Pairs, Sequence[str] | None] | None = None
        self._per_epoch = 1  # steps per epoch of the training pairs (set by ``run``)
        self._volume: dict | None = None  # the annotated objects' median volume (3D instances: ``volume_scale.KEY``)

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
        """Set up (``_setup``), step until the budget is spent or a stop, then finish the run."""
        setup = yield from self._setup()
        cfg, device, dtype, channels_last = self.cfg, setup.device, setup.dtype, setup.channels_last
        train_pairs, val_pairs, zones, sampler = setup.train_pairs, setup.val_pairs, setup.zones, setup.sampler
        sitting, pos, start, total_steps = setup.sitting, setup.pos, setup.start, setup.total_steps
        net, optimizer, scaler, rng, generator = (sitting.net, sitting.optimizer, sitting.scaler, sitting.rng,
                                                  sitting.generator)
        prepared, fresh, blend_from = setup.prepared, setup.fresh, setup.blend_from
        losses: list[float] = []
        last_report = last_val = last_preview = last_checkpoint = start
        start -= pos.seconds  # a resumed run's clock goes on from its earlier sittings (time limit, progress)
        k = heads.n_output_channels(cfg)
        net.train()

        def fraction_done() -> float:
            return fraction_of(pos.step, time.perf_counter() - start, total_steps, cfg.time_limit)

        while not self._stop.is_set() and fraction_done() < 1.0:
            pending = self._take_pending()
            if pending is not None:  # new annotations: new patches, the held-out objects still out
                scaled = self._working(pending[0])
                prepared = prepare_pairs(scaled, cfg, pending[1], (yield from self._spared(scaled)))
                self._set_pull(prepared)
                self._learn_volume(prepared)
                train_pairs = without_zones(prepared, zones)
                sampler = self._mixed(self._patches(train_pairs, rng, cfg.sparse), setup.synthetic, rng)
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
                report = self._validation_now(net, val_pairs, dtype, pos, start)
                if report is None:  # cancelled half-way through
                    break
                yield report
                last_val = time.perf_counter()
            if self._preview is not None and cfg.preview_every > 0 and now - last_preview >= cfg.preview_every:
                yield self._preview_event(net, step, dtype, k)
                last_preview = time.perf_counter()

        stopped, finished, step = self._stop.is_set(), fraction_done() >= 1.0, pos.step
        if losses:  # steps since the last report (a fast GPU can finish between two reports)
            yield LossReport(step, float(np.mean(losses)), time.perf_counter() - start)
        if val_pairs and not stopped:  # a stopped run ends now: no final validation
            yield self._final_validation(net, val_pairs, dtype, pos, bool(zones), start)
        resume = self._snapshot(sitting, pos, finished, time.perf_counter() - start)  # before the best weights load
        record = finish.guard_verdict(setup.start_model, pos.best_metrics, len(val_pairs))
        best_state, best_metrics, kept = finish.guarded(record, setup.start_model,
                                                        (pos.best_state, pos.best_metrics, pos.kept))
        if record is not None:
            yield finish.guard_message(record)
        if best_state is not None:
            net.load_state_dict(best_state)
        blend = None if record is not None and record["kept"] == guard.START else self._blend(
            net, blend_from, fresh, prepared, dtype)
        if blend is not None:
            keep, agree = blend
            blend_towards(net, blend_from, keep, fresh)
            told = "" if agree is None else f" (the two agree on {agree:.0%} of the objects on the annotated images)"
            yield Message(f"returned weights: {keep:.0%} fine-tuned, {1 - keep:.0%} starting model{told}")
        net.eval()
        del optimizer, scaler, sitting
        setup.sitting = None
        release_cached_memory(device)  # the optimiser state and activations; the model stays
        elapsed = time.perf_counter() - start
        meta = finish.run_meta(steps=step, seconds=elapsed, setup_seconds=setup.setup_seconds, device=describe(device),
                               images=len(train_pairs), validation_images=len(val_pairs), stopped=stopped,
                               batch_size=pos.batch, validation=best_metrics, record=record,
                               objects_brighter=(setup.brighter if setup.brighter is not None
                                                 else objects_brighter_of(self._init)))
        learned = finish.object_size(cfg, prepared, self._init, record)
        postprocess = yield from finish.post_processing(net, cfg, self._init, meta, val_pairs=val_pairs,
                                                        train_pairs=train_pairs, held_out_objects=bool(zones),
                                                        kept=kept, stopped=stopped, dtype=dtype, learned=learned,
                                                        annotated=prepared, min_size=self._min_size())
        if blend is not None:
            meta["training"]["fine_tune_keep"] = round(blend[0], 4)
            if blend[1] is not None:
                meta["training"]["fine_tune_agreement"] = round(blend[1], 4)
        if postprocess:
            meta["postprocess"] = postprocess
        if learned is not None:
            meta[size.KEY] = learned
        if self._volume is not None:
            meta[volume_scale.KEY] = self._volume
        bundle = ModelBundle(net, cfg, meta, resume)
        yield Finished({"steps": step, "seconds": elapsed, **best_metrics})
        return bundle

    def _learn_volume(self, prepared: Sequence[PreparedPair]) -> None:
        """The annotated objects' median volume (``volume_scale.learned_volume``), for the floor
        the run scores with and the model folder it writes; set again when annotations change."""
        self._volume = volume_scale.learned_volume(self.cfg, [p.instances for p in prepared])

    def _min_size(self) -> int:
        """The smallest object validation, the guard and the post-processing search keep: the one
        the model's labels will keep (``volume_scale.floor_of``: a 3D instance model's learned
        floor; else the default min size)."""
        return volume_scale.floor_of(self._volume, MIN_SIZE)

    def _set_pull(self, prepared: Sequence[PreparedPair]) -> str:
        """The configuration the loss reads (``self._loss_cfg``): the run's, with the unannotated pixels'
        pull scaled to the painted objects (``targets.pull_for_painted``; the saved configuration keeps
        the setting as given, so a resumed run scales it the same way). A line saying so, or ''."""
        pull = unannotated_pull(self.cfg)
        self._loss_cfg = self.cfg
        if pull <= 0:
            return ""
        painted = count_objects(prepared)
        scaled = pull_for_painted(pull, painted)
        if scaled == pull:
            return ""
        self._loss_cfg = replace(self.cfg, loss=replace(self.cfg.loss, unannotated_background=scaled))
        return (f"{painted} painted object(s): unannotated pixels pull towards background at {scaled:g} "
                f"(from {pull:g} at {PULL_OBJECTS} painted objects)")

    def _working(self, pairs: Pairs) -> Pairs:
        """``pairs`` at the run's volume scale (``inference.volume_scale``; 2D: as they are)."""
        factors = volume_scale.factors_of(self.cfg)
        if factors is None:
            return pairs
        return [volume_scale.working_pair(image, mask, factors, self.cfg.model.in_channels) for image, mask in pairs]

    def _spared(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Generator[Message, None, list | None]:
        """Per pair, the pixels a fine-tune's pull towards background leaves alone (``training.spared``:
        the start's objects, where it agrees with the painted background), or None; says what it
        decided. None: no starting model or no pull. Each image is predicted once per run."""
        if self._init is None or unannotated_pull(self.cfg) <= 0:
            return None
        out, shares = [], []
        for image, mask in pairs:
            background = painted_background(mask)
            if background is None:  # nothing to compare the start with, or nothing unannotated
                out.append(None)
                continue
            cached = self._spared_cache.get(id(image))
            if cached is None or cached[0] is not image:
                cached = self._spared_cache[id(image)] = (image, start_sees(self._init, image))
            spared, share = spared_pixels(cached[1], background)
            out.append(spared)
            shares.append(share)
        if shares:
            kept = sum(s is not None for s in out)
            yield Message(f"the starting model sees objects on {100 * max(shares):.0f} % of the painted background"
                          + (f": its unpainted objects are spared the pull towards background ({kept} image(s))"
                             if kept else f" (over {100 * START_AGREES:.0f} %): every unannotated pixel is pulled"))
        return out

    def _setup(self) -> Generator[object, None, Setup]:
        """Everything before the first step, in this order (the order the RNGs are drawn in, which a
        resumed run repeats): seeds and device, the prepared pairs, batch and patch sized to the
        device (``RunSetup``), the validation split, the samplers, the network and optimiser, the
        starting model's score for the guard, then the position a resumed run restores."""
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

        cfg, decided = volume_scale.resolved(cfg, [mask for _, mask in self._pairs])
        self.cfg = cfg
        if decided:
            yield Message(decided)
        pairs = self._working(self._pairs)
        prepared = prepare_pairs(pairs, cfg, self._names, (yield from self._spared(pairs)))
        self._learn_volume(prepared)
        # unset batch/patch size: sized to the device (and in 3D to the volumes)
        cfg = self.cfg = with_device_sizes(cfg, device, [p.target.shape for p in prepared])
        message = self._set_pull(prepared)
        if message:
            yield Message(message)
        yield run_setup(device, dtype, cfg.batch_size, patch_shape(cfg))
        # zones: objects held out for validation, by image (one or two images)
        train_pairs, val_pairs, zones = yield from self._split(prepared)
        sampler, synthetic = yield from self._samplers(train_pairs, rng)
        brighter = objects_brighter(train_pairs)
        net, fresh = self._build(device, channels_last, brighter)
        if self._init is not None:
            yield Message(f"fine-tuning; re-initialised {len(fresh)} tensors that did not fit" if fresh else "fine-tuning")
        # what the fine-tuned weights are blended back towards at the end (a resumed run: the same start)
        blend_from = cpu_state_dict(net) if self._init is not None and cfg.fine_tune_keep != 1 else None
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
        return Setup(device, dtype, channels_last, train_pairs, val_pairs, zones, sampler, synthetic, brighter,
                     total_steps, start_model, setup_seconds, sitting, pos, start, prepared, fresh, blend_from)

    def _blend(self, net: torch.nn.Module, start: dict[str, torch.Tensor] | None, fresh: list[str],
               pairs: Sequence[PreparedPair], dtype: torch.dtype | None) -> tuple[float, float | None] | None:
        """(share of the fine-tuned weights, agreement or None) of the returned model, or None when
        nothing is blended (``TrainConfig.fine_tune_keep``; None: ``finish.keep_by_agreement``, for an
        instance model whose every tensor came from the start)."""
        keep = self.cfg.fine_tune_keep
        if start is None:
            return None
        if keep is not None:
            return keep, None
        if fresh or self.cfg.task != "instances" or not pairs:
            return None  # the start's outputs mean something else here: it cannot be compared
        start_net = copy.deepcopy(net)
        start_net.load_state_dict(start)
        agree = finish.agreement(net, start_net, self.cfg, pairs, dtype)
        del start_net
        return finish.keep_by_agreement(agree), agree

    def _samplers(self, train_pairs: Sequence[PreparedPair],
                  rng: np.random.Generator) -> Generator[object, None, tuple[object, PatchSampler | None]]:
        """(the sampler of training batches, the synthetic pairs' own sampler or None)."""
        cfg = self.cfg
        sampler = self._patches(train_pairs, rng, cfg.sparse)
        synthetic = self._synthetic_sampler(rng)
        sampler = self._mixed(sampler, synthetic, rng)
        if synthetic is not None:
            yield Message(f"{len(synthetic.pairs)} synthetic pair(s) supply {cfg.synthetic_ratio:.0%} of the patches")
        if cfg.task == "instances" and cfg.sparse and not any((p.target == 0).any() for p in train_pairs):
            yield Message("no background painted (label 1): paint a stroke of background around or between "
                          "objects, or the model learns that everything is an object", level="warning")
        return sampler, synthetic

    def _mixed(self, sampler: PatchSampler, synthetic: PatchSampler | None, rng: np.random.Generator) -> object:
        """``sampler``, with a ``synthetic_ratio`` share of ``synthetic``'s patches when there are any."""
        return sampler if synthetic is None else MixedSampler(sampler, synthetic, self.cfg.synthetic_ratio, rng)

    def _split(self, prepared: list[PreparedPair]) -> Generator[object, None, tuple[list, list, dict]]:
        """(training pairs, validation pairs, objects held out by image): the given validation
        pairs, whole images held out, or with too few images some annotated objects of them."""
        cfg = self.cfg
        if self._validation is not None:
            return prepared, prepare_pairs(self._working(self._validation), cfg), {}
        train_pairs, val_pairs = split_validation(prepared, cfg.validation_fraction, cfg.seed,
                                                  cfg.validation_max_images)
        if val_pairs or cfg.task != "instances":
            return train_pairs, val_pairs, {}
        train_pairs, val_pairs, zones = hold_out_objects(prepared, cfg.validation_fraction, cfg.seed)
        if val_pairs:
            held = count_objects(val_pairs)
            yield Message(f"validation on {held} held-out annotated object(s) "
                          "(too few images to hold out whole ones)")
        return train_pairs, val_pairs, zones

    def _validation_now(self, net: torch.nn.Module, val_pairs: Sequence[PreparedPair], dtype: torch.dtype | None,
                        pos: Position, start: float) -> ValidationReport | None:
        """Score the weights during the run; a higher score makes them the best model (None: stopped
        half-way through)."""
        latest: dict = {}
        metrics = validate(net, val_pairs, self.cfg, dtype, self._stop.is_set, latest, self._min_size())
        if metrics is None:
            return None
        improved = metrics["score"] > pos.best_score
        if improved:
            pos.best_state, pos.best_score, pos.best_metrics = cpu_state_dict(net), metrics["score"], metrics
            pos.kept = latest
        return ValidationReport(pos.step, metrics, improved, time.perf_counter() - start)

    def _final_validation(self, net: torch.nn.Module, val_pairs: Sequence[PreparedPair], dtype: torch.dtype | None,
                          pos: Position, held_out_objects: bool, start: float) -> ValidationReport:
        """Score the final weights; they become the best model unless an earlier one was better
        beyond doubt (``finish.final_is_better``; never on held-out objects of one image: too few)."""
        latest: dict = {}
        metrics = validate(net, val_pairs, self.cfg, dtype, keep=latest, min_size=self._min_size())
        improved = held_out_objects or finish.final_is_better(metrics, pos.best_score, latest, pos.kept)
        if improved:
            pos.best_state, pos.best_metrics, pos.kept = None, metrics, latest
        return ValidationReport(pos.step, metrics, improved, time.perf_counter() - start)

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
            loss = head.loss(logits, targets, weights, extra, self._loss_cfg)
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
        if annotated and (why := guard.too_few_objects(count_objects(val_pairs))):
            return {"record": guard.not_run(why)}
        began, kept = time.perf_counter(), {}
        metrics = validate(net, annotated or val_pairs, self.cfg, dtype, self._stop.is_set, kept, self._min_size())
        if metrics is None:
            return {"record": guard.not_run("stopped while scoring the starting model")}
        on = "all annotated objects" if annotated else f"{len(val_pairs)} image(s)"
        yield Message(f"starting model: validation score {metrics['score']:.3f} on {on}")
        return {"metrics": metrics, "kept": kept, "state": cpu_state_dict(net), "seconds": time.perf_counter() - began}

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
        if self._volume is not None:  # a killed 3D run's labels drop fragments as the finished model's would
            meta[volume_scale.KEY] = self._volume
        state = self._snapshot(sitting, pos, False, seconds)
        save_bundle(ModelBundle(sitting.net, self.cfg, meta, state), self._checkpoint_to)

    def _preview_event(self, net: torch.nn.Module, step: int, dtype: torch.dtype | None, k: int) -> Preview:
        """The current network's prediction of the preview image (a volume: at the run's volume scale,
        brought back to the volume's grid)."""
        image, factors = self._preview, volume_scale.factors_of(self.cfg)
        if factors is not None:
            image, _ = volume_scale.working_pair(image, None, factors, self.cfg.model.in_channels)
        preview = self._preview_at(net, image, step, dtype, k)
        if factors is None:
            return preview
        shape = volume_scale.volume_shape(self._preview, self.cfg.model.in_channels)
        restore = (lambda a: None if a is None else size.resize_maps(a, shape))
        return Preview(step, 0, restore(preview.probabilities), size.resize_labels(preview.labels, shape),
                       restore(preview.uncertainty))

    def _preview_at(self, net: torch.nn.Module, image: np.ndarray, step: int, dtype: torch.dtype | None,
                    k: int) -> Preview:
        chw = prepare_image(image, self.cfg.model.in_channels, self.cfg.percentiles, self.cfg.model.dims,
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
