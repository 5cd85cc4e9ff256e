"""A run directory is never overwritten unasked, the same command continues its own run, and
damaged run files are named in one line (issue: hostile and careless input, items 6 and 7)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline import MuzarrError
from training.cli import main


def _train(*args: str):
    quiet = [] if args[0] == "predict" else ["--no-emissions", "--quiet"]
    result = CliRunner().invoke(main, [*args, *quiet])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output + result.stderr
    return result, errors


@pytest.fixture()
def finished_run(small_store, tmp_path):
    out = tmp_path / "run"
    result, _ = _train("--store", small_store, "--model", "mlp", "--epochs", "2", "--lr", "1e-2", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_the_same_command_keeps_a_finished_run(small_store, finished_run):
    before = (finished_run / "metrics.json").stat().st_mtime_ns
    result, _ = _train("--store", small_store, "--model", "mlp", "--epochs", "2", "--lr", "1e-2", "--out", str(finished_run))
    assert result.exit_code == 0 and "has finished already" in result.output
    assert (finished_run / "metrics.json").stat().st_mtime_ns == before


def test_the_same_command_continues_an_unfinished_run(small_store, finished_run):
    (finished_run / "metrics.json").unlink()  # as if killed after its last epoch
    history = (finished_run / "history.csv").read_text()
    result, _ = _train("--store", small_store, "--model", "mlp", "--epochs", "2", "--lr", "1e-2", "--out", str(finished_run))
    assert result.exit_code == 0 and "continuing this run" in result.output
    assert (finished_run / "history.csv").read_text() == history  # no epoch trained again
    assert json.loads((finished_run / "metrics.json").read_text())["epochs_run"] == 2


def test_another_run_in_the_folder_is_refused_unless_overwrite(small_store, finished_run):
    (finished_run / "notes.txt").write_text("mine")
    result, errors = _train("--store", small_store, "--model", "mlp", "--epochs", "2", "--lr", "3e-3", "--out", str(finished_run))
    assert result.exit_code == 2 and len(errors) == 1
    assert "holds another run (its lr differ)" in errors[0] and f"train --resume {finished_run}" in errors[0]
    result, _ = _train("--store", small_store, "--model", "mlp", "--epochs", "1", "--lr", "3e-3", "--out", str(finished_run),
                       "--overwrite")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((finished_run / "config.json").read_text())["train"]["lr"] == 3e-3
    assert (finished_run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_a_folder_that_is_not_a_run_is_refused(small_store, tmp_path):
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "draft.tex").write_text("x")
    result, errors = _train("--store", small_store, "--model", "mlp", "--out", str(folder))
    assert result.exit_code == 2 and "is not a run directory (it holds draft.tex)" in errors[0]
    assert sorted(p.name for p in folder.iterdir()) == ["draft.tex"]


@pytest.mark.parametrize(
    "damage, command, message",
    [
        ("best.pt", "predict", "best.pt is damaged or not a muzarr checkpoint"),
        ("last.pt", "resume", "last.pt is damaged or not a muzarr checkpoint"),
        ("config.json", "resume", "config.json is damaged (not JSON"),
        ("config.json", "predict", "config.json is damaged (not JSON"),
    ],
)
def test_damaged_run_files_are_named_in_one_line(small_store, finished_run, tmp_path, damage, command, message):
    path = finished_run / damage
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if command == "resume":
        result, errors = _train("--resume", str(finished_run))
    else:
        result, errors = _train("predict", "--checkpoint", str(finished_run), "--store", small_store,
                                "--out", str(tmp_path / "p.csv"))  # fmt: skip
    assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], result.output + result.stderr


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_a_truncated_shard_is_one_line_naming_it(small_store, tmp_path, cache):
    import shutil

    copy = tmp_path / "damaged.zarr"
    shutil.copytree(small_store, copy)
    shard = copy / "logmel" / "mel64_sr16000_fft1024_hop512" / "c" / "1" / "0" / "0"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    result, errors = _train("--store", str(copy), "--model", "mlp", "--epochs", "1", "--cache", cache,
                            "--out", str(tmp_path / "run"))  # fmt: skip
    assert result.exit_code == 2 and len(errors) == 1, result.output + result.stderr
    assert "logmel/mel64_sr16000_fft1024_hop512/c/1/0/0" in errors[0] and f"pipe verify {copy}" in errors[0]
    assert len(result.stderr.splitlines()) == 1


def test_a_recorded_run_matches_its_request_as_json_holds_it(tmp_path):
    from training.checkpoint import existing_run
    from training.config import TrainConfig

    request = TrainConfig(store="/s.zarr", model="cnn", model_opts={"channels": (8, 16)}).to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"train": request}))  # the tuple is a list there
    assert existing_run(tmp_path, request, overwrite=False) == "resume"
    other = TrainConfig(store="/s.zarr", model="cnn", model_opts={"channels": (8, 32)}).to_dict()
    with pytest.raises(MuzarrError, match="its model_opts differ"):
        existing_run(tmp_path, other, overwrite=False)
