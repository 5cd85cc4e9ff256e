"""Track stores from MP3s real encoders wrote: this muzarr against an earlier checkout, the same files, one run.

Issue #21 changed how a track store is planned (each file's bound, tracks placed at the lengths they
decode to, batches that outgrow their region placed again) and how MP3s are read (frames counted where
the header gives no length). This measures what that costs, on two sets of files made with ``lame``:

* ``jamendo``: VBR (``-V 2``) at 44.1 kHz stereo, 30 s to 3 min, each with its Xing header (the length
  libsndfile reports is the encoder's, so the earlier code stores every track too);
* ``mtat``: CBR 32 kbps at 16 kHz mono with an ID3v2 tag and no Xing header (``-t``), 29.1 s, as MagnaTagATune's
  clips are: the length is an estimate from the file size, which the earlier code refused when it was
  off (``decoded to ... but its probe planned ...``).

For each set and each checkout (``--baseline``, run from its own source tree), ``--rounds`` builds
of ``pipe build folder --set clip.mode=track`` with a 16 kHz waveform and the MTAT log-mel (96 mels at
12 kHz), interleaved; reported: tracks stored and failed, tracks per second (wall time of the whole
command: cluster start, probes, batches), and the padding of each time array. Then 59,049-sample
waveform crops per second (shuffled, batches of 32, whole epochs) from each finished store, with this
checkout's reader (the layout on disk is the same).

Usage: python benchmarks/track_build.py --baseline /path/to/earlier/checkout [--tracks 32] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_throughput import BATCH, run

from pipeline.datasets.demo import _draw_recipe, synthesise

FEATURES = ["--waveform", "sample_rate=16000", "--logmel", "n_mels=96,sample_rate=12000,n_fft=512,hop_length=256,pad_frames=37",
            "--only"]  # fmt: skip


def make_set(name: str, folder: Path, n_tracks: int) -> None:
    """``n_tracks`` MP3s in two class folders, encoded by lame (the soundfile writer where lame is missing)."""
    rng = np.random.default_rng(7)
    seconds = np.exp(rng.uniform(np.log(30), np.log(180), n_tracks)) if name == "jamendo" else np.full(n_tracks, 29.1)
    # MTAT's clips carry an ID3v2 tag and no Xing header: libsndfile estimates their length from the file size
    mtat = ["-t", "-b", "32", "--add-id3v2", "--pad-id3v2-size", "4000", "--tt", "clip"]
    rate, channels, args = (44100, 2, ["-V", "2"]) if name == "jamendo" else (16000, 1, mtat)
    for k, length in enumerate(seconds):
        audio = synthesise(_draw_recipe(rng), seconds=float(length), rng=np.random.default_rng([2, k]), sr=rate)
        audio = np.stack([audio, np.roll(audio, 37)], axis=1) if channels == 2 else audio
        out = folder / "ab"[k % 2] / f"{name}_{k:03d}.mp3"
        out.parent.mkdir(parents=True, exist_ok=True)
        if shutil.which("lame"):
            wav = out.with_suffix(".wav")
            soundfile.write(wav, audio, rate, subtype="PCM_16")
            subprocess.run(["lame", "--quiet", *args, str(wav), str(out)], check=True)
            wav.unlink()
        else:
            soundfile.write(out, audio, rate, format="MP3")


def build(tree: Path | None, source: Path, out: Path, workers: int) -> tuple[float, str]:
    """Seconds of one ``pipe build`` (of ``tree``'s code, or this checkout's) and what it printed."""
    env = {**os.environ, **({"PYTHONPATH": str(tree)} if tree else {})}
    command = [sys.executable, "-m", "pipeline.cli", "build", "folder", "--source", str(source), "--out", str(out),
               "--set", "clip.mode=track", "--set", "batch_clips=8", *FEATURES, "--workers", str(workers), "--quiet",
               "--overwrite"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree or Path.cwd(), check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{command} failed: {done.stderr}")
    return seconds, done.stdout


def describe(url: Path) -> dict:
    from pipeline import open_store

    store = open_store(str(url))
    padding = {}
    for name, info in store.arrays.items():
        if info.extents:
            padding[name] = 1 - int(store.extents(name)[:, 1].sum()) / max(1, info.shape[-1])
    return {"ok": int(store.ok.sum()), "failed": int((~store.ok).sum()), "padding": padding, "store": store}


def crop_rates(stores: dict[str, Path], rounds: int) -> dict[str, list[float]]:
    from pipeline import open_store
    from training.data import SplitReader, TrainStream, plan_examples
    from training.models import MODELS

    counter = itertools.count()
    methods = {}
    for label, url in stores.items():
        store = open_store(str(url))
        plan = plan_examples(store, MODELS["short_res"].input)
        rows = np.flatnonzero(store.ok)
        reader = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False)

        def make(reader=reader):
            stream = TrainStream(reader, batch_size=BATCH, seed=0, buffer_clips=256, shuffle=True)
            stream.set_epoch(next(counter))
            return stream

        methods[label] = make
    return run(methods, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the earlier muzarr (git worktree add)")
    parser.add_argument("--tracks", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="keep the MP3s here between runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="muzarr_track_build_"))
    data = args.data or work / "audio"
    try:
        for name in ("jamendo", "mtat"):
            source = data / name
            if not source.exists():
                make_set(name, source, args.tracks)
            trees = {"this checkout": None, f"baseline ({args.baseline.name})": args.baseline.resolve()}
            times = {label: [] for label in trees}
            for k in range(args.rounds):  # interleaved, each round starting with the other tree
                for label in list(trees)[k % 2 :] + list(trees)[: k % 2]:
                    seconds, _ = build(trees[label], source, work / f"{name}-{label[:4]}.zarr", args.workers)
                    times[label].append(seconds)
            hours = sum(soundfile.info(str(p)).duration for p in source.rglob("*.mp3")) / 3600
            print(f"\n{name}: {args.tracks} tracks, {hours:.2f} h of audio, {args.workers} workers, {args.rounds} rounds\n")
            print("| checkout | stored | failed | tracks/s (median) | padding waveform | padding log-mel |\n|---|---|---|---|---|---|")
            stores = {}
            for label in trees:
                url = work / f"{name}-{label[:4]}.zarr"
                found = describe(url)
                stores[label] = url
                pads = list(found["padding"].values())
                rate = args.tracks / float(np.median(times[label]))
                print(f"| {label} | {found['ok']} | {found['failed']} | {rate:.2f} | {pads[0]:.2%} | {pads[1]:.2%} |")
            rates = crop_rates(stores, args.rounds)
            print("\n| store | crops/s (median) |\n|---|---|")
            for label, values in rates.items():
                print(f"| {label} | {np.median(values):,.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
