"""Build throughput: `pipe build` against decode-only and the hand-written loop of the seed reports.

Same files, same machine, one run:

1. decode only, the ceiling: every MP3 decoded with soundfile by N worker processes;
2. the audio floor: decode, then soxr HQ to 12 kHz (muzarr's own `load_clip`), N processes:
   the work no implementation of this job can skip, and that the hand loop does too;
3. muzarr: `pipeline.build.build` with a 16 kHz waveform and the two MTAT log-mel variants
   (96 mels @ 12 kHz n_fft 512 hop 256 pad 37; 64 mels @ 16 kHz n_fft 1024 hop 512), N workers;
4. the hand-written loop: per file `librosa.load` at 16 kHz and at 12 kHz, two
   `librosa.feature.melspectrogram` + `power_to_db`, three `np.save` (one process, as the
   seed reports ran it).

Usage: python benchmarks/build_throughput.py [--clips 320] [--workers 2] [--rounds 3] [--data /tmp/mtat_like]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synth import make_mtat_like, timed_build


def _decode(path: str) -> int:
    import soundfile

    data, _ = soundfile.read(path, dtype="float32")
    return len(data)


def _decode_resample(path: str) -> int:
    from pipeline.audio import ClipPolicy, load_clip

    clips = load_clip(path, rates=(12000, 16000), policy=ClipPolicy(mode="full", seconds=29.1))
    return len(clips.audio[12000])


def in_processes(work, paths: list[Path], workers: int) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(work, map(str, paths), chunksize=8))
    return time.perf_counter() - start


def hand_loop(paths: list[Path], out: Path) -> float:
    import librosa

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in paths:
        y16, _ = librosa.load(path, sr=16000)
        y12, _ = librosa.load(path, sr=12000)
        mel96 = librosa.power_to_db(
            librosa.feature.melspectrogram(y=y12, sr=12000, n_fft=512, hop_length=256, n_mels=96), ref=1.0
        )
        mel96 = np.pad(mel96, [(0, 0), (37, 37)])
        mel64 = librosa.power_to_db(
            librosa.feature.melspectrogram(y=y16, sr=16000, n_fft=1024, hop_length=512, n_mels=64), ref=1.0
        )
        np.save(out / f"{path.stem}.wav16k.npy", y16)
        np.save(out / f"{path.stem}.mel96.npy", mel96)
        np.save(out / f"{path.stem}.mel64.npy", mel64)
    return time.perf_counter() - start


def muzarr_build(paths: list[Path], root: Path, out: Path, workers: int) -> float:
    import pandas as pd

    from pipeline.config import BuildConfig
    from pipeline.index import DatasetIndex

    config = BuildConfig.from_dict(
        {
            "dataset": "mtat_like", "recipe": "folder", "task": "multiclass", "splits": ["random"],
            "clip": {"mode": "full", "seconds": 29.1}, "batch_clips": 16,
            "features": [
                {"kind": "waveform", "sample_rate": 16000},
                {"kind": "logmel", "sample_rate": 12000, "n_mels": 96, "n_fft": 512, "hop_length": 256, "pad_frames": 37},
                {"kind": "logmel", "sample_rate": 16000, "n_mels": 64, "n_fft": 1024, "hop_length": 512},
            ],
        }
    )
    rel = [str(p.relative_to(root)) for p in paths]
    index = DatasetIndex(
        root=str(root), clips=pd.DataFrame({"clip_id": [p.stem for p in paths], "path": rel}), task="multiclass",
        classes=("x",), labels=np.zeros(len(paths), np.int16), splits=pd.DataFrame({"random": ["train"] * len(paths)}),
    )
    _, elapsed = timed_build(config, source=str(root), out=str(out), index=index, workers=workers)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 320 = 20 shards of 16: both workers get the same number of batches (with 300 one of
    # them idles through the last one, a start-up artefact a 25,000-clip build does not have).
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all three methods (median reported)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "muzarr_mtat_like")
    args = parser.parse_args()

    t = time.perf_counter()
    paths = make_mtat_like(args.data, n_clips=args.clips)
    print(f"{len(paths)} MP3 clips of 29.1 s at 16 kHz in {args.data} ({time.perf_counter() - t:.0f} s to make)")
    work = Path(tempfile.mkdtemp(prefix="muzarr_bench_"))
    methods = {
        f"decode only ({args.workers} processes, the ceiling)": lambda r: in_processes(_decode, paths, args.workers),
        f"decode + soxr to 12 kHz ({args.workers} processes, the audio floor)": lambda r: in_processes(
            _decode_resample, paths, args.workers
        ),
        f"pipe build: waveform + 2 log-mels ({args.workers} workers)": lambda r: muzarr_build(
            paths, args.data, work / f"store{r}.zarr", args.workers
        ),
        "hand-written loop (librosa.load x2, melspectrogram x2, np.save; 1 process)": lambda r: hand_loop(
            paths, work / f"npy{r}"
        ),
    }
    runs: dict[str, list[float]] = {name: [] for name in methods}
    try:
        in_processes(_decode, paths[:16], args.workers)  # warm the page cache: every method then reads from memory
        # Rounds run the methods one after another, so a slow spell of a shared machine hits
        # all of them; each method's figure is its median round.
        for r in range(args.rounds):
            for name, run in methods.items():
                runs[name].append(run(r))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {name: float(np.median(seconds)) for name, seconds in runs.items()}
    hand = next(k for k in results if k.startswith("hand"))
    print(f"\n{len(paths)} clips, {args.rounds} rounds; 'vs hand loop' is the median of the per-round ratios")
    print("| method | seconds (median) | rounds (s) | clips/s | vs hand loop |\n|---|---|---|---|---|")
    for name, seconds in results.items():
        spread = ", ".join(f"{s:.1f}" for s in runs[name])
        ratio = float(np.median(np.array(runs[hand]) / np.array(runs[name])))  # within a round: same machine spell
        print(f"| {name} | {seconds:.1f} | {spread} | {len(paths) / seconds:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
