"""``make demo``: train on the bundled nuclei images for a bounded time and segment one more."""

from __future__ import annotations

from pathlib import Path
from typing import Generator

from napari_unet.config import MC_SAMPLES_WHEN_ASKED, PredictConfig
from napari_unet.data.samples import SHOWCASE, load_sample, training_samples
from napari_unet.events import Message
from napari_unet.files.io import write_image
from napari_unet.workflows.overview import overview
from napari_unet.workflows.train_request import TrainRequest, train_config_for
from napari_unet.workflows.train_run import TrainRun


def run_demo(out: Path, time_limit: float = 60.0, seed: int = 0) -> Generator[object, None, str]:
    """Train, save the model, predict the showcase image with MC-dropout, write masks and a PNG."""
    import numpy as np

    # deferred: imports torch
    from napari_unet.inference.predict import predict_image
    from napari_unet.metrics import evaluate_instances
    from napari_unet.models.bundle import save_bundle

    samples = training_samples()
    pairs, names = [(im, m) for _, im, m in samples], [n for n, _, _ in samples]
    # a user's run from scratch (`train --init none`): the demo shows what training does on these images
    request = TrainRequest(time_limit=time_limit, seed=seed, validate_every=max(time_limit / 4, 5.0))
    cfg = train_config_for(request, [im for im, _ in pairs], [m for _, m in pairs])
    yield Message(f"training on {len(samples)} bundled images for {time_limit:.0f} s")
    bundle = yield from TrainRun("none", request.task).events(pairs, names, cfg)
    model_dir = save_bundle(bundle, out / "model")

    image, truth = load_sample(SHOWCASE)
    yield Message(f"predicting {SHOWCASE} with {MC_SAMPLES_WHEN_ASKED} MC-dropout samples")
    prediction = predict_image(bundle, image, PredictConfig(mc_samples=MC_SAMPLES_WHEN_ASKED))
    write_image(out / "masks" / f"{SHOWCASE}.tif", prediction.labels)
    write_image(out / "probabilities" / f"{SHOWCASE}.tif", prediction.probabilities)
    write_image(out / "uncertainty" / f"{SHOWCASE}.tif", prediction.uncertainty["epistemic"])
    write_image(out / "overview.png", overview(image, prediction.labels, prediction.uncertainty["epistemic"]))
    scores = evaluate_instances([(prediction.labels, truth)])
    return (f"model: {model_dir}\nmasks: {out / 'masks'}\noverview: {out / 'overview.png'}\n"
            f"{SHOWCASE}: {int(np.max(prediction.labels))} nuclei found ({int(truth.max())} annotated), "
            f"AP@0.5 {scores['ap50']:.3f}")
