"""Small helpers that find, create and refresh napari layers by name."""

from __future__ import annotations

from typing import Any

import numpy as np

SPARSE_COLOURS = [(0.55, 0.55, 0.55, 1.0), (1.0, 0.85, 0.1, 1.0), (0.1, 0.9, 0.3, 1.0), (1.0, 0.3, 0.8, 1.0),
                  (0.2, 0.6, 1.0, 1.0), (1.0, 0.45, 0.1, 1.0), (0.6, 0.3, 1.0, 1.0)]
PARTIAL_BACKGROUND = (0.6, 0.6, 0.6, 0.45)  # label 1: a light veil, so painted background reads as "seen, empty"
PARTIAL_COLOURS = 4095  # object colours before they cycle (then an id now and then shares the background's grey)


def annotations_name(image_name: str) -> str:
    return f"{image_name} annotations"


def prediction_name(image_name: str) -> str:
    return f"{image_name} prediction"


def regions_name(image_name: str) -> str:
    """The Shapes layer where regions to mark as fully annotated are drawn."""
    return f"{image_name} regions"


def probability_name(image_name: str) -> str:
    return f"{image_name} probability"


def uncertainty_name(image_name: str) -> str:
    return f"{image_name} uncertainty"


def layers_of_type(viewer: Any, kind: str) -> list:
    """Layers of one type ('image' or 'labels'), excluding this plugin's output layers for images."""
    from napari.layers import Image, Labels

    cls = Image if kind == "image" else Labels
    outputs = (" probability", " uncertainty")
    return [layer for layer in viewer.layers if isinstance(layer, cls)
            and not (kind == "image" and layer.name.endswith(outputs))]


def find_layer(viewer: Any, name: str | None):
    """The layer called ``name`` or None."""
    if name is None:
        return None
    return viewer.layers[name] if name in viewer.layers else None


def _show(viewer: Any, name: str, data: np.ndarray, like: Any, add: str, **kwargs):
    """Swap ``data`` into layer ``name`` when shapes match, else (re)create it with ``viewer.<add>``."""
    layer = find_layer(viewer, name)
    if layer is not None and layer.data.shape == data.shape:
        layer.data = data
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return getattr(viewer, add)(data, name=name, **_geometry(like, data.ndim), **kwargs)


def show_labels(viewer: Any, name: str, data: np.ndarray, like: Any = None, **kwargs):
    """Replace the data of Labels layer ``name`` (creating it when missing)."""
    kwargs.setdefault("opacity", 0.6)
    return _show(viewer, name, data, like, "add_labels", **kwargs)


def show_image(viewer: Any, name: str, data: np.ndarray, like: Any = None, **kwargs):
    """Replace the data of Image layer ``name`` (creating it when missing)."""
    return _show(viewer, name, data, like, "add_image", **kwargs)


def show_uncertainty(viewer: Any, image: Any, values: np.ndarray, kind: str):
    """``<image> uncertainty``: glowing (inferno, additive) where the model is unsure."""
    top = float(np.percentile(values, 99.5)) if values.size else 0.0
    layer = show_image(viewer, uncertainty_name(image.name), values.astype(np.float32), like=image,
                       colormap="inferno", opacity=0.7, blending="additive",
                       contrast_limits=(0.0, max(top, 1e-3)), metadata={"kind": kind})
    layer.metadata["kind"] = kind
    layer.contrast_limits = (0.0, max(top, 1e-3))
    return layer


def _geometry(like: Any, ndim: int) -> dict:
    """Scale/translate of a reference layer (its last ``ndim`` axes), so outputs overlay it."""
    if like is None or like.ndim < ndim:
        return {}
    return {"scale": tuple(like.scale[-ndim:]), "translate": tuple(like.translate[-ndim:])}


def spatial_data(layer: Any) -> np.ndarray:
    """An Image layer's data as an in-memory numpy array (channels last for RGB)."""
    return np.asarray(layer.data)


def annotation_colormap(mode: str) -> Any:
    """How an annotation layer of ``mode`` looks (None: napari's default random colours).

    Sparse: one fixed colour per class (background grey). Partial: background (1) a see-through
    grey, objects napari's random colours, unannotated (0) transparent.
    """
    if mode == "partial":
        from napari.utils.colormaps import CyclicLabelColormap, label_colormap

        colours = np.array(label_colormap(PARTIAL_COLOURS).colors)
        colours[1] = PARTIAL_BACKGROUND  # the colour of label 1
        return CyclicLabelColormap(colors=colours)
    if mode != "sparse":
        return None
    from napari.utils.colormaps import DirectLabelColormap

    colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    colours.update({i + 1: c for i, c in enumerate(SPARSE_COLOURS)})
    return DirectLabelColormap(color_dict=colours)
