"""TensorBoard event files of every run, read back: the per-epoch curves equal ``history.csv``, the
per-step loss, the hparams and final metrics, resumed runs, sweeps, and runs without TensorBoard
(issue: training past one process, item 4)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers_train import QUICK, run_sweep, write_text
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import api_pb2, metadata

from pipeline import MuzarrError, open_store
from training.cli import main
from training.run.config import TrainConfig

BATCH = 8
#: history.csv columns that are not curves (a name, an event)
NOT_CURVES = ("epoch", "optimizer", "reloaded_best_epoch")
TAGS = {"train_loss": "train/loss", "train_examples": "train/examples", "train_seconds": "train/seconds", "samples_per_s": "train/samples_per_s",
        "data_wait_fraction": "train/data_wait_fraction", "valid_loss": "valid/loss", "valid_roc_auc": "valid/roc_auc",
        "valid_pr_auc": "valid/pr_auc", "phase": "phase", "lr": "lr"}  # fmt: skip


def _train(*args: str):
    result = CliRunner().invoke(main, [*args, "--no-emissions", "--quiet", "--device", "cpu"])
    assert "Traceback" not in result.output, result.output
    return result


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _last_per_step(events: EventAccumulator, tag: str) -> dict[int, float]:
    """A tag's values by step, the newest where a step was logged again (as TensorBoard shows it)."""
    return {e.step: e.value for e in events.Scalars(tag)}


def _steps_per_epoch(store: str) -> int:
    # the demo store's one split scheme; the train stream cuts the epoch's clips into full batches and a last one
    return math.ceil(len(open_store(store).split("random", "train")) / BATCH)


def _assert_curves_are_the_history(events: EventAccumulator, run: Path) -> None:
    history = pd.read_csv(run / "history.csv")
    curves = [c for c in history.columns if c not in NOT_CURVES]
    assert sorted(TAGS) == sorted(curves)
    for column, tag in TAGS.items():
        expected = dict(zip(history["epoch"], history[column].astype(float)))
        assert _last_per_step(events, tag) == pytest.approx(expected, rel=1e-6), tag  # float32 in the events


def _hparams(events: EventAccumulator) -> tuple[dict, int]:
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    assert sorted(content) == [metadata.SESSION_END_INFO_TAG, metadata.SESSION_START_INFO_TAG]  # no experiment
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    values = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    return values, end.status


def test_a_run_writes_its_history_steps_settings_and_final_metrics(small_store, tmp_path):
    run = tmp_path / "run"
    result = _train("--store", small_store, "--model", "mlp", "--epochs", "2", "--batch-size", str(BATCH),
                    "--lr", "3e-3", "--model-opt", "hidden=32", "--tb-every", "3", "--out", str(run))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"TensorBoard: tensorboard --logdir {run}" in result.output
    files = sorted(p.name for p in run.glob("events.out.tfevents.*"))
    assert len(files) == 1 and not [p for p in run.iterdir() if p.is_dir()]  # no hparams sub-run
    events = _events(run)
    _assert_curves_are_the_history(events, run)

    steps = 2 * _steps_per_epoch(small_store)
    assert torch.load(run / "last.pt", weights_only=True)["steps"] == steps
    logged = events.Scalars("train/loss_step")
    assert [e.step for e in logged] == list(range(0, steps, 3)) and len(logged) == math.ceil(steps / 3)
    assert all(0 < e.value < 10 for e in logged)

    settings, status = _hparams(events)
    protocol = json.loads((run / "config.json").read_text())["protocol"]
    assert status == api_pb2.STATUS_SUCCESS
    assert {k: settings[k] for k in ("model", "lr", "batch_size", "epochs", "optimizer", "seed", "model_opts.hidden",
                                     "schedule.name", "split_scheme", "store")} == {
        "model": "mlp", "lr": 3e-3, "batch_size": BATCH, "epochs": 2, "optimizer": protocol["optimizer"], "seed": 0,
        "model_opts.hidden": 32, "schedule.name": protocol["schedule"]["name"], "split_scheme": "random",
        "store": small_store,
    }  # fmt: skip
    assert "early_stopping" not in settings  # None: not a value the hparams plugin takes

    metrics = json.loads((run / "metrics.json").read_text())
    final = {tag: _last_per_step(events, tag) for tag in events.Tags()["scalars"] if tag.startswith("final/")}
    expected = {f"final/{part}_{k}": v for part in ("valid", "test") for k, v in metrics[part].items()
                if isinstance(v, (int, float))}  # fmt: skip
    expected |= {f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}  # best_epoch, parameters...
    assert {"final/valid_roc_auc", "final/test_roc_auc", "final/test_pr_auc", "final/best_epoch", "final/epochs_run",
            "final/parameters", "final/train_seconds"} <= set(expected)  # fmt: skip
    assert final == {tag: pytest.approx({2: value}, rel=1e-6) for tag, value in expected.items()}


def test_a_resumed_run_reads_back_as_its_history(small_store, tmp_path):
    run, saved = tmp_path / "run", tmp_path / "after-epoch-1"
    first = _train("--store", small_store, "--model", "mlp", "--epochs", "1", "--batch-size", str(BATCH),
                   "--tb-every", "1", "--out", str(run))  # fmt: skip
    assert first.exit_code == 0, first.output
    saved.mkdir()
    for name in ("last.pt", "history.csv"):
        shutil.copy(run / name, saved / name)

    def continue_to_two_epochs():
        config = json.loads((run / "config.json").read_text())
        config["train"]["epochs"] = config["protocol"]["epochs"] = 2  # as if killed after epoch 1
        (run / "config.json").write_text(json.dumps(config))
        (run / "metrics.json").unlink()
        resumed = _train("--resume", str(run))
        assert resumed.exit_code == 0, resumed.output

    continue_to_two_epochs()
    # Killed after epoch 2 was logged but before it was saved: the state on disk is epoch 1's again.
    for name in ("last.pt", "history.csv"):
        shutil.copy(saved / name, run / name)
    continue_to_two_epochs()

    assert len(list(run.glob("events.out.tfevents.*"))) == 3  # one per process
    events = _events(run)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 2]  # epoch 2 logged twice, the newest shown
    _assert_curves_are_the_history(events, run)
    per_epoch = _steps_per_epoch(small_store)
    assert torch.load(run / "last.pt", weights_only=True)["steps"] == 2 * per_epoch
    # the re-run epoch continues the step count where the saved epoch 1 left it
    assert sorted(_last_per_step(events, "train/loss_step")) == list(range(2 * per_epoch))
    assert len(events.Scalars("train/loss_step")) == 3 * per_epoch


def test_every_sweep_trial_is_one_tensorboard_run(small_store, tmp_path):
    out = tmp_path / "sweep"
    result = run_sweep(small_store, write_text(tmp_path / "sweep.yaml", QUICK), out, "--trials", "2", "--method", "random")
    assert result.exit_code == 0, result.output
    trials = sorted(p.name for p in out.glob("trial-*"))
    assert trials == ["trial-000", "trial-001"]
    for trial in trials:
        assert len(list((out / trial).glob("events.out.tfevents.*"))) == 1
    runs = EventMultiplexer().AddRunsFromDirectory(str(out)).Reload().Runs()
    assert sorted(runs) == trials  # `tensorboard --logdir OUT` shows the trials side by side
    for trial in trials:
        settings, _ = _hparams(_events(out / trial))
        protocol = json.loads((out / trial / "config.json").read_text())["protocol"]
        assert (settings["lr"], settings["batch_size"]) == (protocol["lr"], protocol["batch_size"])


def test_no_tensorboard_tb_every_0_and_overwrite(small_store, tmp_path):
    common = ["--store", small_store, "--model", "mlp", "--epochs", "1", "--batch-size", str(BATCH)]
    off = _train(*common, "--no-tensorboard", "--out", str(tmp_path / "off"))
    assert off.exit_code == 0, off.output
    assert not list((tmp_path / "off").glob("events.out.tfevents.*")) and "TensorBoard" not in off.output
    epochs_only = _train(*common, "--tb-every", "0", "--out", str(tmp_path / "epochs"))
    assert epochs_only.exit_code == 0, epochs_only.output
    tags = _events(tmp_path / "epochs").Tags()["scalars"]
    assert "train/loss" in tags and "train/loss_step" not in tags
    replaced = _train(*common, "--lr", "3e-3", "--overwrite", "--out", str(tmp_path / "epochs"))
    assert replaced.exit_code == 0, replaced.output
    assert len(list((tmp_path / "epochs").glob("events.out.tfevents.*"))) == 1  # the old run's curves are gone
    _assert_curves_are_the_history(_events(tmp_path / "epochs"), tmp_path / "epochs")
    bad = _train(*common, "--tb-every", "-1", "--out", str(tmp_path / "bad"))
    assert bad.exit_code == 2 and "Invalid value for '--tb-every': -1 is not in the range x>=0." in bad.output
    with pytest.raises(MuzarrError, match=r"^tb_every=-1 must be 0 \(no per-step loss\) or a number of optimizer steps$"):
        TrainConfig(store=small_store, model="mlp", tb_every=-1)  # a recipe row's train: settings


def test_without_tensorboard_installed_a_run_is_as_before_with_one_note(small_store, tmp_path):
    # a `tensorboard` package that fails to import, first on the path: as if the extra were not installed
    shadow = tmp_path / "shadow" / "tensorboard"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "training.cli", "--store", small_store, "--model", "mlp", "--epochs", "1", "--batch-size",
         str(BATCH), "--no-emissions", "--device", "cpu", "--out", str(run)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    note = ("note: tensorboard is not installed, so this run writes no TensorBoard events "
            "(pip install 'muzarr[tensorboard]'; --no-tensorboard skips this note)")  # fmt: skip
    assert notes == [note]
    assert (run / "metrics.json").exists() and not list(run.glob("events.out.tfevents.*"))
    assert len(pd.read_csv(run / "history.csv")) == 1 and "TensorBoard:" not in result.stdout
