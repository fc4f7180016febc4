"""One name per setting: the CLI flag, the config field (model.json key) and the widget label of
each shared setting come from ``config.SETTINGS``, and so do its choices and default."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from napari_unet.cli import build_parser
from napari_unet.config import (ANNOTATE_MIN_SIZE, CLI_CHECKPOINT_EVERY, DEVICES, LIVE_UNCERTAINTY_MC,
                                MC_SAMPLES_WHEN_ASKED, SETTINGS, SYNTHETIC_RATIO, TASK_LABELS, USER_TASKS,
                                PredictConfig, TrainConfig, from_dict, setting_of)
from napari_unet.workflows.batch_file import BatchConfig
from napari_unet.workflows.train_request import TrainRequest


def actions(parser: argparse.ArgumentParser, command: str, *sub: str) -> dict[str, argparse.Action]:
    """A sub-command's options by destination."""
    p = parser
    for name in (command, *sub):
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return {a.dest: a for a in p._actions}


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


# (command, config dataclass whose field the flag sets, the setting): flag = --name, dest = name
CLI_SETTINGS = [
    (("train",), TrainConfig, "task"), (("train",), TrainConfig, "sparse"), (("train",), TrainConfig, "device"),
    (("train",), TrainConfig, "synthetic_ratio"), (("train",), TrainConfig, "checkpoint_every"),
    (("predict",), PredictConfig, "device"), (("predict",), PredictConfig, "mc_samples"),
    (("predict",), PredictConfig, "min_size"), (("predict",), BatchConfig, "uncertainty"),
    (("predict",), PredictConfig, "diameter"),
    (("synth", "train"), None, "device"), (("synth", "generate"), None, "device"),
]


@pytest.mark.parametrize("command, cls, name", CLI_SETTINGS)
def test_a_cli_flag_is_its_setting(parser, command, cls, name):
    setting = SETTINGS[name]
    action = actions(parser, *command)[name]
    assert setting.flag == "--" + name.replace("_", "-") and action.option_strings[0] == setting.flag
    assert set(action.option_strings) == set(setting.flags)
    if setting.choices:
        assert set(setting.choices) <= set(action.choices)
    if cls is not None:
        assert name in {f.name for f in dataclasses.fields(cls)}


def test_cli_defaults_are_the_configs_or_a_named_difference(parser):
    train, predict = actions(parser, "train"), actions(parser, "predict")
    assert train["task"].default == TrainConfig.task and train["device"].default == TrainConfig.device
    assert train["sparse"].default is TrainConfig.sparse is False
    assert train["synthetic_ratio"].default == TrainRequest.synthetic_ratio == SYNTHETIC_RATIO
    # on purpose: the CLI saves its --out folder while it trains, a bare TrainConfig does not
    assert train["checkpoint_every"].default == CLI_CHECKPOINT_EVERY and TrainConfig.checkpoint_every is None
    assert predict["device"].default == PredictConfig.device and predict["min_size"].default == PredictConfig.min_size
    assert predict["diameter"].default == str(PredictConfig.diameter)
    # on purpose: --uncertainty is a switch, so its samples default above PredictConfig's 0 (no uncertainty)
    assert predict["mc_samples"].default == BatchConfig.mc_samples == MC_SAMPLES_WHEN_ASKED
    assert PredictConfig.mc_samples == 0 and predict["uncertainty"].default is BatchConfig.uncertainty is False
    assert list(train["device"].choices) == list(predict["device"].choices) == list(DEVICES)


def test_old_flags_still_parse(parser, tmp_path):
    """Older spellings stay: --task semantic (+ --sparse), --synthetic-share for --synthetic-ratio."""
    from napari_unet.cli import train_request

    base = ["train", "i", "m", "--out", str(tmp_path)]
    for flags, task in ((["--task", "semantic"], "classes"), (["--task", "semantic", "--sparse"], "sparse"),
                        (["--sparse"], "partial"), (["--task", "partial"], "partial"), (["--task", "classes"], "classes"),
                        (["--task", "sparse"], "sparse"), ([], "instances")):
        assert train_request(parser.parse_args(base + flags)).task == task
    old = parser.parse_args(base + ["--synthetic", "s", "--synthetic-share", "0.25"])
    new = parser.parse_args(base + ["--synthetic", "s", "--synthetic-ratio", "0.25"])
    assert train_request(old) == train_request(new) and train_request(new).synthetic_ratio == 0.25


def test_config_fields_carry_their_setting():
    for cls, names in ((TrainConfig, ("task", "sparse", "device", "synthetic_ratio", "checkpoint_every",
                                      "preview_mc_samples")),
                       (PredictConfig, ("device", "mc_samples", "min_size", "diameter")),
                       (BatchConfig, ("uncertainty", "mc_samples"))):
        for name in names:
            assert setting_of(cls, name) is SETTINGS[name]
    assert set(TASK_LABELS) == set(USER_TASKS) == set(SETTINGS["task"].choices)


def test_the_shipped_model_json_loads_with_the_same_names():
    """model.json keys are the config field names; a folder written before keeps loading as it did."""
    import napari_unet

    path = Path(napari_unet.__file__).parent / "pretrained" / "nuclei" / "model.json"
    stored = json.loads(path.read_text())
    config = stored.get("config", stored)
    cfg = from_dict(TrainConfig, config)
    for name in ("task", "sparse", "device", "synthetic_ratio", "checkpoint_every"):
        if name in config:
            value = config[name]
            assert getattr(cfg, name) == (tuple(value) if isinstance(value, list) else value)
    assert from_dict(TrainConfig, dataclasses.asdict(cfg)) == cfg


def test_widgets_use_the_setting_labels_choices_and_defaults(make_napari_viewer):
    from napari_unet.widgets.annotate import MODES, AnnotateWidget
    from napari_unet.widgets.export import ExportWidget
    from napari_unet.widgets.predict import PredictWidget
    from napari_unet.widgets.train import TASKS, TrainWidget

    viewer = make_napari_viewer()
    train = TrainWidget(viewer)
    assert train.task.label == SETTINGS["task"].label and TASKS[train.task.value] == TrainConfig.task
    assert {TASKS[c] for c in train.task.choices} == set(USER_TASKS)
    assert train.device.label == SETTINGS["device"].label and list(train.device.choices) == list(DEVICES)
    assert train.device.value == TrainConfig.device
    assert train.synthetic_ratio.label == SETTINGS["synthetic_ratio"].label
    assert train.synthetic_ratio.value == SYNTHETIC_RATIO
    # on purpose: the widget's live uncertainty layer starts on; TrainConfig (the CLI) has no previews
    assert train.preview_mc.label == SETTINGS["preview_mc_samples"].label and train.preview_mc.value == LIVE_UNCERTAINTY_MC

    predict = PredictWidget(viewer)
    assert predict.mc_samples.label == SETTINGS["mc_samples"].label and predict.mc_samples.value == MC_SAMPLES_WHEN_ASKED
    kind = SETTINGS["uncertainty_kind"]
    assert predict.uncertainty_kind.label == kind.label and tuple(predict.uncertainty_kind.choices) == kind.choices
    assert predict.diameter.label == SETTINGS["diameter"].label and predict.diameter.value == str(PredictConfig.diameter)

    annotate = AnnotateWidget(viewer)
    assert annotate.min_size.label == SETTINGS["min_size"].label and annotate.min_size.value == ANNOTATE_MIN_SIZE
    assert all(TASK_LABELS[mode] == label for label, mode in MODES.items())
    # its task control: the task setting's label, a choice of its tasks (dense classes are not painted)
    assert annotate.mode.label == SETTINGS["task"].label and set(MODES.values()) < set(SETTINGS["task"].choices)
    assert MODES[annotate.mode.value] == "partial"  # painting a few objects must not teach the rest as background

    export = ExportWidget(viewer)
    assert export.uncertainty.value is BatchConfig.uncertainty
    assert export.diameter.label == SETTINGS["diameter"].label and export.diameter.value == str(PredictConfig.diameter)


def test_the_predict_widget_refuses_a_bad_diameter_in_one_line(make_napari_viewer, monkeypatch):
    """A negative diameter: one notification, no prediction started; a number is passed on."""
    from napari_unet.widgets import predict as predict_module
    from napari_unet.widgets.predict import PredictWidget

    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    widget = PredictWidget(viewer)
    widget.image.value, widget.diameter.value = "img", "-5"
    widget.start()
    assert widget.worker is None and len(warnings) == 1 and "\n" not in warnings[0] and "positive" in warnings[0]
    widget.diameter.value = "24"
    assert widget._predict_config().diameter == 24.0 and predict_module.PredictConfig is PredictConfig


def test_the_batch_export_widget_refuses_a_bad_diameter_and_passes_a_given_one(make_napari_viewer, monkeypatch,
                                                                               tmp_path):
    """The same field in the Batch export widget: a bad value is one notification and no run; a
    number reaches the batch's ``PredictConfig``."""
    from napari_unet.files.io import write_image
    from napari_unet.widgets import export as export_module
    from napari_unet.widgets.export import ExportWidget

    warnings, runs = [], []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    monkeypatch.setattr(export_module, "run_in_thread", lambda events, *handlers: runs.append(events))
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.tif", np.zeros((32, 32), np.float32))
    widget = ExportWidget(make_napari_viewer())
    widget.model.value, widget.inputs.value, widget.output.value = "pretrained:nuclei", tmp_path / "in", tmp_path / "out"
    widget.diameter.value = "off-ish"
    widget.start()
    assert widget.worker is None and not runs and len(warnings) == 1 and "\n" not in warnings[0]
    seen = []
    monkeypatch.setattr("napari_unet.workflows.batch.predict_batch",
                        lambda model, inputs, out, pcfg, bcfg, preloaded=None: seen.append(pcfg) or iter(()))
    widget.diameter.value = "24"
    widget.start()
    assert len(runs) == 1
    for _ in runs[0]():
        pass
    assert seen[0].diameter == 24.0
