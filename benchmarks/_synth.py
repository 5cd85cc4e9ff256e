"""Synthetic MTAT-like audio for benchmarks: 29.1 s clips, 16 kHz mono MP3 in folders 0..f."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile

from pipeline.datasets.demo import _draw_recipe, synthesise


def make_mtat_like(root: Path, *, n_clips: int, seconds: float = 29.1, sample_rate: int = 16000) -> list[Path]:
    """Write (once) ``n_clips`` MP3 files laid out like MagnaTagATune; returns their paths."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "synth.json"
    params = {"n_clips": n_clips, "seconds": seconds, "sample_rate": sample_rate}
    paths = [root / "0123456789abcdef"[i % 16] / f"clip_{i:05d}.mp3" for i in range(n_clips)]
    if marker.exists() and json.loads(marker.read_text()) == params:
        return paths
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        audio = synthesise(_draw_recipe(rng), seconds=seconds, rng=np.random.default_rng([1, i]), sr=sample_rate)
        path.parent.mkdir(exist_ok=True)
        soundfile.write(path, audio, sample_rate, format="MP3", subtype="MPEG_LAYER_III")
    marker.write_text(json.dumps(params))
    return paths


def timed_build(config, *, source: str, out: str, index, workers: int):
    """``pipe build``'s own code on a Dask cluster started before the clock (its ~2 s start-up is
    paid once per build, not per clip): the build report and its seconds."""
    import time

    from pipeline.build import build, make_client

    client = make_client(workers=workers)
    try:
        started = time.perf_counter()
        report = build(config, source=source, out=out, index=index, client=client, progress=False)
        seconds = time.perf_counter() - started
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    if report.n_failed:
        raise SystemExit(f"the build failed on {report.n_failed} clips: {report.failures[:3]}")
    return report, seconds
