"""benchmarks/gpu_epoch.py on CPU: the whole script (store build, every configuration, the DDP check) in --smoke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_epoch.py"
NO_DDP = {"skipped": "0 GPU(s) here: the 2-process DDP run needs 2"}
# (model, amp, cache, workers) of --smoke, in the order the script runs them
SMOKE_RUNS = [
    (model, amp, cache, workers)
    for model in ("short_res", "crnn")
    for amp, cache, workers in ((False, "ram", 0), (True, "ram", 0), (True, "none", 2))
]


def run_script(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The script in a subprocess with $OUT set; --out names another folder, which must stay empty."""
    out, other, work = tmp_path / "out", tmp_path / "other", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(other), "--work", str(work), *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert not other.exists(), "results went to --out although $OUT was set"
    assert list(work.iterdir()) == [], "the audio and store were left behind"
    return done, out


@pytest.mark.slow
def test_smoke_runs_every_configuration_for_exactly_the_steps_asked(tmp_path):
    done, out = run_script(tmp_path)
    report = json.loads((out / "gpu_epoch.json").read_text())
    assert [(r["model"], r["amp"], r["cache"], r["workers"]) for r in report["runs"]] == SMOKE_RUNS
    for r in report["runs"]:
        # 3 steps of 2 examples: the first 6 train clips, one shard, so even 2 workers make exactly 3 batches
        assert (r["steps"], r["examples"], r["batch_size"]) == (3, 6, 2), r
        assert r["samples_per_s"] > 0 and r["train_seconds"] > 0, r
        assert 0 <= r["data_wait_fraction"] < 1, r
        assert r["peak_gpu_mib"] is None  # CPU: no GPU memory to report
    store = report["store"]
    assert (store["clips"], store["clip_seconds"], store["unique_mp3s"], store["workers"]) == (3 * 2 + 16, 4.0, 2, 1)
    assert store["build_seconds"] > 0 and store["clips_per_s"] > 0
    assert (report["steps"], report["warmup"], report["skipped"], report["ddp"]) == (3, 1, [], NO_DDP)
    assert report["environment"]["device_name"] == "CPU"

    table = (out / "gpu_epoch.md").read_text().splitlines()
    header = table.index("| model | amp | cache | workers | batch | steps | samples/s | data wait | peak GPU MiB |")
    rows = table[header + 2 : header + 2 + len(SMOKE_RUNS)]
    for row, (model, amp, cache, workers) in zip(rows, SMOKE_RUNS):
        assert row.startswith(f"| {model} | {'bf16' if amp else 'fp32'} | {cache} | {workers} | 2 | 3 | "), row
        assert row.endswith(" | - |"), row
    assert table[header + 2 + len(SMOKE_RUNS)] == ""
    assert f"DDP (2 processes): {NO_DDP['skipped']}" in table
    assert table[0].startswith(f"Run of {report['date']}, `python benchmarks/gpu_epoch.py --smoke")
    assert "| crnn | bf16 | none | 2 | 2 | 3 |" in done.stdout  # the table is printed too


@pytest.mark.slow
def test_a_spent_budget_skips_the_configurations_left_and_still_writes_both_files(tmp_path):
    _, out = run_script(tmp_path, "--budget-s", "0")
    report = json.loads((out / "gpu_epoch.json").read_text())
    assert report["runs"] == []
    assert [(s["model"], s["amp"], s["cache"], s["workers"]) for s in report["skipped"]] == SMOKE_RUNS
    table = (out / "gpu_epoch.md").read_text()
    assert "| short_res | fp32 | ram | 0 | skipped: 0 s budget spent | | | | |" in table
    assert table.count("s budget spent") == len(SMOKE_RUNS) + 1  # and the DDP part
    assert report["ddp"] == {"skipped": "0 s budget spent"}
