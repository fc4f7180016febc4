"""What every widget of the plugin starts with: the viewer, its shared session, fresh layer choices."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container

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
