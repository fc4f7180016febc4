"""Instance heads: what an instance model outputs, behind one interface (``base.Head``), and their registry.

``TrainConfig.instance_head`` names a registered head; ``of(cfg)`` is the head of a config (None
for a semantic model) and the rest of the package asks it rather than testing names: output
channels, training targets and loss, instances from maps (whole and block-wise), validation
score and threshold search, uncertainty maps, 2D/3D support, export metadata. The built-in
heads, in the order the CLI and the Train widget offer them: ``three_class`` (the default),
``star``, ``flow``. A new head is one module with a ``Head`` subclass and a ``register`` call
(docs/architecture.md, "How to add a head").
"""

from __future__ import annotations

from typing import Any

from napari_unet.errors import UserError
from napari_unet.heads.base import Head
from napari_unet.heads.flow import FlowHead
from napari_unet.heads.star import StarHead
from napari_unet.heads.three_class import ThreeClassHead

_REGISTRY: dict[str, Head] = {}


def register(head: Head, replace: bool = False) -> Head:
    """Add ``head`` under ``head.name`` (``replace``: over a head of that name); returns it."""
    if not head.name or not isinstance(head.name, str):
        raise ValueError(f"an instance head needs a name, got {head.name!r}")
    if head.name in _REGISTRY and not replace and _REGISTRY[head.name] is not head:
        raise ValueError(f"an instance head named {head.name!r} is already registered")
    _REGISTRY[head.name] = head
    return head


def unregister(name: str) -> None:
    """Remove the head ``name`` (tests that register their own)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered heads' names, in registration order (the built-in ones first)."""
    return tuple(_REGISTRY)


def get(name: str) -> Head:
    """The head registered as ``name``; ``UserError`` for an unknown one."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):

        raise UserError(f"unknown instance head {name!r}; expected one of {', '.join(names())}") from None


def of(cfg: Any) -> Head | None:
    """The instance head of a model trained with ``cfg`` (``TrainConfig``); None for a semantic model."""
    return get(cfg.instance_head) if cfg.task == "instances" else None


def names_for_dims(dims: int) -> list[str]:
    """The heads that run in ``dims`` D."""
    return [name for name, head in _REGISTRY.items() if dims in head.dims]


def n_output_classes(cfg: Any) -> int:
    """Target classes for a task: 3 for instances (``data.targets.INSTANCE_CLASSES``), ``n_classes`` for semantic."""
    return 3 if cfg.task == "instances" else cfg.n_classes


def n_output_channels(cfg: Any) -> int:
    """All network output channels: the classes, or the instance head's maps."""
    head = of(cfg)
    return head.n_channels(cfg) if head is not None else n_output_classes(cfg)


def check_head_dims(task: str, instance_head: str, dims: int) -> None:
    """Raise ``UserError`` when an instance head cannot run in ``dims`` D (``Head.dims``)."""
    if task == "instances":
        get(instance_head).check_dims(dims)


def uncertainty_givers() -> dict[str, list[str]]:
    """Each head-specific uncertainty map (``Head.uncertainty_kinds``) and the heads that give it."""
    givers: dict[str, list[str]] = {}
    for name, head in _REGISTRY.items():
        for kind in head.uncertainty_kinds:
            givers.setdefault(kind, []).append(name)
    return givers


def described() -> str:
    """The heads in words, for help texts: ``'3class' (...), 'star' (...) or 'flow' (...)``."""
    parts = [f"'{head.name}' ({head.description})" if head.description else f"'{head.name}'"
             for head in _REGISTRY.values()]
    return ", ".join(parts[:-1]) + (" or " if len(parts) > 1 else "") + parts[-1] if parts else ""


def _register_builtins() -> None:
    for head in (ThreeClassHead(), StarHead(), FlowHead()):
        register(head)


_register_builtins()

__all__ = ["Head", "check_head_dims", "described", "get", "n_output_channels", "n_output_classes", "names",
           "names_for_dims", "of", "register", "uncertainty_givers",
           "unregister"]
