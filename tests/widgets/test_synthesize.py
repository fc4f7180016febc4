"""Synthesize widget: diffusion training in the background, generation from auto prompts, accepting pairs."""

from __future__ import annotations

import numpy as np

from napari_unet.widgets.synthesize import IMAGES, LABELS, SynthesizeWidget
from napari_unet.widgets._session import session_for


def test_train_generate_review_accept(annotated, qtbot, tmp_path):
    viewer = annotated.viewer

    widget = SynthesizeWidget(viewer)
    raw = viewer.add_image(np.asarray(viewer.layers["nuclei"].data)[::-1].copy(), name="raw")
    assert [image is not raw.data and np.array_equal(image, raw.data) for image in widget.unannotated_images()] \
        == [True]  # a copy of the one image outside the training set
    widget.use_unannotated.value = True
    widget.time_limit.value = 10
    widget.train_button.changed.emit(True)
    assert widget.stop_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.bundle is not None, widget.status.value
    assert "trained" in widget.status.value
    assert widget.bundle.meta["training"]["unannotated_images"] == 1

    widget.model_folder.value = tmp_path / "diffusion"
    widget.save()
    assert any((tmp_path / "diffusion").iterdir())

    widget.count.value, widget.size.value, widget.steps.value = 2, 64, 3
    widget.generate()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    images, masks = viewer.layers[IMAGES].data, viewer.layers[LABELS].data
    assert images.shape == (2, 64, 64) and masks.shape == (2, 64, 64)
    assert images.dtype == np.uint8 and masks.max() > 0  # prompts hold objects

    widget.vary.value, widget.count.value = True, 4  # varied layouts: magnification, crowding, touching
    varied = widget.prompt_masks()
    assert len(varied) == 4 and all(m.shape == (64, 64) for m in varied)
    assert len({int((m > 0).sum()) for m in varied}) > 1
    widget.vary.value, widget.count.value = False, 2

    widget.review.value = [1]
    widget.accept()
    synthetic = session_for(viewer).synthetic
    assert len(synthetic) == 1 and synthetic[0][1].shape == (64, 64)
