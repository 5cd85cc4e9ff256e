"""Time GTZAN's 57 features: straightforward librosa vs muzarr, single-threaded, same clips.

Usage::

    .venv/bin/python benchmarks/tabular_speed.py [--repeats 3] [--synthetic 2]

Runs on the readable real GTZAN clips in ``../shared/fixtures/gtzan`` (or
``$MUZARR_FIXTURES/gtzan``) plus optional synthetic 30 s clips, alternating reference and
muzarr on each clip so that both see the same machine load. Reports CPU seconds per
clip (``time.process_time``, the best of ``--repeats``; wall seconds alongside), the
speed ratio, the worst disagreement with librosa and with the published table as a
fraction of the column's std over the 1000-row table, and tempo agreement, as Markdown.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy/scipy/numba load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import platform
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from tabular_reference import reference_gtzan57

from pipeline.features.tabular import GTZAN57_COLUMNS, gtzan57

SR = 22050
TEMPO = GTZAN57_COLUMNS.index("tempo")
CLIPS = ("blues.00000", "classical.00000", "country.00000", "jazz.00000", "rock.00000", "jazz.00054")


def _timed(function, y: np.ndarray, repeats: int) -> tuple[np.ndarray, float, float]:
    """Result, best CPU seconds and best wall seconds over ``repeats`` calls."""
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        result = function(y, sr=SR)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return result, min(cpu), min(wall)


def _synthetic(count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(661794) / SR
    out = {}
    for i in range(count):
        beat = 60.0 / (90 + 30 * i)
        clicks = librosa.clicks(times=np.arange(0.1, 30.0, beat), sr=SR, length=t.size)
        chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (220.0 * (i + 1), 277.2, 329.6))
        noise = 0.02 * rng.standard_normal(t.size)
        out[f"synthetic {i + 1} (clicks, chord, noise)"] = (clicks + chord + noise).astype(np.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_fixtures = Path(os.environ.get("MUZARR_FIXTURES", ROOT.parent / "shared" / "fixtures"))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per clip and implementation (best kept)")
    parser.add_argument("--synthetic", type=int, default=2, help="synthetic 30 s clips to add")
    parser.add_argument("--fixtures", type=Path, default=default_fixtures, help="folder holding gtzan/")
    args = parser.parse_args(argv)

    gtzan = args.fixtures / "gtzan"
    table = pd.read_csv(gtzan / "features_30_sec.csv")
    std = table[list(GTZAN57_COLUMNS)].std().to_numpy()
    clips: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    for name in CLIPS:
        path = gtzan / "genres_original" / name.split(".")[0] / f"{name}.wav"
        try:
            y, sr = sf.read(path, dtype="float32")
        except (sf.LibsndfileError, RuntimeError) as err:
            skipped.append(f"{name}.wav ({err})")
            continue
        if sr != SR:
            skipped.append(f"{name}.wav ({sr} Hz)")
            continue
        clips[name] = y
    clips.update(_synthetic(args.synthetic))

    # Warm up: numba compiles muzarr's kernels (~1-3 s) and librosa's on first use.
    warm = next(iter(clips.values()))[: 5 * SR]
    gtzan57(warm, sr=SR)
    reference_gtzan57(warm, sr=SR)

    lines = [
        (
            "| clip | reference s/clip | muzarr s/clip | speed-up | worst vs librosa (std) "
            "| worst vs published (std) | tempo (ref / muzarr / published) |"
        ),
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    totals = np.zeros(2)
    worst_librosa = worst_table = 0.0
    tempo_agree = tempo_table_agree = n_table = 0
    for name, y in clips.items():
        expected, ref_cpu, ref_wall = _timed(reference_gtzan57, y, args.repeats)
        values, fast_cpu, fast_wall = _timed(gtzan57, y, args.repeats)
        totals += (ref_cpu, fast_cpu)
        scaled = np.abs(values - expected) / std
        scaled[TEMPO] = 0.0
        worst_librosa = max(worst_librosa, float(scaled.max()))
        tempo_agree += values[TEMPO] == expected[TEMPO]
        row = table.loc[table["filename"] == f"{name}.au", list(GTZAN57_COLUMNS)]
        if len(row):
            published = row.to_numpy(dtype=np.float64)[0]
            vs_table = np.abs(values - published) / std
            vs_table[TEMPO] = 0.0
            worst_table = max(worst_table, float(vs_table.max()))
            tempo_table_agree += values[TEMPO] == published[TEMPO]
            n_table += 1
            table_cell, published_tempo = f"{vs_table.max():.1e}", f"{published[TEMPO]:.2f}"
        else:
            table_cell, published_tempo = "-", "-"
        lines.append(
            f"| {name} | {ref_cpu:.3f} ({ref_wall:.3f} wall) | {fast_cpu:.3f} ({fast_wall:.3f} wall) | "
            f"{ref_cpu / fast_cpu:.1f}x | {scaled.max():.1e} | {table_cell} | "
            f"{expected[TEMPO]:.2f} / {values[TEMPO]:.2f} / {published_tempo} |"
        )
    n = len(clips)
    lines.append(
        f"| **mean of {n}** | **{totals[0] / n:.3f}** | **{totals[1] / n:.3f}** | **{totals[0] / totals[1]:.1f}x** "
        f"| **{worst_librosa:.1e}** | **{worst_table:.1e}** "
        f"| **{tempo_agree}/{n} equal; {tempo_table_agree}/{n_table} published** |"
    )
    print(
        f"GTZAN 57 features, 1 thread, CPU seconds (best of {args.repeats}); "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"librosa {librosa.__version__}, numpy {np.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print()
    print("\n".join(lines))
    if skipped:
        print()
        print("Skipped: " + "; ".join(skipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
