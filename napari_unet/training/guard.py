"""Fine-tuning never ends worse than where it started.

Users of every peer tool report fine-tuning that made their model worse. Before a fine-tuning
run trains, the engine scores the starting model on the run's validation images with the
keep-best score (``validation.validate``); at the end the best fine-tuned weights replace it only
if they score higher on those images (``keep_fine_tuned``). The starting model is the incumbent:
unlike keep-best (where the final weights stay unless an earlier model wins beyond doubt), a
fine-tuned model that scores lower or only ties is not kept. A tie means the validation images
cannot tell the two apart, and the starting model has a record beyond them (a pretrained model's
card, the user's earlier run); a tie on one held-out image let 20 steps of fine-tuning
``pretrained:nuclei`` replace it while losing 0.03 AP@0.5 on the val split. When the starting
model stays, its weights are returned under the run's record. Validation on a few objects held
out of one or two images cannot tell the two apart: under ``MIN_HELD_OUT_OBJECTS`` the guard does
not run and says so (the record's ``not_run``).

The guard runs only when every tensor of the new network came from the starting model (same
input channels, task, head and classes). When some were re-initialised (another head, more
classes, more channels), the starting model's outputs mean something else on this task and
cannot be scored the same way; the record then says why the guard did not run. The outcome
travels in ``meta["training"]["fine_tune_guard"]``; ``guard_note`` words it for the user.
"""

from __future__ import annotations

from typing import Any

KEY = "fine_tune_guard"
# Validation on objects held out of one or two images: with fewer than this many the guard does
# not compare. Ten painted objects hold out two; on the few-clicks benchmark (docs/benchmarks.md,
# "Unannotated pixels pull towards background") the two-object verdicts kept the starting model
# twice, both times wrongly (brightfield 0.155 instead of 0.556, EM 0.039 instead of 0.247), and
# let through the one fine-tune that lost (fluorescence, -0.025): a coin toss, not a guard.
MIN_HELD_OUT_OBJECTS = 5
START = "start model"
TUNED = "fine-tuned"


def keep_fine_tuned(start_score: float, tuned_score: float) -> bool:
    """True when the fine-tuned model replaces the starting model: it scores strictly higher."""
    return tuned_score > start_score


def compared(keep_tuned: bool, start_score: float, tuned_score: float, images: int, seconds: float) -> dict[str, Any]:
    """The record of a guard that compared the two models on ``images`` validation images."""
    return {"kept": TUNED if keep_tuned else START, "start_score": round(start_score, 4),
            "fine_tuned_score": round(tuned_score, 4), "validation_images": images,
            "seconds": round(seconds, 1)}


def too_few_objects(held_out: int) -> str | None:
    """Why the guard cannot compare on ``held_out`` held-out objects (None: enough of them)."""
    if held_out >= MIN_HELD_OUT_OBJECTS:
        return None
    return (f"{held_out} held-out object(s) cannot tell the two models apart; "
            f"it compares from {MIN_HELD_OUT_OBJECTS} on (paint more objects or add an image)")


def not_run(reason: str) -> dict[str, Any]:
    """The record of a guard that could not compare (``reason``); the fine-tuned weights are kept."""
    return {"kept": TUNED, "not_run": reason}


def guard_note(meta: dict[str, Any]) -> str | None:
    """One line for the user about what the guard did (None: the run was no fine-tuning)."""
    record = (meta.get("training") or {}).get(KEY)
    if not record:
        return None
    if "not_run" in record:
        return f"fine-tuning not checked against the starting model ({record['not_run']})"
    start, tuned, n = record["start_score"], record["fine_tuned_score"], record["validation_images"]
    if record["kept"] == START:
        return (f"fine-tuning did not beat the starting model (validation score {tuned:.3f} vs {start:.3f} "
                f"on {n} image(s)): kept the starting model")
    return f"fine-tuned model kept (validation score {tuned:.3f} vs {start:.3f} for the starting model on {n} image(s))"


def kept_start(meta: dict[str, Any]) -> bool:
    """True when the guard returned the starting model's weights."""
    return ((meta.get("training") or {}).get(KEY) or {}).get("kept") == START
