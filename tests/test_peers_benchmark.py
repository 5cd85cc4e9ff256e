"""benchmarks/peers.py --smoke: every peer builds the same few clips, is checked against muzarr's store, and reads.

The peers (Hugging Face datasets, lhotse, WebDataset, LitData) are benchmark dependencies, not muzarr's:
without them the test is skipped, unless MUZARR_REQUIRE_PEERS=1 (CI installs them: see pyproject's
``peers`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "peers.py"
# import names of what the benchmark needs beyond muzarr's own dependencies
MODULES = ("datasets", "torchcodec", "lhotse", "lilcom", "webdataset", "litdata")
BUILDERS = ("muzarr", "datasets", "datasets (torchcodec)", "lhotse", "WebDataset", "LitData")
READERS = ("muzarr", "muzarr --no-verify-reads", "datasets", "lhotse", "lhotse Shar", "WebDataset", "LitData")


def require_peers() -> None:
    missing = [name for name in MODULES if importlib.util.find_spec(name) is None]
    if missing:
        message = f"the peers benchmark needs {', '.join(missing)}: pip install -e '.[peers]' (see pyproject.toml)"
        if os.environ.get("MUZARR_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """The rows of the markdown table under ``header`` (first cell → cells)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_smoke_checks_every_peer_against_muzarr_and_reads_crops(tmp_path):
    require_peers()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--work", str(work)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    # every peer's stored waveform is muzarr's, value for value (one int16 step)
    for peer in (*READERS[2:], "datasets (torchcodec)"):
        assert re.search(rf"^check {re.escape(peer)} waveform: equal to muzarr's store \(512,000 values, .* 0 \(0\.000%\) beyond",
                         out, re.MULTILINE), out  # fmt: skip
    # and its log-mel, to two float16 steps; lhotse's (its own resampler) and datasets' through torchcodec
    # (FFmpeg's MP3 decoder) are reported as such
    for peer in ("datasets", "WebDataset", "LitData"):
        assert re.search(rf"^check {peer} log-mel: equal to muzarr's store \(201,216 values, ", out, re.MULTILINE), out
    for peer in ("lhotse", "lhotse Shar", "datasets (torchcodec)"):
        line = re.search(rf"^check {re.escape(peer)} log-mel: (equal|DIFFERS) .*$", out, re.MULTILINE)
        assert line, out
        assert line[1] == "equal" or "reported, not compared" in out.split(line[0])[1].splitlines()[1], out

    builds = table_rows(out, "| peer | seconds (median) |")
    assert sorted(builds) == sorted(BUILDERS)
    assert all(float(cells[0]) > 0 for cells in builds.values()), builds
    for header in ("59049-sample waveform crops", "188-frame log-mel crops"):
        rows = table_rows(out.split(header, 1)[1], "| peer | shuffle |")
        assert sorted(rows) == sorted(READERS), rows
        for peer, cells in rows.items():
            rate, first, resume = float(cells[1].replace(",", "")), float(cells[4]), float(cells[5].split()[0])
            assert rate > 0 and first >= 0 and resume >= 0, (peer, cells)  # (printed to 0.01 s)
            assert cells[5].endswith("(state)" if peer in ("datasets", "lhotse", "LitData") else "(re-read)"), cells
    sizes = table_rows(out, "| peer | what is on disk | bytes |")
    assert all(int(cells[1].replace(",", "")) > 0 for cells in sizes.values()), sizes
    assert list(work.iterdir()) == [], "the audio and the builds were left behind"
