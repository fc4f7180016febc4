"""Glue between the core's event generators and napari thread workers.

The core's long work is a generator of events. ``run_in_thread`` runs one in a napari
``GeneratorWorker`` and calls back on the main thread: ``on_event`` for every event,
``on_done`` with the generator's return value, ``on_error`` with a one-line message. Errors
are caught inside the worker so the user gets a notification, never a traceback dialog.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Generator

from napari_unet.errors import UserError

log = logging.getLogger(__name__)


class _Failure:
    """Returned by a guarded generator instead of raising."""

    def __init__(self, message: str) -> None:
        self.message = message


def lower_thread_priority(niceness: int = 10) -> None:
    """Make the calling (worker) thread yield the CPU to the viewer's thread (Linux; no-op elsewhere)."""
    import os
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except (OSError, AttributeError):
            pass


def guarded(make: Callable[[], Generator]) -> Generator:
    """Run ``make()``'s generator at a lower thread priority, turning exceptions into a ``_Failure``."""
    lower_thread_priority()
    try:
        return (yield from make())
    except UserError as exc:
        return _Failure(str(exc))
    except MemoryError:
        return _Failure("out of memory: try a smaller image, batch or patch size")
    except Exception as exc:  # a bug or an environment problem: keep the viewer alive, log details
        log.exception("napari-unet worker failed")
        return _Failure(f"{type(exc).__name__}: {exc}".splitlines()[0])


def run_in_thread(make: Callable[[], Generator], on_event: Callable[[Any], None],
                  on_done: Callable[[Any], None], on_error: Callable[[str], None] | None = None,
                  on_finished: Callable[[], None] | None = None):
    """Start ``make()`` in a napari thread worker; returns the worker (already started)."""
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error

    on_error = on_error or show_error

    def returned(value: Any) -> None:
        if isinstance(value, _Failure):
            on_error(value.message)
        else:
            on_done(value)

    worker = create_worker(guarded, make, _start_thread=False)
    worker.yielded.connect(on_event)
    worker.returned.connect(returned)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


def format_seconds(seconds: float | None) -> str:
    """'1 min 05 s' style durations for progress labels."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def unless_closed(method: Callable) -> Callable:
    """Skip a worker callback once its widget's Qt side is gone (e.g. the viewer was closed)."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if getattr(self, "_closed", False):
            return None
        return method(self, *args, **kwargs)

    return wrapper


def on_close(widget: Any, stop: Callable[[Any], None]) -> None:
    """When ``widget``'s Qt side is destroyed: mark it closed and call ``stop(widget)``."""
    holder = {"widget": widget}

    def closed(*_args) -> None:
        target = holder.pop("widget", None)
        if target is None:
            return
        try:
            target._closed = True
            stop(target)
        except (AttributeError, RuntimeError):  # already half torn down: nothing left to stop
            pass

    widget.native.destroyed.connect(closed)


@unless_closed
def show_failure(widget: Any, message: str) -> None:
    """A worker's error: in the widget's status line and as a napari notification."""
    from napari.utils.notifications import show_error

    widget.status.value = f"failed: {message}"
    show_error(f"napari-unet: {message}")


def progress_permille(event: Any) -> int:
    """0..1000 for a progress bar from a ``Progress`` event (steps or time, whichever is further)."""
    fraction = event.done / event.total if event.total else 0.0
    if event.remaining is not None and event.elapsed + event.remaining > 0:
        fraction = max(fraction, event.elapsed / (event.elapsed + event.remaining))
    return int(1000 * min(fraction, 1.0))


def save_folder(save: Callable[[Any, Any], Any], obj: Any, folder: Any, what: str) -> None:
    """``save(obj, folder)`` with notifications for success, nothing to save, or failure."""
    from napari.utils.notifications import show_error, show_info

    if obj is None:
        show_error(f"no {what} to save yet: train or load one first")
        return
    try:
        written = save(obj, folder)
    except (UserError, OSError) as exc:
        show_error(f"cannot save the {what}: {exc}")
        return
    show_info(f"{what} saved to {written}")


def load_folder(load: Callable[[Any], Any], folder: Any) -> Any:
    """``load(folder)``, or None after an error notification."""
    from napari.utils.notifications import show_error

    try:
        return load(folder)
    except UserError as exc:
        show_error(str(exc))
        return None
