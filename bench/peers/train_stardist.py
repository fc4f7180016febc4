"""StarDist 2D from scratch on the dsb2018_fluo train split for a budget of fit seconds, then the val split.

Runs in ``bench/peers/.venv-stardist`` (see setup.sh), never with napari_unet:

    bench/peers/.venv-stardist/bin/python bench/peers/train_stardist.py --budget 120 --seed 0 --out DIR

Set-up as in the shared peer notes: ``Config2D(n_rays=32, grid=(2, 2))``, 256² patches, batch 4, no
TensorBoard; images normalised to percentiles 1-99.8, label holes filled; 15 train images held back
for Keras validation (keep-best) and ``optimize_thresholds``. The clock counts Keras ``fit`` only
(from its first to its last callback, StarDist's own set-up before it is not counted): a callback
stops training after the batch that spends the budget (the epoch's validation still runs).
Writes ``DIR/labels.npz`` (val labels by image name) and ``DIR/result.json``.
"""

from __future__ import annotations

import time

from peer_common import (load_splits, parse_args, predict_split, split_held_back, stardist_budget, stardist_predict,
                         stardist_result, write_outputs)

N_HELD_BACK = 15
STEPS_PER_EPOCH = 100  # StarDist's default


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    import numpy as np
    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    budget = stardist_budget(args)  # threads, seeds, and the callback that ends fit

    def prepare(image: np.ndarray) -> np.ndarray:
        return normalize(image, 1, 99.8, axis=(0, 1)).astype(np.float32)  # (H, W) float32

    train, val = load_splits()
    fit, held = split_held_back(train, N_HELD_BACK, args.seed)
    x_fit, y_fit = [prepare(im) for _, im, _ in fit], [fill_label_holes(m) for _, _, m in fit]
    x_held, y_held = [prepare(im) for _, im, _ in held], [fill_label_holes(m) for _, _, m in held]

    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(256, 256),
                    train_batch_size=4, train_tensorboard=False, train_steps_per_epoch=STEPS_PER_EPOCH)
    model = StarDist2D(conf, name="stardist", basedir=str(args.out))
    model.prepare_for_training()
    model.callbacks.append(budget)
    epochs = 10 ** 6 // STEPS_PER_EPOCH  # far more than any budget allows; the callback stops it
    start = time.perf_counter()
    model.train(x_fit, y_fit, validation_data=(x_held, y_held), seed=args.seed, epochs=epochs,
                steps_per_epoch=STEPS_PER_EPOCH)
    train_call_s = time.perf_counter() - start
    start = time.perf_counter()
    model.optimize_thresholds(x_held, y_held, save_to_json=False)
    thresholds_s = time.perf_counter() - start
    print(f"trained {budget.steps} steps in {budget.seconds:.0f} s; predicting {len(val)} val images", flush=True)

    labels, predict_s, post_s = predict_split(val, lambda image: stardist_predict(model, prepare(image)))
    write_outputs(args.out, labels, stardist_result(
        args, budget, model, "StarDist", train_call_s=train_call_s, thresholds_s=thresholds_s,
        predict_s_per_image=predict_s, post_s_per_image=post_s, n_fit=len(fit), n_held_back=len(held),
        n_val=len(val)))
    print(f"StarDist {args.budget:.0f} s seed {args.seed}: {budget.steps} steps in {budget.seconds:.0f} s fit, "
          f"predict {predict_s:.2f} s/image (NMS {post_s:.3f})", flush=True)


if __name__ == "__main__":
    main()
