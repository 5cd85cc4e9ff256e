"""Training runs on CPU: every model, the run directory, resume, emissions, repeats, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from pipeline import MuzarrError
from training.models import MODELS
from training.run.config import TrainConfig
from training.run.loop import train

# Small, fast settings per model: the point is that each one trains end to end on a real store.
QUICK_OPTS = {
    "short_res": {"n_mels": 32},
    "resnet18": {},
    "resnet50": {"weights": "random", "config": "tiny"},
    "wav2vec2": {"weights": "random", "config": "tiny"},
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_trains_one_epoch(small_store, tmp_path, model):
    if model == "wav2vec2":
        pytest.importorskip("transformers", reason="wav2vec2 needs transformers: pip install muzarr[pretrained]")
    config = TrainConfig(
        store=small_store, model=model, epochs=1, batch_size=8, emissions=False,
        model_opts=QUICK_OPTS.get(model, {}), eval_crops=2,
        sub_clips=0 if MODELS[model].protocol.sub_clips else None,  # the demo store holds whole clips
    )
    metrics = train(config, out=tmp_path / model, progress=False)
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1
    assert 0.0 <= metrics["test"]["roc_auc"] <= 1.0
    assert np.isfinite(metrics["valid"]["loss"])
    assert metrics["parameters"] > 0
    history = pd.read_csv(tmp_path / model / "history.csv")
    assert list(history["epoch"]) == [1] and np.isfinite(history["train_loss"]).all()


def test_run_directory_contents(small_store, tmp_path):
    out = tmp_path / "run"
    metrics = train(TrainConfig(store=small_store, model="mlp", epochs=3, lr=1e-2, emissions=True), out=out, progress=False)
    for name in ("config.json", "history.csv", "metrics.json", "normalization.json", "best.pt", "last.pt",
                 "curves.png", "per_tag_auc.png"):  # fmt: skip
        assert (out / name).exists(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["roc_auc"] == pytest.approx(metrics["test"]["roc_auc"])
    assert set(saved["test"]["per_tag_roc_auc"]) == {"drums", "bass", "melody", "noise", "fast", "slow"}
    assert saved["energy_kwh"] > 0 and saved["co2_kg"] > 0 and saved["co2_country"] == "ESP"
    assert saved["parameters"] == 64 * 128 + 128 + 128 * 6 + 6
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lr"] == 1e-2 and config["train"]["optimizer"] is None  # what was asked
    assert config["protocol"]["lr"] == 1e-2 and config["protocol"]["optimizer"] == "adam"  # what ran
    assert config["input"]["array"] == "logmel/mel64_sr16000_fft1024_hop512"
    # The checkpoint is a plain state dict: it loads with weights_only=True (no code runs).
    import torch

    state = torch.load(out / "best.pt", weights_only=True)
    assert {"mean", "std"} <= set(state) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["mean"].shape == (64,)
    from PIL import Image

    with Image.open(out / "curves.png") as image:
        assert image.size[0] > 600 and image.info.get("Title") == "mlp on demo"


def test_metrics_match_sklearn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from training.run.metrics import compute_metrics

    rng = np.random.default_rng(0)
    targets = (rng.random((50, 4)) < 0.4).astype(np.float32)
    scores = np.clip(targets * 0.3 + rng.random((50, 4)) * 0.7, 0, 1)
    ours = compute_metrics("multilabel", targets, scores, ["a", "b", "c", "d"])
    assert ours["roc_auc"] == pytest.approx(roc_auc_score(targets, scores, average="macro"))
    assert ours["pr_auc"] == pytest.approx(average_precision_score(targets, scores, average="macro"))
    targets[:, 2] = 0  # a tag with no positive has no AUC: left out, not an error
    partial = compute_metrics("multilabel", targets, scores, ["a", "b", "c", "d"])
    assert partial["per_tag_roc_auc"]["c"] is None and partial["tags_without_auc"] == 1
    labels = rng.integers(0, 3, 40)
    probs = np.eye(3)[np.where(rng.random(40) < 0.7, labels, (labels + 1) % 3)]
    multi = compute_metrics("multiclass", labels, probs, ["x", "y", "z"])
    assert multi["accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    assert np.trace(multi["confusion_matrix"]) == (probs.argmax(1) == labels).sum()


def _train_cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "training.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, **kwargs,
    )


def test_resume_after_a_kill_ends_with_the_same_metrics(small_store, tmp_path):
    common = ["--store", small_store, "--model", "cnn", "--epochs", "4", "--lr", "3e-3", "--batch-size", "8",
              "--no-emissions", "--quiet", "--seed", "7"]  # fmt: skip
    straight = _train_cli(*common, "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    killed_dir = tmp_path / "killed"
    victim = _train_cli(*common, "--out", str(killed_dir))
    deadline = time.time() + 600
    while time.time() < deadline:
        history = killed_dir / "history.csv"
        if history.exists() and len(pd.read_csv(history)) >= 2:
            break
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    done = len(pd.read_csv(killed_dir / "history.csv"))
    assert 2 <= done < 4, f"the kill landed after {done} epochs"
    assert not (killed_dir / "metrics.json").exists()

    resumed = _train_cli("--resume", str(killed_dir))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((killed_dir / "metrics.json").read_text())
    assert b["epochs_run"] == 4 and a["best_epoch"] == b["best_epoch"]
    assert a["test"]["roc_auc"] == pytest.approx(b["test"]["roc_auc"], abs=1e-6)
    assert a["valid"]["loss"] == pytest.approx(b["valid"]["loss"], rel=1e-5)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "straight" / "history.csv")[["epoch", "train_loss", "valid_loss", "valid_roc_auc"]],
        pd.read_csv(killed_dir / "history.csv")[["epoch", "train_loss", "valid_loss", "valid_roc_auc"]],
        rtol=1e-5,
    )


def test_non_finite_input_is_refused_naming_the_clip(small_store, tmp_path):
    copy = tmp_path / "nan.zarr"
    shutil.copytree(small_store, copy)
    array = zarr.open_array(str(copy / "logmel" / "mel64_sr16000_fft1024_hop512"), mode="r+")
    block = array[5]
    block[3, 7] = np.nan
    array[5] = block
    from pipeline import open_store

    clip_id = open_store(str(copy)).clips["clip_id"][5]
    with pytest.raises(MuzarrError, match=f"clip '{clip_id}'.*non-finite"):
        # the digest check would refuse the edited clip first: this is the guard for stores read unverified
        train(TrainConfig(store=str(copy), model="mlp", epochs=1, emissions=False, split_scheme="random", verify_reads=False),
              out=tmp_path / "run", progress=False)  # fmt: skip


def test_repeats_write_a_mean_and_std_summary(small_store, tmp_path):
    proc = _train_cli("--store", small_store, "--model", "mlp", "--epochs", "2", "--repeats", "2", "--no-emissions",
                      "--quiet", "--out", str(tmp_path / "rep"))  # fmt: skip
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    per_run = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert summary["repeats"] == 2 and len(per_run) == 2
    assert summary["test_roc_auc"]["mean"] == pytest.approx(per_run["test_roc_auc"].mean())
    assert summary["test_roc_auc"]["std"] == pytest.approx(per_run["test_roc_auc"].std(ddof=1))
    assert "test_roc_auc" in out and "±" in out


def test_repeats_note_a_missing_package_once_name_the_grid_and_where_the_summary_went(small_store, tmp_path):
    """Issue #22, first hour 1, 8 and 10: one note for --repeats 2 without tensorboard; the result line names the
    split scheme and the CO2 grid assumed; the summary names its files, draws repeats.png, and prints co2_kg
    to the std's significant digits (not 0.0000 ± 0.0000)."""
    shadow = tmp_path / "shadow" / "tensorboard"  # a tensorboard that fails to import: as if not installed
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    out = tmp_path / "rep"
    proc = _train_cli("--store", small_store, "--model", "mlp", "--epochs", "1", "--repeats", "2", "--device", "cpu",
                      "--out", str(out), env={**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])})  # fmt: skip
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    lines = stdout.splitlines()
    note = ("note: tensorboard is not installed, so this run writes no TensorBoard events "
            "(pip install 'muzarr[tensorboard]'; --no-tensorboard skips this note)")  # fmt: skip
    assert [line for line in lines if line.startswith("note:")] == [note]
    results = [line for line in lines if line.startswith("mlp on demo: best epoch")]
    assert len(results) == 2 and all(line.endswith(", split scheme 'random'") for line in results)
    assert sum(line.endswith(" g CO2eq (grid of ESP, --country to change)") for line in lines) == 2
    assert f"summary: {out / 'summary.csv'} (one row per seed), {out / 'summary.json'}, {out / 'repeats.png'}" in lines
    assert list(pd.read_csv(out / "summary.csv")["seed"]) == [0, 1]
    from PIL import Image

    assert "co2_kg" in Image.open(out / "repeats.png").info["Description"]
    co2 = json.loads((out / "summary.json").read_text())["co2_kg"]
    [row] = [line for line in lines if line.startswith("| co2_kg |")]
    mean, std = row.strip("| ").split(" | ")[1].split(" ± ")
    decimals = len(std.split(".")[1])
    assert len(std.lstrip("0.")) == 2, row  # two significant digits of the std
    assert float(std) == pytest.approx(co2["std"], rel=0.06) and len(mean.split(".")[1]) == decimals
    assert float(mean) == pytest.approx(co2["mean"], abs=10 ** -decimals)


def test_a_store_with_one_split_scheme_is_used_without_a_note(small_store, tmp_path, capsys):
    """Issue #22, first hour 1: crnn's protocol names 'dieleman'; the demo store has one scheme, which is used silently."""
    from pipeline import open_store
    from training.run.loop import Run

    assert list(open_store(small_store).split_schemes) == ["random"]
    assert MODELS["crnn"].protocol.split_scheme == "dieleman"
    run = Run(TrainConfig(store=small_store, model="crnn", emissions=False, tensorboard=False, device="cpu"), tmp_path / "r")
    assert run.protocol.split_scheme == "random"
    assert "note" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--store", "/nonexistent.zarr", "--model", "cnn"], "no muzarr store"),
        (["--model", "cnn"], "needs --store"),
        (["--store", "STORE", "--model", "nosuch"], "unknown model 'nosuch'; known models: cnn"),
        (["--store", "STORE", "--model", "cnn", "--model-opt", "nosuch=1"], "unknown option(s) ['nosuch']"),
        # issue #21 item 8: torch's RuntimeError (negative dimension) in a traceback
        (["--store", "STORE", "--model", "mlp", "--model-opt", "hidden=-3"],
         "model 'mlp': hidden=-3 must be a positive integer"),
        (["--store", "STORE", "--model", "cnn", "--split-scheme", "nosuch"], "no split scheme 'nosuch'"),
        (["--store", "STORE", "--model", "cnn", "--device", "cuda"], "no CUDA device"),
        (["--store", "STORE", "--model", "cnn", "--lr", "-1"], "--lr"),
        (["--resume", "/nonexistent-run"], "no config.json"),
    ],
)
def test_bad_arguments_are_one_clear_line(small_store, args, message):
    from click.testing import CliRunner

    from training.cli import main

    args = [small_store if a == "STORE" else a for a in args]
    result = CliRunner().invoke(main, [*args, "--no-emissions", "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert sum(line.startswith(("error:", "Error:")) for line in result.stderr.splitlines()) == 1
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_a_bad_argument_exits_2_from_a_real_process():
    proc = _train_cli("--store", "/nonexistent.zarr", "--model", "cnn", "--no-emissions", "--quiet")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.startswith("error: no muzarr store at /nonexistent.zarr") and "Traceback" not in err


def test_loader_workers_are_capped_at_what_the_split_can_use(small_store, tmp_path):
    """Issue #21 item 14: `--workers 1000` on a small store started 1000 loader processes (55 s, then a
    "can't start new thread" traceback, exit 0)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "train"), "--store", small_store, "--model", "mlp", "--epochs", "1",
         "--cache", "none", "--workers", "1000", "--out", str(tmp_path / "run"), "--no-emissions", "--quiet"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cpus, shards = len(os.sched_getaffinity(0)), 5  # 40 clips in shards of 8: the train split touches all 5
    why = "the train split has 5 shards to read per epoch" if shards <= cpus else f"this process may use {cpus} CPUs"
    assert result.stdout.splitlines()[0] == (
        f"note: --workers 1000: starting {min(shards, cpus)} loader processes, as {why}")
    assert "Traceback" not in result.stderr
