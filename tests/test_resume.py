"""Killed builds resume to the same bytes; any scheduler writes the same bytes.

Every build here is the real `pipe` command in a subprocess on a real Dask cluster; kills
are SIGKILL of the whole process group (the command and its Dask worker processes).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_stores import assert_same_store, kill_when, marker_count, markers

from pipeline import open_store
from pipeline.datasets.demo import index_demo

BIN = Path(sys.executable).parent
N_CLIPS, BATCH = 48, 4
N_BATCHES = N_CLIPS // BATCH
SETTINGS = ["--set", f"options.n_clips={N_CLIPS}", "--set", "options.seconds=1.0", "--set", "clip.seconds=1.0",
            "--set", f"batch_clips={BATCH}", "--quiet"]
RUN_LINE = re.compile(r"\((\d+) batches run, (\d+) reused")


def build_command(source: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "pipe"), "build", "demo", "--source", str(source), "--out", str(out), *SETTINGS, *extra]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_audio")
    index_demo(str(root), n_clips=N_CLIPS, seconds=1.0)
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    """The uninterrupted build, two worker processes."""
    out = tmp_path_factory.mktemp("reference") / "demo.zarr"
    result = run(build_command(source, out, "--workers", "2"))
    assert result.returncode == 0, result.stderr
    assert f"{N_CLIPS} of {N_CLIPS} clips stored" in result.stdout
    return out


@pytest.fixture(scope="module")
def killed_chain(source, tmp_path_factory):
    """One store, killed during creation and at two seeded moments mid-build, then finished.

    Each run is the same command; before each, the markers on disk are recorded so that a
    test can check that no finished batch was written again.
    """
    out = tmp_path_factory.mktemp("killed") / "demo.zarr"
    command = build_command(source, out, "--workers", "2")
    rng = random.Random(20261120)  # one kill in each half of the build, at a seeded batch count
    # At least 4 batches left after the second kill: two workers write their markers ~15 ms apart, and
    # on 2 busy cores the polling test may not run for longer than that (a CI run saw 10 become 12).
    thresholds = [rng.randint(2, N_BATCHES // 2 - 1), rng.randint(N_BATCHES // 2, N_BATCHES - 4)]
    runs = []
    stages = [("creation", lambda: out.exists())] + [
        (f"after {t} batches", lambda t=t: marker_count(out) >= t) for t in thresholds
    ]
    for stage, condition in stages:
        before = markers(out)
        result = kill_when(command, condition)
        runs.append({"stage": stage, "before": before, "after": markers(out), **result})
    before = markers(out)
    final = run(command)
    runs.append({"stage": "final", "before": before, "after": markers(out), "killed": False,
                 "returncode": final.returncode, "stdout": final.stdout, "stderr": final.stderr})
    return out, thresholds, runs


def test_builds_killed_at_any_moment_resume_to_identical_bytes(killed_chain, reference):
    out, thresholds, runs = killed_chain
    kills = [r for r in runs if r["killed"]]
    assert len(kills) == 3, [(r["stage"], r["returncode"], r["stderr"][-300:]) for r in runs]
    assert all(r["returncode"] == -signal.SIGKILL for r in kills)
    # The batch kills landed mid-build: at least the threshold, never all of the batches.
    for threshold, run_ in zip(thresholds, kills[1:]):
        assert threshold <= len(run_["after"]) < N_BATCHES
    assert runs[-1]["returncode"] == 0, runs[-1]["stderr"]
    assert f"{N_CLIPS} of {N_CLIPS} clips stored, 0 failed" in runs[-1]["stdout"]
    assert_same_store(out, reference)
    lost = N_CLIPS - int((open_store(str(out)).status == 1).sum())
    print(f"\nkills survived: {len(kills)} ({', '.join(r['stage'] for r in kills)}); clips lost: {lost}")


def test_resumed_builds_never_redo_a_finished_batch(killed_chain):
    _, _, runs = killed_chain
    for run_ in runs:
        # Every marker that existed before a run is still the same file, untouched.
        assert {k: run_["after"].get(k) for k in run_["before"]} == run_["before"], run_["stage"]
    final = runs[-1]
    assert final["returncode"] == 0, final["stderr"]
    ran, reused = map(int, RUN_LINE.search(final["stdout"]).groups())
    assert reused == len(final["before"]) and ran == N_BATCHES - reused and ran > 0


def test_torn_stale_and_missing_markers_are_not_trusted(reference, source, tmp_path):
    out = tmp_path / "demo.zarr"
    shutil.copytree(reference, out)
    folder = out / "_muzarr" / "batches"
    torn = folder / "000003.json"
    torn.write_bytes(torn.read_bytes()[: len(torn.read_bytes()) // 2])  # a write cut short
    (folder / "000008.json").write_bytes((folder / "000007.json").read_bytes())  # another batch's marker
    (folder / "000010.json").unlink()
    (out / "waveform" / "c" / "0" / f"0.{'ab' * 16}.partial").write_bytes(b"half a shard")  # a killed write
    untouched = {k: v for k, v in markers(out).items() if k not in ("000003.json", "000008.json")}
    result = run(build_command(source, out, "--workers", "2"))
    assert result.returncode == 0, result.stderr
    assert "(3 batches run, 9 reused" in result.stdout
    assert {k: markers(out)[k] for k in untouched} == untouched
    assert_same_store(out, reference)


def test_kill_during_finalize_resumes(reference, source, tmp_path):
    """All batches done, tables and manifest not yet written: the state a kill in finalize leaves."""
    out = tmp_path / "demo.zarr"
    shutil.copytree(reference, out)
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["muzarr"].update(state="building")
    (out / "zarr.json").write_text(json.dumps(meta))
    for table in (out / "tables").glob("*.parquet"):
        table.unlink()
    (out / "_muzarr" / "keys.json").unlink()
    first_table = out / "tables" / "labels.parquet"
    result = kill_when(build_command(source, out), first_table.exists, poll=0.001)
    assert result["killed"], result["stderr"]
    assert open_store(str(out)).manifest.state == "building"
    again = run(build_command(source, out))
    assert again.returncode == 0, again.stderr
    assert "(0 batches run, 12 reused" in again.stdout
    assert_same_store(out, reference)


def test_a_folder_left_by_a_killed_creation_is_recognised_as_ours(tmp_path):
    """A kill can land before the mark is complete (only a temporary file) or while clearing (only the mark)."""
    from pipeline.prepare import clear_store, is_ours
    from pipeline.store.location import location

    early = tmp_path / "early.zarr"
    (early / "_muzarr").mkdir(parents=True)
    (early / "_muzarr" / f"target.json.{'cd' * 16}.partial").write_text("{")
    assert is_ours(location(early))
    foreign = tmp_path / "foreign"
    (foreign / "_muzarr").mkdir(parents=True)
    (foreign / "thesis.tex").write_text("years of work")
    assert not is_ours(location(foreign))
    clearing = tmp_path / "clearing.zarr"
    (clearing / "waveform" / "c").mkdir(parents=True)
    (clearing / "waveform" / "c" / "0").write_bytes(b"x")
    (clearing / "_muzarr").mkdir()
    (clearing / "_muzarr" / "target.json").write_text("{}")
    clear_store(location(clearing), keep="_muzarr/target.json")
    assert [p.relative_to(clearing).as_posix() for p in clearing.rglob("*")] == ["_muzarr", "_muzarr/target.json"]
    assert is_ours(location(clearing))


def test_a_different_configuration_is_refused_unless_overwrite(reference, source, tmp_path):
    out = tmp_path / "demo.zarr"
    shutil.copytree(reference, out)
    changed = run(build_command(source, out, "--set", "logmel.top_db=60"))
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "different configuration" in changed.stderr
    assert "top_db: store has 80.0, this build asks for 60" in changed.stderr
    assert "--overwrite" in changed.stderr
    assert open_store(str(out)).arrays.keys() == open_store(str(reference)).arrays.keys()
    replaced = run(build_command(source, out, "--only", "--waveform", "sample_rate=8000", "--overwrite", "--workers", "2"))
    assert replaced.returncode == 0, replaced.stderr
    store = open_store(str(out))
    assert list(store.arrays) == ["waveform"] and store.arrays["waveform"].shape == (N_CLIPS, 8000)
    assert not (out / "logmel").exists()


def test_one_worker_two_workers_and_an_external_cluster_write_identical_bytes(reference, source, tmp_path):
    one = tmp_path / "one.zarr"
    result = run(build_command(source, one, "--workers", "1"))
    assert result.returncode == 0, result.stderr
    assert_same_store(one, reference)

    scheduler_file = tmp_path / "scheduler.json"
    dask = str(BIN / "dask")
    cluster = [
        subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                          "--scheduler-file", str(scheduler_file)], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        cluster.append(
            subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "2",
                              "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        external = tmp_path / "external.zarr"
        result = run(build_command(source, external, "--scheduler", address))
        assert result.returncode == 0, result.stderr
        assert address.startswith("tcp://127.0.0.1:")
    finally:
        for process in reversed(cluster):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert_same_store(external, reference)
