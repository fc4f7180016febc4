"""The `annotate next` tour: suggested regions on one image or across the training set.

``RegionTour`` holds the ranked regions (each tagged with its image layer's name), draws the
Shapes layer ``annotate next`` with the boxes of the image on show (numbered by global rank),
and on ``next()`` moves the camera to the next region, first switching the viewer to that
region's image when it lies in another one: that image and its annotations become visible, the
other training-set images and their layers are hidden (and shown again as they were when the
tour comes back to them), and the image (or, if the user was painting, its annotations)
becomes the active layer.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from napari_unet.widgets._layers import (annotations_name, find_layer, prediction_name, probability_name,
                                         uncertainty_name)

SHAPES_NAME = "annotate next"


def related_layers(viewer: Any, session: Any, name: str) -> list:
    """The image layer ``name`` and the layers made for it: annotations, prediction, probability, uncertainty."""
    names = [name, annotations_name(name), prediction_name(name), probability_name(name), uncertainty_name(name)]
    layers = [find_layer(viewer, n) for n in names]
    labels = session.labels_layer(name)  # the training-set annotation layer, whatever it is called
    return [layer for layer in [*layers, labels] if layer is not None and layer in viewer.layers]


class RegionTour:
    """Ranked regions of one or several images, visited in rank order (wrapping around)."""

    def __init__(self, viewer: Any, session: Any) -> None:
        self.viewer, self.session = viewer, session
        self.regions: list = []
        self.index = -1
        self.shown: str | None = None  # the image whose boxes the Shapes layer holds
        self._hidden: dict[str, list] = {}  # image name -> its layers this tour hid

    def start(self, regions: Sequence, shown: str) -> None:
        """Take new ``regions`` (best first) while ``shown`` is on screen, then go to the first."""
        self.regions, self.index = list(regions), -1
        self._draw(shown)
        self.next()

    def next(self) -> Any:
        """Centre the camera on the next region, switching images when needed; returns it."""
        if not self.regions:
            return None
        self.index = (self.index + 1) % len(self.regions)
        region = self.regions[self.index]
        image = find_layer(self.viewer, region.name)
        if image is None:  # the layer was removed or renamed since the ranking
            return region
        if region.name != self.shown:
            self._switch_to(region.name)
            self._draw(region.name)
        scale, offset = np.asarray(image.scale[-2:]), np.asarray(image.translate[-2:])
        self.viewer.camera.center = tuple(np.asarray(region.centre) * scale + offset)
        canvas = getattr(self.viewer, "_canvas_size", (600, 600))
        extent = float(max(region.y1 - region.y0, region.x1 - region.x0) * scale.max())
        self.viewer.camera.zoom = 0.6 * min(canvas) / max(extent, 1.0)
        return region

    def _draw(self, name: str) -> None:
        """(Re)create ``annotate next`` with the boxes of image ``name``, keeping the active layer."""
        self.shown = name
        image = find_layer(self.viewer, name)
        if SHAPES_NAME in self.viewer.layers:
            self.viewer.layers.remove(SHAPES_NAME)
        if image is None:
            return
        ranks = [i for i, r in enumerate(self.regions) if r.name == name]
        texts = {"string": [f"#{i + 1}" for i in ranks], "color": "yellow", "size": 12}
        active = self.viewer.layers.selection.active
        self.viewer.add_shapes([self.regions[i].corners() for i in ranks], shape_type="rectangle", name=SHAPES_NAME,
                               edge_color="yellow", face_color="transparent", edge_width=3,
                               text=texts if ranks else None, scale=tuple(image.scale[-2:]),
                               translate=tuple(image.translate[-2:]))
        self.viewer.layers.selection.active = active

    def _switch_to(self, name: str) -> None:
        """Show image ``name`` with its layers, hide the other training-set images, select it."""
        previous = self.shown
        was_painting = previous is not None and self.viewer.layers.selection.active is self.session.labels_layer(previous)
        for other in self.session.project.names():
            if other != name:
                visible = [layer for layer in related_layers(self.viewer, self.session, other) if layer.visible]
                self._hidden.setdefault(other, []).extend(visible)
                for layer in visible:
                    layer.visible = False
        for layer in self._hidden.pop(name, []):
            if layer in self.viewer.layers:
                layer.visible = True
        image = find_layer(self.viewer, name)
        image.visible = True
        labels = self.session.labels_layer(name)
        if labels is not None and labels in self.viewer.layers:
            labels.visible = True
        target = labels if was_painting and labels is not None and labels in self.viewer.layers else image
        self.viewer.layers.selection.active = target
