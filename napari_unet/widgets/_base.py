"""What every widget of the plugin starts with: the viewer, its shared session, fresh layer choices."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, LineEdit

from napari_unet.config import SETTINGS, PredictConfig

from napari_unet.widgets._layers import annotations_name, find_layer
from napari_unet.widgets._session import session_for, unwrap


class PluginWidget(Container):
    """A magicgui Container bound to one viewer and its ``Session``; layer pickers follow the layer list."""

    def __init__(self, viewer: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.viewer = unwrap(viewer)
        self.session = session_for(self.viewer)
        self.worker = None  # the running napari thread worker, if any
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

    def preselect_layers(self, image: Any, labels: Any = None) -> None:
        """Fill the ``image`` (and ``labels``) pickers with the obvious layers now and whenever the
        layer list changes, but only while a picker is empty: a user's choice is never replaced."""

        def choose(_event: Any = None) -> None:
            if image.value is None:
                name = obvious_image(self.viewer, [c for c in image.choices if c is not None])
                if name is not None:
                    image.value = name
            if labels is not None and labels.value is None and image.value is not None:
                name = annotations_name(image.value)
                if name in labels.choices:
                    labels.value = name

        self.viewer.layers.events.inserted.connect(choose)
        self.viewer.layers.events.removed.connect(choose)
        choose()


def obvious_image(viewer: Any, names: list[str]) -> str | None:
    """Of the image layers ``names``: the active one (or the one whose annotations are active),
    else the first with an ``<image> annotations`` layer, else the first; None when there is none."""
    if not names:
        return None
    active = viewer.layers.selection.active
    for name in names if active is not None else []:
        if active.name in (name, annotations_name(name)):
            return name
    annotated = [n for n in names if find_layer(viewer, annotations_name(n)) is not None]
    return (annotated or names)[0]


def diameter_control() -> LineEdit:
    """The *Object diameter* field of the Predict and Batch export widgets (``auto``, ``off`` or pixels)."""
    setting = SETTINGS["diameter"]
    return LineEdit(label=setting.label, value=str(PredictConfig.diameter), tooltip=setting.help)


def read_diameter(control: LineEdit) -> str | float | None:
    """The diameter ``control`` holds, or None after a one-line warning when it is not one."""
    from napari.utils.notifications import show_warning

    from napari_unet.errors import UserError
    from napari_unet.inference.size import parse_diameter

    try:
        return parse_diameter(control.value)
    except UserError as exc:
        show_warning(str(exc))
        return None
