"""The task a user picks and the number of classes their masks imply: one rule for every front end.

User tasks (the words the CLI and the widgets offer):

- ``instances``: masks are object ids (0 = background); the network predicts 3 classes
  (background, interior, boundary) or a star/flow head on top; ``n_classes`` is unused (2).
- ``partial``: partial instance annotations: 0 = not annotated (ignored), 1 = background,
  2.. = objects (one id each), so a user paints a few objects and background strokes and the
  unpainted nuclei are not taught as background. The network is the ``instances`` one.
- ``classes``: every pixel labelled with a class index (0 = background). A mask holding only
  0 and 255 (the common binary file convention) is 2 classes; otherwise the largest value + 1.
- ``sparse``: scribbles; 0 = not annotated, 1 = background, 2.. = classes, so the largest
  value is the class count (at least 2).

``TrainConfig`` spells them as ``task`` ("instances" | "semantic") plus ``sparse`` (partial
instances are ``instances`` + ``sparse``; ``user_task`` maps back); a project folder's ``mode``,
an annotation mode and the CLI's ``train --task`` are the user task itself (``--task semantic``
is ``classes``, ``--sparse`` its scribble form). The words and their widget labels live in
``config.USER_TASKS`` and ``config.TASK_LABELS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np

from napari_unet.config import USER_TASKS  # noqa: F401 (the task words live with the other setting names)
from napari_unet.errors import UserError

UserTask = Literal["instances", "partial", "classes", "sparse"]
INSTANCE_TASKS: tuple[str, ...] = ("instances", "partial")  # user tasks trained as TrainConfig.task "instances"


@dataclass(frozen=True)
class TaskClasses:
    """A user task as ``TrainConfig`` fields."""

    task: Literal["instances", "semantic"]
    sparse: bool
    n_classes: int


def user_task(task: str, sparse: bool = False) -> str:
    """The user task for ``TrainConfig``-style ``task`` + ``sparse`` (or a project ``mode``)."""
    if task in INSTANCE_TASKS:
        return "partial" if sparse or task == "partial" else "instances"
    if task in ("sparse", "semantic", "classes"):
        return "sparse" if sparse or task == "sparse" else "classes"
    raise UserError(f"unknown task {task!r}; expected one of {', '.join(USER_TASKS)}")


def zero_is_unannotated(task: str) -> bool:
    """Whether 0 in a mask of this user task means "not annotated" (partial instances, scribbles)
    rather than background."""
    return user_task(task) in ("partial", "sparse")


def config_task(task: str) -> str:
    """``TrainConfig.task`` ("instances" | "semantic") of a user task."""
    return "instances" if user_task(task) in INSTANCE_TASKS else "semantic"


def task_and_classes(masks: Iterable[np.ndarray], task: str, n_classes: int | None = None) -> TaskClasses:
    """``TrainConfig`` task, sparse flag and class count for ``masks`` under a user task
    (``n_classes`` given: used as is, after a check that the masks fit it)."""
    task = user_task(task)
    if task in INSTANCE_TASKS:
        return TaskClasses("instances", task == "partial", 2)
    values = np.unique(np.concatenate([np.unique(np.asarray(m)) for m in masks] or [np.zeros(1, np.int64)]))
    if values.size and values.min() < 0:
        raise UserError(f"class masks cannot hold negative values (found {values.min()})")
    top = int(values.max()) if values.size else 0
    if task == "sparse":
        implied = max(2, top)
    else:
        implied = 2 if set(values.tolist()) <= {0, 255} else max(2, top + 1)
    if n_classes is not None:
        if n_classes < 2:
            raise UserError("the number of classes must be at least 2 (background included)")
        if n_classes < implied:
            raise UserError(f"the masks hold {implied} classes, more than the {n_classes} asked for")
        implied = n_classes
    return TaskClasses("semantic", task == "sparse", implied)
