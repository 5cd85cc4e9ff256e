"""A store of muzarr's store layout 1 (whole-clip chunks) is refused by every command with one line
that says what it is and gives the exact rebuild command (issue #13, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_catalog

BUILD = ["demo", "--set", "options.n_clips=12", "--set", "batch_clips=4", "--workers", "1", "--quiet"]
#: where the store's audio is (the catalog's demo folder, as the store records it)
DEMO_SOURCE = Path(load_catalog()["demo"]["source"]).expanduser().resolve()


def _cli(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def old_store(tmp_path_factory):
    """A freshly built demo store whose manifest is then marked as layout 1."""
    out = tmp_path_factory.mktemp("old") / "demo.zarr"
    built = _cli("pipeline.cli", "build", *BUILD[:1], "--out", out, *BUILD[1:])
    assert built.returncode == 0, built.stderr
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["muzarr"]["schema_version"] = 1
    (out / "zarr.json").write_text(json.dumps(meta))
    return out


def _expected(out) -> str:
    return (
        f"error: {out} was written by muzarr's store layout 1 (whole-clip chunks); this muzarr reads layout 2: "
        f"rebuild it with: pipe build demo --source {DEMO_SOURCE} --out {out} --set batch_clips=4 --set options.n_clips=12 "
        "--overwrite"
    )


@pytest.mark.parametrize("command", [["info"], ["verify"], ["build"]])
def test_every_pipe_command_refuses_layout_1_with_the_rebuild_command(old_store, command):
    args = [*command, old_store] if command != ["build"] else ["build", "demo", "--out", old_store, *BUILD[1:]]
    result = _cli("pipeline.cli", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [_expected(old_store)]


def test_training_refuses_layout_1(old_store, tmp_path):
    result = _cli("training.cli", "--store", old_store, "--model", "cnn", "--epochs", "1", "--out", tmp_path / "run",
                  "--device", "cpu", "--no-emissions", "--workers", "0")  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == _expected(old_store)


def test_the_rebuild_command_rebuilds_it(old_store, tmp_path):
    copy = tmp_path / "demo.zarr"
    subprocess.run(["cp", "-r", str(old_store), str(copy)], check=True)
    rebuild = _expected(copy).split("rebuild it with: ")[1].split()
    assert rebuild[:2] == ["pipe", "build"]
    result = _cli("pipeline.cli", *rebuild[1:], "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((copy / "zarr.json").read_text())["attributes"]["muzarr"]["schema_version"] == 2
    assert _cli("pipeline.cli", "verify", copy).returncode == 0
