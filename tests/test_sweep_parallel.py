"""``train sweep --parallel K`` / ``--scheduler``: trials on Dask workers, the study in ``--storage``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

SWEEP = """\
parameters:
  lr: {values: [0.003, 0.01, 0.03]}
  channels: {values: [[8, 8], [8, 16], [16, 16]]}
"""
ROOT = Path(__file__).resolve().parents[1]


def _sweep(store: str, out: Path, *args: str, config: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "training.cli", "sweep", "--store", store, "--model", "cnn", "--config", str(config),
               "--out", str(out), "--epochs", "1", "--no-emissions", "--device", "cpu", *args]  # fmt: skip
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=_env())


def _refused(store: str, out: Path, *args: str, config: Path):
    """A command refused before any trial trains, run in this process (no interpreter to start)."""
    from click.testing import CliRunner

    from training.cli import main

    return CliRunner().invoke(main, ["sweep", "--store", store, "--model", "cnn", "--config", str(config), "--out",
                                     str(out), "--epochs", "1", "--no-emissions", "--device", "cpu", *args])  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _config(tmp_path: Path, text: str = SWEEP) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def _trial_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.match(r"trial \d+ \(", line)]


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


def _sqlite(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="muzarr-sweep", storage=f"sqlite:///{out / 'optuna.db'}")


def test_a_random_sweep_ranks_the_same_with_1_or_2_trials_at_once(small_store, tmp_path):
    config = _config(tmp_path)
    # --threads 1 for both: a conv layer's CPU sums differ in the last bits with torch's thread count
    one = _sweep(small_store, tmp_path / "one", "--trials", "4", "--method", "random", "--threads", "1", config=config)
    two = _sweep(small_store, tmp_path / "two", "--trials", "4", "--method", "random", "--threads", "1",
                 "--parallel", "2", config=config)  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "trials run on an embedded Dask cluster, 2 at a time (2 workers)" in two.stdout
    lines = _trial_lines(two.stdout)
    assert len(lines) == 4 and {line.rsplit(" ", 1)[1] for line in lines} == {"0", "1"}  # "... on worker 0|1"
    assert [line.endswith(("on worker 0", "on worker 1")) for line in lines] == [True] * 4
    assert not any("on worker" in line for line in _trial_lines(one.stdout))
    same = ["rank", "trial", "state", "lr", "channels", "valid_roc_auc", "valid_pr_auc", "test_roc_auc", "test_pr_auc",
            "best_epoch", "epochs_run", "parameters"]  # fmt: skip
    a, b = pd.read_csv(tmp_path / "one" / "leaderboard.csv"), pd.read_csv(tmp_path / "two" / "leaderboard.csv")
    pd.testing.assert_frame_equal(a[same], b[same])
    for number in range(4):
        metrics = [json.loads((tmp_path / o / f"trial-{number:03d}" / "metrics.json").read_text()) for o in ("one", "two")]
        assert metrics[0]["valid"] == metrics[1]["valid"] and metrics[0]["test"] == metrics[1]["test"]
    assert [t.params for t in _sqlite(tmp_path / "one").trials] == [t.params for t in _sqlite(tmp_path / "two").trials]


def test_a_bayes_sweep_of_2_at_once_keeps_every_trial_in_its_journal(small_store, tmp_path):
    config = _config(tmp_path, "parameters:\n  lr: {min: 1.0e-3, max: 1.0e-1, distribution: log_uniform_values}\n"
                               "  channels: {values: [[8, 8], [8, 16]]}\n")  # fmt: skip
    journal = tmp_path / "studies" / "sweeps.journal"
    journal.parent.mkdir()
    out = tmp_path / "tpe"
    args = ("--trials", "4", "--method", "bayes", "--parallel", "2", "--storage", f"journal:{journal}")
    result = _sweep(small_store, out, *args, config=config)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="muzarr-sweep-tpe", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3] and set(_states(study)) == {"COMPLETE"}
    assert not (out / "optuna.db").exists()
    assert len(pd.read_csv(out / "leaderboard.csv")) == 4 and len(_trial_lines(result.stdout)) == 4
    assert json.loads((out / "sweep.json").read_text())["storage"] == f"journal:{journal}"

    again = _sweep(small_store, out, *args, config=config)  # finished: nothing trains, no cluster starts
    assert again.returncode == 0, again.stderr
    assert _trial_lines(again.stdout) == [] and "Dask" not in again.stdout
    refused = f"error: {out} holds a sweep whose study is in another storage: resume it with --storage journal:{journal}, or pick another --out\n"  # fmt: skip
    for other in ((), ("--storage", f"sqlite:///{tmp_path / 'other.db'}")):
        moved = _refused(small_store, out, "--trials", "4", "--method", "bayes", *other, config=config)
        assert (moved.exit_code, moved.stderr) == (2, refused)
    namesake = _refused(small_store, tmp_path / "elsewhere" / "tpe", *args, config=config)
    assert (namesake.exit_code, namesake.stderr) == (2, (
        f"error: --storage journal:{journal} holds a study 'muzarr-sweep-tpe' already, of another sweep folder of that "
        "name: resume that sweep from its folder, or give this one another --out name\n"))  # fmt: skip
    assert not (tmp_path / "elsewhere" / "tpe" / "sweep.json").exists()
    assert len(optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(journal))))) == 1


def test_storage_mistakes_are_one_line(small_store, tmp_path):
    config = _config(tmp_path)
    plain = _refused(small_store, tmp_path / "a", "--storage", "x.db", config=config)
    assert (plain.exit_code, plain.stderr) == (2, (
        "error: --storage 'x.db': give an Optuna RDB URL (sqlite:///PATH, postgresql://USER@HOST/DB, mysql+pymysql://...) "
        "or journal:PATH (a journal file, e.g. on a shared filesystem)\n"))  # fmt: skip
    missing = tmp_path / "no" / "such" / "s.journal"
    absent = _refused(small_store, tmp_path / "b", "--storage", f"journal:{missing}", config=config)
    assert absent.exit_code == 2
    assert absent.stderr.startswith(f"error: --storage journal:{missing}: cannot open the Optuna study there: ")
    assert len(absent.stderr.splitlines()) == 1


def test_a_scheduler_that_is_no_address_is_one_line_before_any_trial(small_store, tmp_path):
    """Issue #21 item 8: Dask's own parse ended in a traceback, after the sweep had asked for a trial."""
    refused = _refused(small_store, tmp_path / "s", "--scheduler", "garbage", config=_config(tmp_path))
    assert (refused.exit_code, refused.stderr) == (
        2, "error: --scheduler 'garbage' is not a Dask scheduler address like tcp://host:8786\n")
    assert not (tmp_path / "s").exists()


def _start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout="60s") as client:
        deadline = time.time() + 120
        while len(client.scheduler_info(n_workers=-1)["workers"]) != n:
            assert time.time() < deadline, f"the scheduler never had {n} worker(s)"
            time.sleep(0.2)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_trials_run_on_an_existing_scheduler_and_stop_at_a_worker_that_cannot_see_the_folder(small_store, tmp_path):
    if subprocess.run(["unshare", "-m", "true"], check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot make a mount namespace here (needs root)")
    config, out = _config(tmp_path), tmp_path / "sweep"
    out.mkdir()
    scheduler_file = tmp_path / "scheduler.json"
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
              "--nthreads", "1", "--no-dashboard"]  # fmt: skip
    processes = [_start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0", "--no-dashboard",
                         "--scheduler-file", str(scheduler_file)], tmp_path / "scheduler.log")]  # fmt: skip
    try:
        deadline = time.time() + 120
        while not scheduler_file.exists():
            assert time.time() < deadline and processes[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        processes.append(_start(worker, tmp_path / "worker.log"))
        _wait_for_workers(address, 1)
        first = _sweep(small_store, out, "--trials", "2", "--method", "random", "--scheduler", address, config=config)
        assert first.returncode == 0, first.stderr
        assert f"trials run on the Dask scheduler {address}, 1 at a time (1 worker)" in first.stdout
        lines = _trial_lines(first.stdout)
        assert len(lines) == 2 and all(re.search(r"  on worker tcp://[\d.]+:\d+$", line) for line in lines)

        # A worker in its own mount namespace, where the sweep folder is an empty tmpfs: it cannot see it.
        _stop(processes.pop())
        blind = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{out}" && exec "$@"', "sh", *worker]
        processes.append(_start(blind, tmp_path / "blind.log"))
        _wait_for_workers(address, 1)
        stopped = _sweep(small_store, out, "--trials", "3", "--method", "random", "--scheduler", address, config=config)
        assert stopped.returncode == 2
        assert re.fullmatch(rf"error: {re.escape(str(out))} is not visible from worker tcp://[\d.]+:\d+: --out must be "
                            r"a folder every worker of the cluster sees at the same path \(a shared filesystem\)\n",
                            stopped.stderr), stopped.stderr  # fmt: skip
        assert _trial_lines(stopped.stdout) == [] and not (out / "trial-002").exists()
        assert _states(_sqlite(out)) == ["COMPLETE", "COMPLETE", "RUNNING"]  # the finished two are intact
        assert len(pd.read_csv(out / "leaderboard.csv")) == 2

        # Back on a worker that sees the folder, the same command continues the trial it left.
        _stop(processes.pop())
        processes.append(_start(worker, tmp_path / "worker2.log"))
        _wait_for_workers(address, 1)
        resumed = _sweep(small_store, out, "--trials", "3", "--method", "random", "--scheduler", address, config=config)
        assert resumed.returncode == 0, resumed.stderr
        assert "trial 2: interrupted earlier, continuing it" in resumed.stdout
        assert [line.split()[1] for line in _trial_lines(resumed.stdout)] == ["2"]
        assert _states(_sqlite(out)) == ["COMPLETE"] * 3
    finally:
        for process in reversed(processes):
            _stop(process)


def test_ctrl_c_stops_the_embedded_cluster_and_leaves_the_trials_to_continue(small_store, tmp_path):
    config, out = _config(tmp_path), tmp_path / "sweep"
    command = [sys.executable, "-m", "training.cli", "sweep", "--store", small_store, "--model", "cnn", "--config",
               str(config), "--out", str(out), "--epochs", "20", "--no-emissions", "--device", "cpu", "--trials", "2",
               "--method", "random", "--parallel", "2"]  # fmt: skip
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not all((out / f"trial-00{n}" / "history.csv").exists() for n in (0, 1)):
            assert time.time() < deadline and driver.poll() is None, driver.communicate()
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130 and stderr == "interrupted: run the same command again to resume\n", stderr
    deadline = time.time() + 30
    while True:  # the workers are gone with the driver
        try:
            os.killpg(driver.pid, 0)
        except ProcessLookupError:
            break
        assert time.time() < deadline, "worker processes outlived the sweep"
        time.sleep(0.2)
    assert _states(_sqlite(out)) == ["RUNNING", "RUNNING"]
