"""The Synthesize widget: train a mask-conditioned diffusion model, generate image/mask pairs, accept them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar,
                              PushButton, Select, SpinBox)

from napari_unet.diffusion.auto_prompts import PROMPT_SIZE
from napari_unet.diffusion.config import DiffusionConfig, SampleConfig
from napari_unet.widgets._base import PluginWidget
from napari_unet.widgets._layers import find_layer, layers_of_type
from napari_unet.widgets._worker import (load_folder, on_close, progress_permille, run_in_thread, save_folder,
                                         show_failure, unless_closed)
from napari_unet.widgets.train import gui_threads

AUTO = "auto masks"
IMAGES, LABELS = "synthetic images", "synthetic labels"

if TYPE_CHECKING:
    import napari


class SynthesizeWidget(PluginWidget):
    """Diffusion training on the training set, prompts (auto or a Labels layer), review and accept."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        viewer = self.viewer
        self._trainer = None
        self.time_limit = SpinBox(label="Training time (s)", value=int(DiffusionConfig.time_limit), min=10,
                                  max=7 * 24 * 3600, step=60)
        self.use_unannotated = CheckBox(text="Also learn from open images without annotations", value=False,
                                        tooltip="2D image layers outside the training set teach the look "
                                                "(unconditional crops); masks still come from annotations")
        self.train_button = PushButton(text="Train diffusion model")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.model_folder = FileEdit(label="Diffusion model", mode="d")
        self.save_button = PushButton(text="Save")
        self.load_button = PushButton(text="Load")
        self.prompt = ComboBox(label="Mask prompt", choices=self._prompt_choices)
        self.count = SpinBox(label="Images (auto)", value=4, min=1, max=256)
        self.size = SpinBox(label="Size (px)", value=PROMPT_SIZE, min=32, max=2048, step=32)
        self.vary = CheckBox(text="Vary layouts (auto)", value=False,
                             tooltip="vary magnification, crowding and touching from image to image")
        self.tags = LineEdit(label="Text prompt", value="", tooltip="style tags, e.g. 'dense, dim'")
        self.guidance = FloatSpinBox(label="Guidance", value=SampleConfig.guidance, min=0.0, max=20.0, step=0.5)
        self.steps = SpinBox(label="DDIM steps", value=SampleConfig.steps, min=1, max=1000)
        self.seed = SpinBox(label="Seed", value=SampleConfig.seed, min=0, max=2**31 - 1)
        self.generate_button = PushButton(text="Generate")
        self.review = Select(label="Generated", choices=self._generated_choices)
        self.accept_button = PushButton(text="Accept selected into training set")
        self.progress = ProgressBar(label="Progress", min=0, max=1000, value=0)
        self.status = Label(value="no diffusion model yet")
        self.extend([
            Label(value="<b>Learn the look of your images</b>"), self.time_limit, self.use_unannotated,
            Container(widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False),
            self.model_folder, Container(widgets=[self.save_button, self.load_button], layout="horizontal",
                                         labels=False),
            Label(value="<b>Generate image/mask pairs</b>"), self.prompt, self.count, self.size, self.vary,
            self.tags, self.guidance, self.steps, self.seed, self.generate_button, self.review, self.accept_button,
            self.progress, self.status])
        self.bundle = None
        self.generated: list[tuple[np.ndarray, np.ndarray]] = []  # (image, mask) under review
        self.generated_origins: list[dict] = []  # prompt, tags, seed, guidance, steps of each
        self._accepted: set[int] = set()  # indices of this generation already in the training set
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self.save)
        self.load_button.changed.connect(self.load)
        self.generate_button.changed.connect(self.generate)
        self.accept_button.changed.connect(self.accept)
        on_close(self, lambda w: w.stop())

    def _prompt_choices(self, _widget=None) -> list[str]:
        names = [layer.name for layer in layers_of_type(self.viewer, "labels") if layer.ndim == 2]
        return [AUTO, *names]

    def _generated_choices(self, _widget=None) -> list[int]:
        return list(range(len(getattr(self, "generated", []))))

    # -- training ----------------------------------------------------------------------------
    def train(self) -> None:
        from napari.utils.notifications import show_warning

        from napari_unet.diffusion.config import DiffusionConfig

        pairs, names = self.session.training_pairs()
        if not pairs:
            show_warning("the training set is empty: annotate images first (Annotate widget)")
            return
        if self.worker is not None:
            return
        cfg = DiffusionConfig(time_limit=float(self.time_limit.value), threads=gui_threads())
        unannotated = self.unannotated_images() if self.use_unannotated.value else []

        def events():
            from napari_unet.diffusion.train import DiffusionTrainer

            self._trainer = DiffusionTrainer(pairs, cfg, names=names, unannotated=unannotated)
            return (yield from self._trainer.run())

        self._running(True)
        self.worker = run_in_thread(events, self._on_event, self._on_trained, self._on_error, self._on_finished)

    def unannotated_images(self) -> list[np.ndarray]:
        """Copies of the open 2D image layers that are neither in the training set nor generated here."""
        samples = self.session.project.samples
        return [np.array(layer.data, copy=True) for layer in layers_of_type(self.viewer, "image")
                if layer.ndim == 2 and not layer.multiscale and layer.name not in samples and layer.name != IMAGES]

    def stop(self) -> None:
        if self._trainer is not None:
            self._trainer.stop()
        if self.worker is not None and self._trainer is None:
            self.worker.quit()

    # -- files -------------------------------------------------------------------------------
    def save(self) -> None:
        from napari_unet.diffusion.bundle import save_diffusion

        save_folder(save_diffusion, self.bundle, self.model_folder.value, "diffusion model")

    def load(self) -> None:
        from napari_unet.diffusion.bundle import load_diffusion

        bundle = load_folder(load_diffusion, self.model_folder.value)
        if bundle is None:
            return
        self.bundle = bundle
        self.status.value = f"diffusion model loaded from {self.model_folder.value}"

    # -- generation --------------------------------------------------------------------------
    def prompt_masks(self) -> list[np.ndarray]:
        """The mask prompts: a Labels layer, or automatic layouts of annotated object shapes."""
        from napari_unet.diffusion.auto_prompts import auto_prompts

        if self.prompt.value != AUTO:
            return [np.asarray(find_layer(self.viewer, self.prompt.value).data)]
        training_masks = [mask for _, mask in self.session.training_pairs()[0]]
        return auto_prompts(self.bundle, self.count.value, self.size.value, self.seed.value,
                            fallback_masks=training_masks, vary=self.vary.value)

    def generate(self) -> None:
        from napari.utils.notifications import show_warning

        from napari_unet.diffusion.config import SampleConfig
        from napari_unet.errors import UserError

        if self.bundle is None:
            show_warning("no diffusion model yet: train or load one")
            return
        if self.worker is not None:
            return
        try:
            masks = self.prompt_masks()
        except UserError as exc:
            show_warning(str(exc))
            return
        tags = [t.strip() for t in self.tags.value.split(",") if t.strip()]
        cfg = SampleConfig(steps=self.steps.value, guidance=self.guidance.value, seed=self.seed.value,
                           threads=gui_threads())
        bundle = self.bundle
        origins = [self._origin(cfg, tags, k) for k in range(len(masks))]

        def events():
            from napari_unet.diffusion.sample import synthesize

            images = yield from synthesize(bundle, masks, cfg, tags=[tags] * len(masks))
            return list(zip(images, masks, origins))

        self._running(True)
        self.worker = run_in_thread(events, self._on_event, self._on_generated, self._on_error, self._on_finished)

    def _origin(self, cfg: Any, tags: list[str], index: int) -> dict:
        """How pair ``index`` of a generation is made (kept with it in the project file)."""
        training = self.bundle.meta.get("training", {}) if self.bundle is not None else {}
        prompt = {"prompt": AUTO, "layout_seed": self.seed.value + index} if self.prompt.value == AUTO \
            else {"prompt": f"labels layer {self.prompt.value!r}"}
        return {**prompt, "tags": tags, "seed": cfg.seed + index, "guidance": cfg.guidance, "steps": cfg.steps,
                "diffusion_training_steps": training.get("steps")}

    def accept(self) -> None:
        """Add the selected generated pairs to the synthetic part of the training set (saved at once)."""
        from napari.utils.notifications import show_info

        chosen = [i for i in sorted(self.review.value) if i not in self._accepted]  # no pair twice
        for index in chosen:
            self.session.add_synthetic(*self.generated[index], self.generated_origins[index])
        self._accepted.update(chosen)
        show_info(f"{len(chosen)} synthetic pair(s) accepted; {len(self.session.synthetic)} in the training set")

    # -- worker callbacks --------------------------------------------------------------------
    def _running(self, running: bool) -> None:
        self.train_button.enabled = self.generate_button.enabled = not running
        self.stop_button.enabled = running
        self.progress.value = 0

    @unless_closed
    def _on_event(self, event: Any) -> None:
        from napari_unet.events import LossReport, Progress

        if isinstance(event, Progress):
            self.progress.value = progress_permille(event)
        elif isinstance(event, LossReport):
            self.status.value = f"step {event.step} · loss {event.loss:.4f}"

    @unless_closed
    def _on_trained(self, bundle: Any) -> None:
        self.bundle = bundle
        steps = bundle.meta.get("training", {}).get("steps", "?")
        self.status.value = f"diffusion model trained ({steps} steps)"

    @unless_closed
    def _on_generated(self, results: list) -> None:
        pairs = [(image, mask) for image, mask, _ in results]
        self.generated, self.generated_origins = pairs, [origin for _, _, origin in results]
        self._accepted = set()
        shape = max(p[0].shape[0] for p in pairs), max(p[0].shape[1] for p in pairs)
        images = np.zeros((len(pairs), *shape), np.uint8)
        labels = np.zeros((len(pairs), *shape), np.uint32)
        for k, (image, mask) in enumerate(pairs):
            images[k, : image.shape[0], : image.shape[1]] = image if image.ndim == 2 else image.mean(axis=-1)
            labels[k, : mask.shape[0], : mask.shape[1]] = mask
        for name in (IMAGES, LABELS):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.viewer.add_image(images, name=IMAGES)
        self.viewer.add_labels(labels, name=LABELS, opacity=0.4)
        self.review.reset_choices()
        self.status.value = f"generated {len(pairs)} pair(s): review them (slider), select, accept"
        self.progress.value = 1000

    _on_error = show_failure

    @unless_closed
    def _on_finished(self) -> None:
        self.worker = None
        self._trainer = None
        self._running(False)
        self.progress.value = 1000
