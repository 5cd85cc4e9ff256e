"""Loader throughput: muzarr's crop stream against Won et al.'s real loader and the old store layout.

One run, the same clips (MTAT-like: 29.12 s at 16 kHz), page cache warm for every method:

- (a) waveform crops of 59,049 samples (``short_res``, ``sample_cnn``) of 465,920-sample int16 clips;
- (b) log-mel crops of 188 frames of 96 x 1440 float16 clips (96 mels at 12 kHz, hop 256, pad 37).

For each, batches of 32 float32 examples from:

1. muzarr, shuffled: ``TrainStream`` (shards permuted, crops read through ``pipeline.store.arrays``:
   only the time chunks a crop overlaps, each checked against its crc32c), buffer of 256 clips;
2. the same with ``--no-verify-reads`` (what the crc32c checks cost);
3. muzarr, sequential: the same reader and crops in store order;
4. the old layout (store layout 1's chunking: whole-clip chunks, blosc lz4), shuffled, the same stream;
5. Won et al.'s loader (``minzwon/sota-music-tagging-models``, ``training/data_loader/mtat_loader.py``):
   one ``.npy`` per clip as his preprocessing writes it (float32 16 kHz audio; log-mels float16),
   ``np.load(path, mmap_mode='r')`` per item, a random crop copied out, a ``DataLoader``
   batching, shuffled; and 6. the same in order.

The store is built by ``pipe build``'s own code; the old layout (and, with ``--candidates``, other
time-chunk lengths and codecs) are copies of its arrays written by zarr-python. Each method runs
once to warm up, then ``--rounds`` times, the methods interleaved (each round starting one method
later); each time it runs whole epochs until ``--min-seconds`` have passed (an epoch of the default
store takes ~0.1 s: timed alone, one stall of the machine halves a figure); medians are reported.

Then whole tracks (a track store, clip mode ``track``, of ``--tracks`` WAV files of 30 s to 10 min): the
same ``short_res`` crops from muzarr's stream against Won et al.'s MTG-Jamendo loader
(``training/data_loader/jamendo_loader.py``: one float32 ``.npy`` per track, mmap, random crop copied).

Usage: python benchmarks/loader_throughput.py [--clips 600] [--rounds 7] [--workers 0] [--tracks 48] [--min-seconds 3] [--candidates]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECONDS, RATE = 29.12, 16000
WAVE_CROP, N_MELS, N_FRAMES, MEL_CROP = 59049, 96, 1440, 188
LOGMEL = "logmel/mel96_sr12000_fft512_hop256_pad37"
BATCH = 32


def make_store(url: Path, n_clips: int, audio: Path) -> None:
    """A real store built by ``pipeline.build.build`` from MTAT-like MP3s (reused to reach ``n_clips``)."""
    from _synth import make_mtat_like

    from pipeline.build import build
    from pipeline.config import BuildConfig
    from pipeline.index import DatasetIndex

    paths = make_mtat_like(audio, n_clips=min(n_clips, 300))
    rel = [str(paths[i % len(paths)].relative_to(audio)) for i in range(n_clips)]
    rng = np.random.default_rng(0)
    config = BuildConfig.from_dict(
        {
            "dataset": "synthetic", "recipe": "folder", "task": "multilabel", "splits": ["random"],
            "clip": {"mode": "full", "seconds": SECONDS}, "batch_clips": 16,
            "features": [
                {"kind": "waveform", "sample_rate": RATE},
                {"kind": "logmel", "sample_rate": 12000, "n_mels": N_MELS, "n_fft": 512, "hop_length": 256, "pad_frames": 37},
            ],
        }
    )
    index = DatasetIndex(
        root=str(audio), clips=pd.DataFrame({"clip_id": [f"c{i}" for i in range(n_clips)], "path": rel}),
        task="multilabel", classes=tuple(f"t{j}" for j in range(50)),
        labels=(rng.random((n_clips, 50)) < 0.1).astype(np.uint8), splits=pd.DataFrame({"random": ["train"] * n_clips}),
    )
    build(config, source=str(audio), out=str(url), index=index, progress=False)


def relayout(src: Path, dst: Path, name: str, *, chunks: tuple, shards: tuple, compressors: list) -> None:
    """A copy of store ``src`` whose array ``name`` is written by zarr-python with other chunks and codecs
    (the other feature arrays are left out: only ``name`` is read from the copy)."""
    import zarr

    from pipeline import open_store

    arrays = open_store(str(src)).arrays
    big = {n.split("/")[0] for n in arrays}
    shutil.copytree(src, dst, ignore=lambda folder, names: [n for n in names if Path(folder) == src and n in big])
    source = zarr.open_array(str(src / name), mode="r")
    target = zarr.create_array(
        str(dst / name), shape=source.shape, chunks=chunks, shards=shards, dtype=source.dtype, fill_value=0,
        compressors=compressors, config={"write_empty_chunks": True}, attributes=dict(source.attrs), overwrite=True,
    )
    for start in range(0, source.shape[0], shards[0]):
        target[start : start + shards[0]] = source[start : start + shards[0]]
    meta = json.loads((dst / "zarr.json").read_text())
    meta["attributes"]["muzarr"]["arrays"][name].update(chunks=list(chunks), shards=list(shards))
    (dst / "zarr.json").write_text(json.dumps(meta))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_npy(folder: Path, url: Path, name: str) -> list[Path]:
    """Won et al.'s files: ``np.save`` per clip; waveforms as his preprocessing writes them (float32)."""
    from pipeline import open_store

    store = open_store(str(url))
    array = store.array(name)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(store.n_clips):
        path = folder / f"{i}.npy"
        clip = array[i]
        np.save(path, clip.astype(np.float32) / 32768 if clip.dtype == np.int16 else clip)
        paths.append(path)
    return paths


class WonDataset(torch.utils.data.Dataset):
    """``mtat_loader.AudioFolder.get_raw``: mmap the clip's .npy, copy a random crop, float32."""

    def __init__(self, paths, labels, length: int):
        self.paths, self.labels, self.length = paths, labels, length

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        raw = np.load(self.paths[i], mmap_mode="r")
        random_idx = int(np.floor(np.random.random(1)[0] * (raw.shape[-1] - self.length)))
        raw = np.array(raw[..., random_idx : random_idx + self.length])
        return raw.astype("float32"), self.labels[i].astype("float32")


MIN_SECONDS = 3.0  # one measurement: whole epochs, repeated until this long (an epoch of 600 clips is ~0.1 s)


def epoch_rate(make, min_seconds: float = 0.0) -> float:
    """Examples/s of whole epochs of ``make()``, repeated until ``min_seconds`` have passed.

    One epoch of the default store takes about 0.1 s: timed alone, a single stall of the
    machine (a page reclaim, a collection) halves a round's figure. An untimed epoch comes
    first, so each measurement starts warm whichever method ran before it in this process.
    """
    if min_seconds:
        sum(len(batch[0]) for batch in make())
    n, elapsed = 0, 0.0
    while True:
        batches = make()
        start = time.perf_counter()
        n += sum(len(batch[0]) for batch in batches)
        elapsed += time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed


def methods_for(url: Path, old: Path, npy: list[Path], name: str, plan, workers: int) -> dict:
    from pipeline import open_store
    from training.data import SplitReader, TrainStream

    def reader(at: Path, verify: bool = True) -> SplitReader:
        store = open_store(str(at))
        rows = store.split("random", "train")
        return SplitReader(store, plan, rows, store.label_matrix[rows], cache=False, verify=verify)

    new, unverified, old_reader = reader(url), reader(url, verify=False), reader(old)
    labels = open_store(str(url)).label_matrix

    epochs = itertools.count()

    def stream(source, shuffle=True):  # a new epoch each time: new crops, as Won's loader draws
        s = TrainStream(source, batch_size=BATCH, seed=0, buffer_clips=256, shuffle=shuffle, workers=workers)
        s.set_epoch(next(epochs))
        return s

    def won(shuffle):
        dataset = WonDataset(npy, labels, plan.length)
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=shuffle, num_workers=workers)

    return {
        "muzarr shuffled stream": lambda: stream(new),
        "muzarr shuffled, reads not verified (--no-verify-reads)": lambda: stream(unverified),
        "muzarr sequential read": lambda: stream(new, shuffle=False),
        "old layout (whole-clip chunks, lz4), shuffled stream": lambda: stream(old_reader),
        "Won et al.'s loader (np.load mmap, crop copy), shuffled": lambda: won(True),
        "Won et al.'s loader, sequential": lambda: won(False),
    }


def run(methods: dict, rounds: int, min_seconds: float = MIN_SECONDS) -> dict[str, list[float]]:
    for make in methods.values():  # warm-up: page cache and imports alike for all
        epoch_rate(make)
    # Rounds interleave the methods, so a slow spell of a shared machine hits all of them, and each
    # round starts one method later, so no method always runs after the same other one.
    runs = {label: [] for label in methods}
    labels = list(methods)
    for k in range(rounds):
        for label in labels[k % len(labels) :] + labels[: k % len(labels)]:
            runs[label].append(epoch_rate(methods[label], min_seconds))
    return runs


def table(title: str, runs: dict[str, list[float]], reference: str, sequential: str) -> None:
    def paired(label, other):
        return float(np.median(np.array(runs[label]) / np.array(runs[other])))

    print(f"\n{title}\n\n| method | samples/s (median) | rounds | vs Won shuffled | vs muzarr sequential |\n|---|---|---|---|---|")
    for label, rates in runs.items():
        spread = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"| {label} | {np.median(rates):,.0f} | {spread} | {paired(label, reference):.2f}x | {paired(label, sequential):.2f}x |")


def candidates(url: Path, work: Path, rounds: int) -> None:
    """Crop reads/s and bytes on disk of other time-chunk lengths and codecs (what chose the layout)."""
    from zarr.codecs import Crc32cCodec

    from pipeline import open_store
    from pipeline.store.layout import compressor
    from training.data import ExamplePlan, SplitReader, TrainStream

    store = open_store(str(url))
    print("\n| array | chunk (time) | codecs | bytes on disk | crop reads/s (median) |\n|---|---|---|---|---|")
    specs = [("waveform", (465920,), WAVE_CROP, [14560, 33280, 116480]),
             (LOGMEL, (N_MELS, N_FRAMES), MEL_CROP, [48, 96, 288])]  # fmt: skip
    for name, clip_shape, length, steps in specs:
        for step in steps:
            for label, codecs in (("crc32c", [Crc32cCodec()]), ("lz4+crc32c", [compressor(), Crc32cCodec()])):
                at = work / f"cand_{name.replace('/', '_')}_{step}_{label}.zarr"
                relayout(url, at, name, chunks=(1, *clip_shape[:-1], step), shards=(16, *clip_shape),
                         compressors=codecs)  # fmt: skip
                rows = store.split("random", "train")
                plan = ExamplePlan(name, clip_shape, length, 1)
                reader = SplitReader(open_store(str(at)), plan, rows, store.label_matrix[rows], cache=False)
                runs = run({"x": lambda r=reader: TrainStream(r, batch_size=BATCH, seed=0, buffer_clips=256)}, rounds)
                seconds = step / (RATE if name == "waveform" else 12000 / 256)
                print(f"| {name} | {step} ({seconds:.2f} s) | {label} | {folder_bytes(at / name):,} | {np.median(runs['x']):,.0f} |")
                shutil.rmtree(at)


TRACK_EPOCHS = 8  # a track store's epoch is one crop per track: several epochs make one timed pass


def make_track_store(url: Path, audio: Path, n_tracks: int) -> np.ndarray:
    """A track store (clip mode track, waveforms at 16 kHz) of ``n_tracks`` WAV files of 30 s to 10 min
    (log-uniform lengths), built by ``pipe build``'s own code; returns the lengths in seconds."""
    import soundfile

    from pipeline.build import build
    from pipeline.config import BuildConfig
    from pipeline.index import DatasetIndex

    rng = np.random.default_rng(0)
    seconds = np.exp(rng.uniform(np.log(30), np.log(600), n_tracks)).round(1)
    audio.mkdir(parents=True, exist_ok=True)
    for i, length in enumerate(seconds):
        noise = np.random.default_rng([2, i]).standard_normal(int(length * RATE)).astype(np.float32)
        soundfile.write(audio / f"t{i:04d}.wav", 0.1 * noise, RATE, subtype="PCM_16")
    config = BuildConfig.from_dict({
        "dataset": "tracks", "recipe": "folder", "task": "multilabel", "splits": ["random"],
        "clip": {"mode": "track"}, "batch_clips": 16, "features": [{"kind": "waveform", "sample_rate": RATE}],
    })  # fmt: skip
    index = DatasetIndex(
        root=str(audio), clips=pd.DataFrame({"clip_id": [f"t{i}" for i in range(n_tracks)],
                                             "path": [f"t{i:04d}.wav" for i in range(n_tracks)]}),
        task="multilabel", classes=tuple(f"t{j}" for j in range(50)),
        labels=(rng.random((n_tracks, 50)) < 0.1).astype(np.uint8), splits=pd.DataFrame({"random": ["train"] * n_tracks}),
    )  # fmt: skip
    build(config, source=str(audio), out=str(url), index=index, progress=False)
    return seconds


class WonTracks(torch.utils.data.Dataset):
    """``jamendo_loader.AudioFolder.get_npy``: mmap the track's .npy, copy a random crop, float32."""

    def __init__(self, paths, labels, length: int):
        self.paths, self.labels, self.length = paths, labels, length

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        npy = np.load(self.paths[i], mmap_mode="r")
        random_idx = int(np.floor(np.random.random(1)[0] * (len(npy) - self.length)))
        npy = np.array(npy[random_idx : random_idx + self.length])
        return npy.astype("float32"), self.labels[i].astype("float32")


def tracks(work: Path, n_tracks: int, rounds: int, workers: int, min_seconds: float = MIN_SECONDS) -> None:
    """Waveform crops of whole tracks (30 s to 10 min): muzarr's track store against one .npy per track."""
    from pipeline import open_store
    from training.data import SplitReader, TrainStream, plan_examples
    from training.models import MODELS

    url = work / "tracks.zarr"
    seconds = make_track_store(url, work / "track_audio", n_tracks)
    store = open_store(str(url))
    folder = work / "npy_tracks"
    folder.mkdir()
    paths = []
    for row in range(store.n_clips):  # Won's preprocessing: float32 audio at 16 kHz, one file per track
        paths.append(folder / f"{row}.npy")
        np.save(paths[-1], store.track("waveform", row).astype(np.float32) / 32768)
    plan = plan_examples(store, MODELS["short_res"].input)
    rows = store.split("random", "train")
    reader = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False)

    counter = itertools.count()

    def epochs(make):
        def timed():  # new epochs every time: new crops
            for _ in range(TRACK_EPOCHS):
                yield from make(next(counter))
        return timed

    def stream(epoch, shuffle=True):
        s = TrainStream(reader, batch_size=BATCH, seed=0, buffer_clips=256, shuffle=shuffle, workers=workers)
        s.set_epoch(epoch)
        return s

    def won(_epoch, shuffle=True):
        dataset = WonTracks(paths, store.label_matrix, plan.length)
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=shuffle, num_workers=workers)

    methods = {
        "muzarr track store, shuffled stream": epochs(stream),
        "muzarr track store, sequential read": epochs(lambda e: stream(e, shuffle=False)),
        "Won et al.'s jamendo loader (.npy per track, mmap crop), shuffled": epochs(won),
        "Won et al.'s jamendo loader, sequential": epochs(lambda e: won(e, shuffle=False)),
    }
    runs = run(methods, rounds, min_seconds)
    padding = 1 - store.extents("waveform")[:, 1].sum() / store.arrays["waveform"].shape[-1]
    table(f"{plan.length}-sample crops of {n_tracks} whole tracks ({seconds.min():.0f} s to {seconds.max():.0f} s, "
          f"median {np.median(seconds):.0f} s, {seconds.sum() / 3600:.1f} h; padding {padding:.2%}), {TRACK_EPOCHS} epochs "
          "per round", runs, "Won et al.'s jamendo loader (.npy per track, mmap crop), shuffled",
          "muzarr track store, sequential read")  # fmt: skip
    print(f"\n| whole tracks | bytes on disk |\n|---|---|\n| muzarr track store (waveform) | {folder_bytes(url / 'waveform'):,} |"
          f"\n| Won's .npy per track (float32) | {folder_bytes(folder):,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--workers", type=int, default=0, help="loader workers, muzarr's and Won's alike")
    parser.add_argument("--rounds", type=int, default=7, help="timed epochs per method (median reported)")
    parser.add_argument("--min-seconds", type=float, default=MIN_SECONDS, help="each measurement: whole epochs for this long")
    parser.add_argument("--candidates", action="store_true", help="also measure other time-chunk lengths and codecs")
    parser.add_argument("--audio", type=Path, default=Path(tempfile.gettempdir()) / "muzarr_mtat_like")
    parser.add_argument("--tracks", type=int, default=48, help="whole tracks of 30 s to 10 min (0: skip that part)")
    args = parser.parse_args()

    from zarr.codecs import BloscCodec

    from pipeline import open_store
    from training.data import ExamplePlan

    work = Path(tempfile.mkdtemp(prefix="muzarr_loader_"))
    try:
        url = work / "synthetic.zarr"
        started = time.perf_counter()
        make_store(url, args.clips, args.audio)
        print(f"{args.clips} clips built in {time.perf_counter() - started:.0f} s; batches of {BATCH}, "
              f"{args.workers} loader workers, {args.rounds} rounds; ratios are medians of per-round ratios")  # fmt: skip
        arrays = open_store(str(url)).arrays
        old_lz4 = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]  # layout 1's codecs
        sizes = []
        for name, clip_shape, length, old_chunk in (
            ("waveform", (465920,), WAVE_CROP, 1), (LOGMEL, (N_MELS, N_FRAMES), MEL_CROP, 2)
        ):  # fmt: skip
            old = work / f"old_{name.replace('/', '_')}.zarr"
            relayout(url, old, name, chunks=(old_chunk, *clip_shape), shards=(16, *clip_shape), compressors=old_lz4)
            npy = make_npy(work / f"npy_{name.replace('/', '_')}", url, name)
            plan = ExamplePlan(name, clip_shape, length, 1)
            runs = run(methods_for(url, old, npy, name, plan, args.workers), args.rounds, args.min_seconds)
            info = arrays[name]
            what = f"{length}-{'sample' if name == 'waveform' else 'frame'} crops of {name} {list(info.shape[1:])} {info.dtype}"
            table(f"{what}, chunks {list(info.chunks)} in shards {list(info.shards)}", runs,
                  "Won et al.'s loader (np.load mmap, crop copy), shuffled", "muzarr sequential read")  # fmt: skip
            sizes += [
                (f"{name}, layout 2 (as built)", folder_bytes(url / name)),
                (f"{name}, old layout (whole-clip chunks, lz4)", folder_bytes(old / name)),
                (f"{name}, Won's .npy per clip", folder_bytes(work / f"npy_{name.replace('/', '_')}")),
            ]
            shutil.rmtree(old)
        print("\n| layout | bytes on disk |\n|---|---|")
        for label, size in sizes:
            print(f"| {label} | {size:,} |")
        if args.tracks:
            tracks(work, args.tracks, args.rounds, args.workers, args.min_seconds)
        if args.candidates:
            candidates(url, work, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
