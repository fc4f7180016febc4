"""Accepted synthetic pairs live in the project folder: autosaved at once, back after loading."""

from __future__ import annotations

import numpy as np

from napari_unet.cli import drive
from napari_unet.diffusion.config import DiffusionConfig, DiffusionUNetConfig
from napari_unet.diffusion.train import DiffusionTrainer
from napari_unet.files.project import Project
from napari_unet.widgets._session import session_for
from napari_unet.widgets.annotate import AnnotateWidget
from napari_unet.widgets.synthesize import SynthesizeWidget

TINY = DiffusionConfig(model=DiffusionUNetConfig(base_width=8, channel_mults=(1, 2), attention_levels=(1,),
                                                 head_width=8, context_dim=16, groups=4),
                       crop_size=32, batch_size=2, steps=2, time_limit=None, device="cpu", low_precision=False,
                       train_timesteps=100, threads=1)


def test_accepted_pair_is_saved_and_restored(annotated, make_napari_viewer, qtbot, tmp_path):
    annotate, viewer = annotated, annotated.viewer
    session = session_for(viewer)
    pairs, _ = session.training_pairs()

    widget = SynthesizeWidget(viewer)
    widget.bundle = drive(DiffusionTrainer(pairs, TINY).run(), "tiny diffusion", quiet=True)  # untrained is enough
    widget.count.value, widget.size.value, widget.steps.value = 2, 32, 2
    widget.guidance.value, widget.seed.value, widget.tags.value = 1.5, 11, ""
    widget.generate()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    widget.review.value = [1]
    widget.accept()
    widget.accept()  # accepting again adds nothing
    assert len(session.synthetic) == 1
    image, mask = widget.generated[1]

    recovered = Project.load(session.folder)  # what a crash would leave in the autosave folder
    assert len(recovered.synthetic) == 1
    assert np.array_equal(recovered.synthetic_pairs()[0][0], image)
    assert "synthetic pair" in annotate.stats.value

    annotate.project_folder.value = tmp_path / "project"
    annotate.save_project()

    fresh = make_napari_viewer()
    loader = AnnotateWidget(fresh)
    loader.project_folder.value = tmp_path / "project"
    loader.load_project()
    restored = session_for(fresh)
    assert restored is not session and restored.project.names() == ["nuclei"]
    assert len(restored.synthetic) == 1
    got_image, got_mask = restored.synthetic[0]
    assert np.array_equal(got_image, image) and np.array_equal(got_mask, mask)
    (pair,) = restored.project.synthetic.values()
    assert pair.origin["seed"] == 12 and pair.origin["guidance"] == 1.5 and pair.origin["prompt"] == "auto masks"
    assert len(restored.training_pairs()[0]) == 1  # real pairs only: validation never sees synthetic ones
