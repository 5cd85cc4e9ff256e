"""``train sweep``: seed 002's sweep file, grid/random/Bayesian search, leaderboards, stop and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from helpers_train import QUICK, run_sweep, train_cli, write_text

from pipeline import MuzarrError
from training.experiments.sweep import load_sweep, parse_sweep
from training.run.config import TrainConfig

# Seed 002's sweep.yaml as printed in the report (its comments included), plus its scheduler slide.
SEED002_SWEEP = """\
# sweep.yaml
parameters:
  epochs:
    value: 30

  batch_size:
    values: [16, 32, 64, 128]

  learning_rate:
    values: [1e-4, 3e-4, 5e-4, 7e-4, 1e-3]

  hidden_dim:
    values: [64, 128, 256]

  dropout:
    values: [0.2, 0.3, 0.4, 0.5]

  num_layers: #en el RNN
    values: [1, 2]

  reduce_lr_factor: #factor que redueix el LR en el ReduceOnPlateau
    values: [0.5, 0.7]
"""

def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="muzarr-sweep", storage=f"sqlite:///{out / 'optuna.db'}")


# -- the sweep file ------------------------------------------------------------------------
def test_seed002s_sweep_file_sets_the_crnn_settings():
    spec = parse_sweep(yaml.safe_load(SEED002_SWEEP), model="cnn2d_gru")
    targets = {p.name: p.target for p in spec.parameters}
    assert targets == {
        "epochs": "epochs", "batch_size": "batch_size", "learning_rate": "lr", "hidden_dim": "model.hidden_size",
        "dropout": "model.dropout", "num_layers": "model.rnn_layers", "reduce_lr_factor": "scheduler.factor",
    }  # fmt: skip
    lr = next(p for p in spec.parameters if p.name == "learning_rate")
    assert lr.values == (1e-4, 3e-4, 5e-4, 7e-4, 1e-3)  # YAML reads 1e-4 as a string: parsed here
    assert len(spec.grid()) == 4 * 5 * 3 * 4 * 2 * 2
    config, values = spec.apply(
        TrainConfig(store="s.zarr", model="cnn2d_gru"),
        {"batch_size": 64, "learning_rate": 5e-4, "hidden_dim": 256, "dropout": 0.4, "num_layers": 1, "reduce_lr_factor": 0.7},
    )
    assert (config.epochs, config.batch_size, config.lr, config.scheduler) == (30, 64, 5e-4, "plateau")
    assert config.scheduler_opts == {"factor": 0.7}
    assert config.model_opts == {"hidden_size": 256, "dropout": 0.4, "rnn_layers": 1}
    assert values["epochs"] == 30 and values["hidden_dim"] == 256


def test_seed003s_random_search_names_fit_the_tabular_mlp():
    spec = parse_sweep(
        {"method": "random", "metric": {"name": "val_acc", "goal": "maximize"},
         "parameters": {"hidden_size": {"values": [64, 256, 512]}, "dropout_rate": {"min": 0.0, "max": 0.5},
                        "lr": {"min": 1e-4, "max": 1e-2, "distribution": "log_uniform_values"},
                        "weight_decay": {"min": 1e-6, "max": 1e-3, "distribution": "log_uniform"},
                        "batch_size": {"values": [16, 32, 64, 128]}, "epochs": {"values": [15, 20, 30]}}},
        model="mlp_tabular",
    )  # fmt: skip
    assert spec.metric == "accuracy" and spec.goal == "maximize"
    by_name = {p.name: p for p in spec.parameters}
    assert by_name["hidden_size"].values == ((64,), (256,), (512,))  # one hidden layer of that width
    assert by_name["lr"].log and not by_name["dropout_rate"].log and by_name["dropout_rate"].target == "model.dropout"
    with pytest.raises(MuzarrError, match="grid search needs lists of values, but dropout_rate, lr, weight_decay"):
        spec.grid()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"parameters": {"dropout": {"values": [0.1]}}}, "unknown parameter 'dropout' for model 'mlp'; valid parameters: batch_size"),
        ({"parameters": {"lr": {"values": []}}}, "values must be a non-empty list"),
        ({"parameters": {"lr": {"min": 0, "max": 1, "distribution": "log_uniform"}}}, "needs min > 0"),
        ({"parameters": {"lr": {"min": 1, "max": 0.1}}}, "must be below max"),
        ({"parameters": {"lr": {"min": 1e-4, "max": 1e-2, "distribution": "q_log_uniform"}}}, "distribution 'q_log_uniform'"),
        ({"parameters": {"batch_size": {"values": [16, 2.5]}}}, "values=2.5 must be an integer"),
        ({"parameters": {"optimizer": {"min": 1, "max": 2}}}, "needs a numeric setting"),
        ({"parameters": {"lr": {"value": 0.1, "values": [0.1]}}}, "exactly one of value, values or min/max"),
        ({"parameters": {"lr": {"value": 0.1}, "learning_rate": {"value": 0.1}}}, "keep one"),
        ({"method": "hyperband", "parameters": {"lr": {"value": 0.1}}}, "method 'hyperband'"),
        ({"parameters": {"lr": {"value": 0.1}}, "metric": {"name": "acc", "goal": "up"}}, "goal 'up'"),
        ({"parameters": {"lr": {"value": 0.1}}, "early_stop": 3}, "unknown key(s) ['early_stop']"),
        ({"lr": {"values": [0.1]}}, "non-empty 'parameters:' section"),
    ],
)
def test_bad_sweep_files_are_one_clear_error(data, message):
    with pytest.raises(MuzarrError) as error:
        parse_sweep(data, model="mlp")
    assert message in str(error.value)


def test_unreadable_sweep_files(tmp_path):
    with pytest.raises(MuzarrError, match="no such file"):
        load_sweep(tmp_path / "nope.yaml", model="mlp")
    with pytest.raises(MuzarrError, match="is not valid YAML"):
        load_sweep(write_text(tmp_path / "bad.yaml", "parameters: {lr: [1, 2"), model="mlp")



@pytest.mark.parametrize(
    "text, message",
    [
        ("parameters:\n  lr: {min: 0.001, max: .inf}\n", "parameter 'lr': max=inf must be a finite number"),
        ("parameters:\n  lr: {values: [0.001, .nan]}\n", "parameter 'lr': values=nan must be a finite number"),
        ("parameters:\n  weight_decay: {value: -.inf}\n  lr: {values: [0.1, 0.2]}\n",
         "parameter 'weight_decay': value=-inf must be a finite number"),
        ("parameters:\n  hidden: {min: 8, max: .inf}\n", "parameter 'hidden': max=inf must be a finite number"),
        ("parameters:\n  hidden: {values: [8, .inf]}\n", "parameter 'hidden': values=inf must be an integer"),
    ],
)
def test_non_finite_numbers_in_a_sweep_file_are_one_error_naming_file_and_key(tmp_path, text, message):
    """Issue #21 item 8: `max: .inf` ended in numpy's OverflowError, `values: [.nan]` in a StopIteration."""
    path = write_text(tmp_path / "sweep.yaml", text)
    with pytest.raises(MuzarrError, match=f"^{re.escape(str(path))}: {re.escape(message)}$"):
        load_sweep(path, model="mlp")


def test_a_sweep_file_that_is_not_utf8_is_one_line(small_store, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(b"parameters:\n  lr: {values: [0.1]}  # \xff\xfe\n")
    result = run_sweep(small_store, path, tmp_path / "out")
    assert (result.exit_code, result.stderr) == (
        2, f"error: --config {path}: not UTF-8 text (bad byte at offset 37): save the sweep file as UTF-8\n")


def test_a_trial_whose_options_no_model_can_have_fails_in_one_line(small_store, tmp_path):
    """Issue #21 item 8: hidden=-3 failed its trial with torch's RuntimeError (negative dimension)."""
    config = write_text(tmp_path / "s.yaml", "parameters:\n  hidden: {values: [-3, 8]}\n")
    out = tmp_path / "out"
    result = run_sweep(small_store, config, out, "--trials", "2", "--method", "grid")
    assert result.exit_code == 0, result.stderr
    reason = "MuzarrError: model 'mlp': hidden=-3 must be a positive integer"
    assert f"trial 0 (1/2)  hidden=-3  failed: {reason}" in result.output.splitlines()
    assert (out / "trial-000" / "error.txt").read_text() == f"{reason}\n"
    assert list(pd.read_csv(out / "leaderboard.csv").sort_values("trial")["state"]) == ["fail", "complete"]


# -- sweeps on the demo store ----------------------------------------------------------------
def test_random_sweep_of_four_trials_writes_its_leaderboard(small_store, tmp_path):
    out = tmp_path / "sweep"
    result = run_sweep(small_store, write_text(tmp_path / "sweep.yaml", QUICK), out, "--trials", "4", "--method", "random")
    assert result.exit_code == 0, result.output + result.stderr
    assert sum(line.startswith("trial ") for line in result.output.splitlines()) == 4
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 4 and list(board["rank"]) == [1, 2, 3, 4] and (board["state"] == "complete").all()
    assert board["valid_roc_auc"].is_monotonic_decreasing
    for _, row in board.iterrows():
        run_dir = out / f"trial-{row['trial']:03d}"
        assert Path(row["run_dir"]) == run_dir
        metrics = json.loads((run_dir / "metrics.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())["train"]
        assert row["valid_roc_auc"] == pytest.approx(metrics["valid"]["roc_auc"])
        assert row["test_roc_auc"] == pytest.approx(metrics["test"]["roc_auc"])
        assert (config["lr"], config["model_opts"]["hidden"], config["batch_size"], config["epochs"]) == (
            row["learning_rate"], row["hidden_dim"], row["batch_size"], 1
        )
    markdown = (out / "leaderboard.md").read_text().splitlines()
    assert markdown[0] == ("| rank | trial | learning_rate | hidden_dim | batch_size | valid_roc_auc | test_roc_auc | "
                           "test_pr_auc | best_epoch | train_seconds | co2_kg |")  # fmt: skip
    assert len(markdown) == 2 + 4 and markdown[2].startswith(f"| 1 | {board['trial'][0]} | ")
    assert _study(out).best_trial.number == board["trial"][0]

    # Running it again with more trials keeps the four (not rerun) and asks for two more.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trial-*/metrics.json")}
    params = {t.number: t.params for t in _study(out).trials}
    again = run_sweep(small_store, tmp_path / "sweep.yaml", out, "--trials", "6", "--method", "random")
    assert again.exit_code == 0, again.output + again.stderr
    assert [line.split()[1] for line in again.output.splitlines() if line.startswith("trial ")] == ["4", "5"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {t.number: t.params for t in _study(out).trials if t.number < 4} == params
    assert len(pd.read_csv(out / "leaderboard.csv")) == 6


def test_grid_runs_the_combinations_in_file_order_capped_by_trials(small_store, tmp_path):
    config = write_text(tmp_path / "grid.yaml", "method: grid\nparameters:\n  lr: {values: [0.01, 0.001]}\n"
                                            "  hidden: {values: [16, 32]}\n  optimizer: {value: adam}\n")  # fmt: skip
    out = tmp_path / "grid"
    result = run_sweep(small_store, config, out, "--trials", "3")
    assert result.exit_code == 0, result.output + result.stderr
    trials = sorted(_study(out).trials, key=lambda t: t.number)
    assert [(t.params["lr"], t.params["hidden"]) for t in trials] == [(0.01, 16), (0.01, 32), (0.001, 16)]
    more = run_sweep(small_store, config, out, "--trials", "10")
    assert "the grid has 4 combinations" in more.output
    assert len(pd.read_csv(out / "leaderboard.csv")) == 4


def test_bayesian_sweeps_are_reproducible(small_store, tmp_path):
    config = write_text(tmp_path / "bayes.yaml", "method: bayes\nparameters:\n"
                    "  lr: {min: 1.0e-4, max: 1.0e-1, distribution: log_uniform_values}\n"
                    "  weight_decay: {min: 1.0e-6, max: 1.0e-3, distribution: log_uniform_values}\n")  # fmt: skip
    first = run_sweep(small_store, config, tmp_path / "a", "--trials", "3", "--seed", "3")
    second = run_sweep(small_store, config, tmp_path / "b", "--trials", "3", "--seed", "3")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + first.stderr
    a, b = _study(tmp_path / "a"), _study(tmp_path / "b")
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert all(1e-4 <= t.params["lr"] <= 1e-1 for t in a.trials)
    assert [t.value for t in a.trials] == pytest.approx([t.value for t in b.trials])
    board = pd.read_csv(tmp_path / "a" / "leaderboard.csv")
    assert board["valid_roc_auc"].iloc[0] == pytest.approx(a.best_value)


def test_an_interrupted_trial_is_continued_not_replaced(small_store, tmp_path):
    config = write_text(tmp_path / "s.yaml", "method: grid\nparameters:\n  lr: {values: [0.003, 0.01]}\n")
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "training.cli", "sweep", "--store", small_store, "--model", "cnn", "--config",
               str(config), "--out", str(out), "--epochs", "3", "--no-emissions", "--trials", "2"]  # fmt: skip
    victim = subprocess.Popen(command + ["--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    history = out / "trial-001" / "history.csv"
    deadline = time.time() + 600
    while time.time() < deadline and not (history.exists() and len(pd.read_csv(history)) >= 1):
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    done = len(pd.read_csv(history))
    assert done < 3, f"the kill landed after {done} epochs"
    first = (out / "trial-000" / "metrics.json").stat().st_mtime_ns
    assert [t.state.name for t in sorted(_study(out).trials, key=lambda t: t.number)] == ["COMPLETE", "RUNNING"]

    result = train_cli("sweep", "--store", small_store, "--model", "cnn", "--config", str(config), "--out", str(out),
                        "--epochs", "3", "--no-emissions", "--trials", "2", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    assert "trial 1: interrupted earlier, continuing it" in result.output
    trials = sorted(_study(out).trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"] and trials[1].params == {"lr": 0.01}
    assert list(pd.read_csv(history)["epoch"]) == [1, 2, 3]
    assert (out / "trial-000" / "metrics.json").stat().st_mtime_ns == first
    assert len(pd.read_csv(out / "leaderboard.csv")) == 2


def test_command_line_mistakes_exit_2_with_one_line(small_store, tmp_path):
    config = write_text(tmp_path / "s.yaml", QUICK)
    bad = run_sweep(small_store, write_text(tmp_path / "bad.yaml", "parameters:\n  nope: {values: [1]}\n"), tmp_path / "x")
    assert bad.exit_code == 2 and "unknown parameter 'nope' for model 'mlp'; valid parameters:" in bad.stderr
    assert "learning_rate" in bad.stderr and "hidden_dim" in bad.stderr
    grid = run_sweep(small_store, write_text(tmp_path / "r.yaml", "parameters:\n  lr: {min: 0.001, max: 0.1}\n"), tmp_path / "y",
                  "--method", "grid")  # fmt: skip
    assert grid.exit_code == 2 and "grid search needs lists of values" in grid.stderr
    optimizer = run_sweep(small_store, write_text(tmp_path / "o.yaml", "parameters:\n  optimizer: {values: [adam, adamw]}\n"),
                       tmp_path / "z")  # fmt: skip
    assert optimizer.exit_code == 2 and "'adamw' must be one of adam, sgd, rmsprop" in optimizer.stderr
    fixed = run_sweep(small_store, write_text(tmp_path / "f.yaml", "parameters:\n  epochs: {values: [1, 2]}\n"), tmp_path / "w")
    assert fixed.exit_code == 2 and "searches nothing" in fixed.stderr
    assert run_sweep(small_store, config, tmp_path / "ok", "--trials", "1").exit_code == 0
    other = run_sweep(small_store, config, tmp_path / "ok", "--trials", "1", "--seed", "5")
    assert other.exit_code == 2 and "holds another sweep (its base differ)" in other.stderr


def test_failed_trials_are_listed_and_a_sweep_that_never_trains_is_an_error(small_store, tmp_path):
    # seven 2x2 pools shrink a 64-band log-mel to nothing: the model refuses to build
    config = write_text(tmp_path / "deep.yaml", "parameters:\n  channels: {values: [[4, 4, 4, 4, 4, 4, 4], [4, 4, 4, 4, 4, 4, 4, 4]]}\n")
    out = tmp_path / "deep"
    result = train_cli("sweep", "--store", small_store, "--model", "cnn", "--config", str(config), "--out", str(out),
                        "--trials", "2", "--method", "grid", "--epochs", "1", "--no-emissions")  # fmt: skip
    assert result.exit_code == 2
    assert f"every trial of the sweep in {out} failed; the first: MuzarrError: " in result.stderr
    assert "too small" in result.stderr and result.output.count("failed: ") == 2
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["state"]) == ["fail", "fail"] and board["valid_roc_auc"].isna().all()
    assert "| 1 | 0 (failed) |" in (out / "leaderboard.md").read_text()


@pytest.mark.parametrize("command", ["sweep", "compare", "predict", "embed"])
def test_every_new_command_has_help_with_an_example(command):
    result = train_cli(command, "--help")
    assert result.exit_code == 0 and "Example" in result.output and f"train {command} " in result.output
