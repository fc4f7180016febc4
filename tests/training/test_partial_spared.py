"""A fine-tune on partial annotations does not teach as background the unpainted objects its
starting model sees, where the start agrees with the painted background: the pull towards
background leaves those pixels alone; where the start sees objects on the painted background, it
is not trusted and every unannotated pixel is pulled."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from napari_unet.config import LossConfig, TrainConfig
from napari_unet.data.dataset import prepare_pairs
from napari_unet.data.samples import load_sample
from napari_unet.data.targets import IGNORE, unannotated_prior
from napari_unet.models.bundle import load_bundle
from napari_unet.events import Message, run_to_end
from napari_unet.training.engine import Trainer
from napari_unet.training.spared import START_AGREES
from napari_unet.workflows.model_spec import model_path


def test_the_prior_skips_spared_pixels_and_nothing_else():
    target = np.array([[IGNORE, IGNORE, 0], [1, IGNORE, 2]])
    weights = np.full(target.shape, 3.0, np.float32)
    spared = np.array([[True, False, True], [True, False, False]])
    out = unannotated_prior(weights, target, 0.01, spared)
    assert out.tolist() == [[0.0, np.float32(0.01), 3.0], [3.0, np.float32(0.01), 3.0]]
    assert unannotated_prior(weights, target, 0.01).tolist() == [[np.float32(0.01)] * 2 + [3.0], [3.0, np.float32(0.01), 3.0]]


def test_a_fine_tune_spares_the_nuclei_the_start_sees():
    """The shipped model and the bundled nuclei image with one nucleus painted (2) and its ring (1):
    the unpainted nuclei, which the start finds, get no pull; empty background still does."""
    start = load_bundle(model_path("pretrained:nuclei"))
    image, mask = load_sample()
    image, truth = image[:128, :128], mask[:128, :128]
    ids = np.unique(truth[truth > 0])
    painted = ids[len(ids) // 2]
    partial = np.zeros(truth.shape, np.uint16)
    grown = np.zeros(truth.shape, bool)
    ys, xs = np.nonzero(truth == painted)
    grown[max(ys.min() - 4, 0):ys.max() + 5, max(xs.min() - 4, 0):xs.max() + 5] = True
    partial[grown & (truth == 0)] = 1
    partial[truth == painted] = 2
    cfg = replace(TrainConfig(task="instances", sparse=True, loss=LossConfig(unannotated_background=0.01)),
                  model=start.config.model, percentiles=start.config.percentiles, steps=1, time_limit=None)
    trainer = Trainer([(image, partial)], cfg, init=start)
    said = []
    spared = drain(trainer._spared([(image, partial)]), said)[0]
    assert "spared the pull" in said[0]
    weights = prepare_pairs([(image, partial)], cfg, spared=[spared])[0].weights
    unpainted = (truth > 0) & (truth != painted) & (partial == 0)
    empty = (partial == 0) & ~spared
    assert unpainted.sum() > 200 and empty.sum() > 200
    assert (weights[unpainted] == 0).mean() > 0.9  # the nuclei the start knows are not taught as background
    assert np.all(weights[empty] == np.float32(0.01))  # the rest of the unannotated pixels still is
    cached = trainer._spared_cache[id(image)][1]
    drain(trainer._spared([(image, partial)]), [])
    assert trainer._spared_cache[id(image)][1] is cached  # one prediction of the start per image and run
    assert drain(Trainer([(image, partial)], cfg)._spared([(image, partial)]), []) is None  # no start

    # background strokes painted across nuclei: the start sees objects there, so it is not trusted
    wrong = partial.copy()
    wrong[(truth > 0) & (truth != painted)] = 1
    said = []
    assert drain(trainer._spared([(image, wrong)]), said) == [None]
    assert "every unannotated pixel is pulled" in said[0]
    assert (wrong == 1).sum() * START_AGREES < ((wrong == 1) & cached).sum()
    # no background painted: nothing to check the start against, nothing spared
    assert drain(trainer._spared([(image, np.where(partial == 1, 0, partial))]), []) == [None]



def drain(events, said):
    """The generator's return value; the texts of the messages it yields go to ``said``."""
    return run_to_end(events, lambda event: said.append(event.text) if isinstance(event, Message) else None)
