"""The progress driver of every command: a core generator run to its end behind a tqdm bar."""

from __future__ import annotations

import sys
from typing import Generator


def drive(events: Generator, desc: str, quiet: bool = False):
    """Run a core generator to completion with a tqdm progress bar; return its return value."""
    from tqdm import tqdm

    from napari_unet.events import LossReport, Message, Progress, ValidationReport, run_to_end

    bar = tqdm(desc=desc, unit="step", disable=quiet, file=sys.stderr, dynamic_ncols=True)

    def show(event) -> None:
        if isinstance(event, Progress):
            bar.total = event.total
            bar.n = event.done
            postfix = {"eta": f"{event.eta:.0f}s"} if event.eta is not None else {}
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()
        elif isinstance(event, LossReport):
            bar.set_description(f"{desc} loss {event.loss:.3f}", refresh=False)
        elif isinstance(event, ValidationReport):
            shown = ", ".join(f"{k} {v:.3f}" for k, v in event.metrics.items() if k != "score")
            bar.write(f"step {event.step}: validation {shown}{' (best)' if event.best else ''}")
        elif isinstance(event, Message):
            bar.write(event.text, file=sys.stderr if event.level == "error" else None)

    try:
        return run_to_end(events, show)
    finally:
        bar.close()
