"""benchmarks/embed_throughput.py on CPU with a tiny HuBERT: every path of the script (the feature in the
workers, `pipe build`, MARBLE's loop with and without force_half, the windows sweep) in one small run, so
the GPU script cannot rot while no GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_models import save_tiny_hubert

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "embed_throughput.py"
# 6-second clips in 5-second windows: a window of 5 s and one of 1 s, each its own forward pass
SMALL = ("--devices", "cpu", "--workers", "1", "--cpu-clips-per-worker", "10", "--cpu-forward-clips-per-worker", "1",
         "--marble-clips", "1", "--marble-half", "cpu", "--sweep", "1,2", "--sweep-devices", "cpu", "--sweep-windows", "2",
         "--clip-seconds", "6", "--quiet")  # fmt: skip
MUZARR = ("muzarr: feature extract, in-memory audio", "muzarr: pipe build demo --embedding")


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False, cwd=tmp_path)  # fmt: skip


@pytest.mark.slow
def test_every_path_runs_computes_the_same_embeddings_and_reports_consistent_figures(tmp_path):
    model = save_tiny_hubert(tmp_path / "tiny", sample_rate=24000)  # 3 hidden states of 32
    out, other, work = tmp_path / "out", tmp_path / "other", tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(model), *SMALL, "--out", str(other), "--work", str(work)],
        capture_output=True, text=True, timeout=300, check=False,
        # one thread: a tiny model's many small operations crawl when two threads share busy cores
        env={**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert not other.exists(), "results went to --out although $OUT was set"
    assert list(work.iterdir()) == [], "the audio, stores and .npy files were left behind"
    report = json.loads((out / "embed_throughput.json").read_text())

    # MARBLE's loop and the feature, on the same audio, give the same pooled layers
    assert report["check"]["max_abs_difference"] < 1e-5 * max(1.0, report["check"]["max_abs_value"]), report["check"]
    assert report["model"]["hidden_layers"] == 3 and report["model"]["dim"] == 32
    assert report["model"]["windows_per_clip"] == 2 and report["model"]["gflop_per_clip"] > 0

    rows = report["rows"]
    assert [(r["path"], r["precision"]) for r in rows] == [
        (MUZARR[0], "float32"), (MUZARR[1], "float32"),
        ("MARBLE extract loop", "float32"), ("MARBLE extract loop", "float16 (force_half)"),
    ]  # fmt: skip
    assert all(r["threads"] == 1 for r in rows)
    forward, built = rows[:2]
    assert (forward["clips"], built["clips"], forward["windows"], forward["processes"]) == (1, 10, "1+1", 1)
    # the data wait is the share of the build's CPU time (on a GPU: worker time) the feature alone does not take
    for clock in ("worker", "cpu"):
        assert built[f"data_wait_{clock}"] == pytest.approx(1 - forward[f"{clock}_s_per_clip"] / built[f"{clock}_s_per_clip"])
    assert built["data_wait"] == built["data_wait_cpu"]
    assert 0 < built["cpu_s_per_clip"] <= built["worker_s_per_clip"] * 1.01
    assert built["clips_per_s"] == pytest.approx(10 / built["batch_span_s"])
    assert "--embedding" in built["command"] and f"{model},window_seconds=5" in built["command"]
    assert set(rows[0]["decode_resample_ms"]) == set(rows[0]["decode_resample_cpu_ms"]) == {"mp3"}  # demo clip 0: an MP3
    for marble in rows[2:]:
        assert marble["npy_shape"] == [3, 2, 32]  # MARBLE's file: [layer, window, dim]
        assert 0 <= marble["data_wait"] < 1
    for r in rows:  # hours follow from the rate: MTAT's 25,863 x 29.1 s, Jamendo top-50's 3,688.4 h of audio
        audio_per_s = r["clips_per_s"] * 6
        assert r["mtat_h"] == pytest.approx(25_863 * 29.1 / audio_per_s / 3600)
        assert r["jamendo_top50_h"] == pytest.approx(3_688.4 / audio_per_s)

    assert [(s["precision"], s["windows_per_forward"]) for s in report["sweep"]] == [("float32", 1), ("float32", 2)]
    assert all(s["windows_per_s"] > 0 and s["peak_gpu_mib"] is None for s in report["sweep"])

    table = (out / "embed_throughput.md").read_text()
    assert table == done.stdout[done.stdout.index("Run of ") :]  # the table is printed too
    lines = table.splitlines()
    header = lines.index("| path | device | dtype | processes x threads | windows / forward | clips | clips/s | "
                         "x real time | CPU s / clip | data wait | MTAT (h) | MTG-Jamendo top-50 (h) |")  # fmt: skip
    assert [line.split(" | ")[0] for line in lines[header + 2 : header + 6]] == [f"| {r['path']}" for r in rows]
    assert lines[header + 6] == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--devices", "cuda"), "--devices cuda: torch sees no CUDA GPU here; run with --devices cpu (or --quick)"),
        (("--model", "no-such-folder"), "--model no-such-folder: no config.json there; give a folder save_pretrained wrote"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, args, message):
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    done = run(tmp_path, *args, "--work", str(tmp_path))
    assert (done.returncode, done.stderr, done.stdout) == (2, message + "\n", "")
    assert list(tmp_path.iterdir()) == []


def _script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import embed_throughput
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return embed_throughput


def test_the_ported_torchaudio_resampler_resamples_a_tone_and_keeps_torchaudios_length():
    import numpy as np
    import torch

    bench = _script()
    t = np.arange(22050 * 2) / 22050
    out = bench.SincResample(22050, 24000)(torch.from_numpy(np.sin(2 * np.pi * 1000 * t))[None].float())
    assert out.shape == (1, 48000)  # ceil(44100 * 160 / 147), as torchaudio cuts it
    expected = np.sin(2 * np.pi * 1000 * np.arange(48000) / 24000)
    assert np.abs(out[0, 100:-100].numpy() - expected[100:-100]).max() < 2e-3  # away from the zero-padded ends


def test_a_spent_budget_is_a_row_of_the_table():
    bench = _script()
    report = {"date": "2026-12-05", "argv": ["--budget-s", "1"], "clip_seconds": 29.1, "budget_s": 1.0, "rows": [],
              "sweep": [], "skipped": ["cuda bfloat16: pipe build", "cpu: MARBLE"],
              "environment": {"cpu_count": 16, "cpu": "x", "load_before": 0.0, "torch": "t", "transformers": "t"},
              "model": {"name": "m", "parameters_m": 94.4, "sample_rate": 24000, "hidden_layers": 13, "dim": 768,
                        "window_seconds": 5.0, "windows_per_clip": 6, "gflop_per_clip": 606.0}}  # fmt: skip
    lines = bench.markdown(report).splitlines()
    assert "| cuda bfloat16: pipe build | skipped: 1 s budget spent | | | | | | | | | | |" in lines
    assert "| cpu: MARBLE | skipped: 1 s budget spent | | | | | | | | | | |" in lines
    assert all(line.count("|") == 13 for line in lines if line.startswith("|"))  # 12 columns every row
