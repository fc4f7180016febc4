"""Batch export widget: a folder of images to masks on disk, with a summary table."""

from __future__ import annotations

import numpy as np

from napari_unet.io import read_mask, write_image
from napari_unet.samples import load_sample, sample_names
from napari_unet.widgets.export import ExportWidget


def test_exports_a_folder_with_the_pretrained_model(make_napari_viewer, qtbot, tmp_path):
    folder = tmp_path / "images"
    for name in sample_names()[:3]:
        write_image(folder / f"{name}.png", load_sample(name)[0])
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    assert "pretrained:nuclei" in widget.model.choices
    widget.model.value = "pretrained:nuclei"
    widget.inputs.value, widget.output.value = folder, tmp_path / "masks"
    widget.format.value = "tif"
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "exported 3" in widget.status.value, widget.status.value
    masks = sorted((tmp_path / "masks").glob("*.tif"))
    assert len(masks) == 3
    assert all(read_mask(m).max() > 5 for m in masks)  # nuclei were found in each image
    assert (tmp_path / "masks" / "summary.csv").is_file()
    table = widget.table.value
    assert len(table["data"]) == 3 and all(int(row[1]) > 5 for row in table["data"])


def test_missing_folder_is_a_notification(make_napari_viewer, tmp_path, notifications):
    widget = ExportWidget(make_napari_viewer())
    widget.model.value = "pretrained:nuclei"
    widget.inputs.value = tmp_path / "nope"
    widget.start()
    assert notifications and notifications[-1][0] == "warning" and widget.worker is None
