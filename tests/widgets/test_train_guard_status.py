"""The Train widget sizes patches to the device by default and reports the fine-tune guard."""

from __future__ import annotations

from napari_unet.config import CPU_SIZES
from napari_unet.widgets._session import session_for
from napari_unet.widgets.train import TrainWidget


def test_fine_tuning_one_image_reports_the_guard(nuclei_viewer, qtbot):
    """One image validates on held-out objects (since the partial-annotation core), so the guard
    compares the two models there and the status line says which was kept."""
    widget = TrainWidget(nuclei_viewer)
    widget.image.value, widget.labels.value = "nuclei", "nuclei ground truth"
    widget.init.value = "pretrained:nuclei"
    widget.time_limit.value = 5
    widget.preview_every.value = 0
    assert widget.patch_size.value == 0 and widget.batch_size.value == 0  # 0: sized to the device
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    status = widget.status.value
    assert status.startswith("done") and "validation score" in status and "on 1 image(s)" in status
    assert "fine-tuned model kept" in status or "kept the starting model" in status
    config = session_for(nuclei_viewer).model.config
    assert (config.batch_size, config.patch_size) == CPU_SIZES  # "auto" on the CPU: today's sizes
