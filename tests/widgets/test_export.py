"""Batch export widget: a folder of images to masks on disk, with a summary table."""

from __future__ import annotations

import numpy as np

from napari_unet.data.samples import load_sample, sample_names
from napari_unet.files.io import read_mask, write_image
from napari_unet.widgets.export import ExportWidget


def test_exports_a_folder_with_the_pretrained_model(make_napari_viewer, qtbot, tmp_path, notifications):
    """Good images next to a truncated and an empty file: the good ones are exported, the bad ones are
    failed rows and a warning; exporting again skips what is done."""
    folder = tmp_path / "images"
    for name in sample_names()[:3]:
        write_image(folder / f"{name}.png", load_sample(name)[0])
    write_image(folder / "y_truncated.tif", np.full((64, 64), 9, np.uint16))
    (folder / "y_truncated.tif").write_bytes((folder / "y_truncated.tif").read_bytes()[:60])
    (folder / "z_empty.png").write_bytes(b"")
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    assert "pretrained:nuclei" in widget.model.choices
    widget.model.value = "pretrained:nuclei"
    widget.inputs.value, widget.output.value = folder, tmp_path / "masks"
    widget.format.value = "tif"
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.status.value.startswith("exported 3 image(s)") and "2 of 5 failed" in widget.status.value
    masks = sorted((tmp_path / "masks").glob("*.tif"))
    assert len(masks) == 3
    assert all(read_mask(m).max() > 5 for m in masks)  # nuclei were found in each image
    assert (tmp_path / "masks" / "summary.csv").is_file()
    table = widget.table.value
    status, objects, error = (table["columns"].index(c) for c in ("status", "objects", "error"))
    rows = {row[0]: row for row in table["data"]}
    assert [rows[n][status] for n in sorted(rows)] == ["ok"] * 3 + ["failed"] * 2
    assert all(int(row[objects]) > 5 for row in table["data"] if row[status] == "ok")
    assert all(f"cannot read {n}" in rows[n][error] for n in ("y_truncated.tif", "z_empty.png"))
    assert notifications[-1][0] == "warning" and "2 of 5 files" in notifications[-1][1]
    stamps = [m.stat().st_mtime_ns for m in masks]
    widget.start()  # again: the three done are skipped, the bad ones tried (and reported) again
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "(3 already done, 2 of 5 failed)" in widget.status.value, widget.status.value
    assert [m.stat().st_mtime_ns for m in masks] == stamps and len(widget.table.value["data"]) == 5


def test_missing_folder_is_a_notification(make_napari_viewer, tmp_path, notifications):
    widget = ExportWidget(make_napari_viewer())
    widget.model.value = "pretrained:nuclei"
    widget.inputs.value = tmp_path / "nope"
    widget.start()
    assert notifications and notifications[-1][0] == "warning" and widget.worker is None
