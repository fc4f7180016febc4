"""One training run as a user starts it, for the CLI's ``train`` and the Train widget alike.

``TrainRun.start`` resolves the model the run starts from (``model_spec.start_model``; the CLI
calls it before reading any data, else ``events`` does): an architecture the user asked for
(depth, base width, 2D/3D) that is not the starting model's is a one-line ``UserError``; what
was not asked for is the starting model's. ``TrainRun.build`` makes the ``Trainer``
(fine-tuning: ``pretrained.fine_tune_config``, the starting model's architecture and a gentler
learning rate), or continues a stopped run's ``TrainingState``; ``TrainRun.events`` yields the
engine's events, previews the returned model once, and returns it.

``stop``, ``update_pairs`` and ``set_preview`` may come from another thread at any time: before
the ``Trainer`` exists they are remembered and handed to it when it is built.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Generator, Sequence

import numpy as np

from napari_unet.config import TrainConfig
from napari_unet.events import Message, Preview
from napari_unet.pretrained import fine_tune_config
from napari_unet.workflows.model_spec import CURRENT, start_model

Pairs = Sequence[tuple[np.ndarray, np.ndarray]]


def asked_architecture(depth: int | None, base_width: int | None, dims: int | None) -> dict[str, int]:
    """The architecture fields a user asked for (None: not asked), as ``start_model`` checks them."""
    return {k: v for k, v in (("depth", depth), ("base_width", base_width), ("dims", dims)) if v is not None}


class TrainRun:
    """One training run: its starting model, then its ``Trainer`` once ``events`` has built it."""

    def __init__(self, spec: str | None = None, task: str = "instances", architecture: dict[str, int] | None = None,
                 *, current: Any = None, preview: np.ndarray | None = None,
                 shown: Callable[[str], str] | None = None, hint: str | None = None) -> None:
        """``spec``: the starting model (None: the task's default, ``none``: from scratch, ``CURRENT``:
        ``current``); ``architecture``: the fields the user asked for (``asked_architecture``);
        ``shown`` and ``hint`` word a clash (see ``start_model``); ``preview``: the image a live
        preview predicts (None: no previews)."""
        self.spec, self.task, self.architecture, self.current = spec, task, architecture, current
        self._wording = {k: v for k, v in (("shown", shown), ("hint", hint)) if v is not None}
        self.preview = preview
        self.trainer: Any = None
        self.stopped = False
        self.pending: tuple | None = None
        self.init: Any = None  # the starting ModelBundle (None: from scratch)
        self._started = False

    def stop(self) -> None:
        """End the run at its next step (the best model so far is kept)."""
        self.stopped = True
        if self.trainer is not None:
            self.trainer.stop()

    def update_pairs(self, pairs: Pairs, names: Sequence[str]) -> None:
        """Train on these pairs from the next step (e.g. after the user painted more)."""
        if self.trainer is not None:
            self.trainer.update_pairs(pairs, names)
        else:
            self.pending = (pairs, names)

    def set_preview(self, image: np.ndarray | None) -> None:
        """Preview this image from now on."""
        self.preview = image
        if self.trainer is not None:
            self.trainer.set_preview_image(image)

    def start(self) -> Any:
        """The starting model (None: from scratch), resolved once; ``UserError`` for a spec that
        names no model or an asked architecture that is not its own."""
        if not self._started:
            self.init = start_model(self.spec, self.task, self.architecture, self.current, **self._wording)
            self._started = True
        return self.init

    def build(self, pairs: Pairs, names: Sequence[str] | None, cfg: TrainConfig | None = None, *,
              resume: Any = None, synthetic: Pairs | None = None, validation: Pairs | None = None,
              checkpoint_to: str | os.PathLike | None = None) -> Any:
        """The ``Trainer``: on ``pairs`` with ``cfg`` (``train_request.train_config_for``) from the
        starting model (``start``), or continuing ``resume`` (a stopped run's ``TrainingState``, its
        own starting model; ``cfg``: its ``state.resumed_config``, None for the stored one).
        ``UserError`` when the start does not fit, or the data is not the resumed run's."""
        # deferred: the engine imports torch (opening the Train widget, which imports this module, must not)
        from napari_unet.training.engine import Trainer

        where = {"names": names, "synthetic": synthetic or None, "checkpoint_to": checkpoint_to,
                 "preview_image": self.preview}
        if resume is not None:  # the same data (checked), the run's own settings
            trainer = Trainer.resuming(resume, pairs, cfg, **where)
        else:
            init = self.start()
            cfg = cfg if init is None else fine_tune_config(cfg, init)
            trainer = Trainer(pairs, cfg, init=init, validation=validation, **where)
        self.trainer = trainer
        if self.pending is not None:
            trainer.update_pairs(*self.pending)
        if self.stopped:
            trainer.stop()
        return trainer

    def events(self, *data: Any, **options: Any) -> Generator[object, None, Any]:
        """The run's events and its trained ``ModelBundle``; ``build``'s arguments build the
        ``Trainer`` here, unless ``build`` was called (the widget builds it in its worker, the CLI
        before its progress bar). Ends with a ``Preview`` of the returned model."""
        if self.trainer is None:
            self.build(*data, **options)
        yield from self._announce()
        bundle = yield from self.trainer.run()
        if self.preview is not None:
            yield _final_preview(bundle, self.preview)
        return bundle

    def _announce(self) -> Generator[object, None, None]:
        """Name the starting model when the user named one (not the model in memory)."""
        if self.init is not None and self.spec is not None and self.spec != CURRENT:
            yield Message(f"starting from {self.spec}")


def _final_preview(bundle: Any, image: np.ndarray) -> Preview:
    """The returned model's prediction of the previewed image."""
    # deferred: inference imports torch
    from napari_unet.inference.labels import labels_for
    from napari_unet.inference.predict import predict_probabilities

    probs = predict_probabilities(bundle, image)
    return Preview(-1, 0, probs, labels_for(bundle, probs))
