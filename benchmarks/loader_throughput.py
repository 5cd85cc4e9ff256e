"""Loader throughput: a shuffled epoch from a store vs a sequential read vs one .npy file per clip.

Same synthetic log-mel data (MTAT's CRNN input: 96 x 1440 float16 per clip) in one run:

1. muzarr, shuffled epoch: ``TrainStream`` (chunk order permuted, buffer-shuffled examples),
   streaming from the store (no RAM cache), batches of 32, random 3 s crops;
2. muzarr, sequential: the same reader, crops and batches in store order, no shuffling;
   (1b. the shuffled epoch with ``verify=False``: what checking every clip against its digest costs;
   1c. the shuffled epoch with 1 and 2 loader workers, ``train --workers N``: the same batches;)
3. muzarr, naive shuffle: one ``Store.read`` per clip in random order (what a map-style
   Dataset over a Zarr array does);
4. ``.npy`` per clip (Won et al.'s layout): a map-style Dataset that ``np.load``-s one file per
   item in a shuffled order, batched by a DataLoader.

The store is built by ``pipe build``'s own code from the MTAT-like MP3s of
``build_throughput.py``. Each method is timed for a full epoch after one warm-up epoch (the files are then in the page cache
for every method alike), then ``--rounds`` times, the methods interleaved; the median is
reported. Usage: python benchmarks/loader_throughput.py [--clips 2000] [--workers 0] [--rounds 7] [--step-ms 0]
(``--step-ms 10``: each batch is followed by a 10 ms wait that uses no CPU, as a step on a GPU
is, so that loader workers can show what they overlap.)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

N_MELS, N_FRAMES, CROP = 96, 1440, 188


def make_store(url: Path, n_clips: int, audio: Path) -> None:
    """A real store built by `pipeline.build.build` from the MTAT-like MP3s (reused to reach n_clips)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
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
            "clip": {"mode": "full", "seconds": 29.12}, "batch_clips": 32,
            "features": [{"kind": "logmel", "sample_rate": 12000, "n_mels": N_MELS, "n_fft": 512, "hop_length": 256, "pad_frames": 37}],
        }
    )
    index = DatasetIndex(
        root=str(audio), clips=pd.DataFrame({"clip_id": [f"c{i}" for i in range(n_clips)], "path": rel}),
        task="multilabel", classes=tuple(f"t{j}" for j in range(50)),
        labels=(rng.random((n_clips, 50)) < 0.1).astype(np.uint8), splits=pd.DataFrame({"random": ["train"] * n_clips}),
    )
    build(config, source=str(audio), out=str(url), index=index, progress=False)


def make_npy(folder: Path, url: Path) -> list[Path]:
    from pipeline import open_store

    store = open_store(str(url))
    array = store.array(next(iter(store.arrays)))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(store.n_clips):
        path = folder / f"{i}.npy"
        np.save(path, array[i])
        paths.append(path)
    return paths


class NpyDataset(torch.utils.data.Dataset):
    """Won et al.'s loader: one file per clip, a random crop per item."""

    def __init__(self, paths, labels):
        self.paths, self.labels = paths, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        data = np.load(self.paths[i])
        start = np.random.randint(0, data.shape[-1] - CROP)
        return torch.from_numpy(data[:, start : start + CROP].astype(np.float32)), torch.from_numpy(self.labels[i])


STEP_SECONDS = 0.0  # --step-ms: a training step that waits without using the CPU, as one on a GPU does


def epoch_rate(batches) -> float:
    start = time.perf_counter()
    n = 0
    for batch in batches:
        n += len(batch[0])
        if STEP_SECONDS:
            time.sleep(STEP_SECONDS)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the .npy baseline")
    parser.add_argument("--rounds", type=int, default=7, help="timed epochs per method (median reported)")
    parser.add_argument("--step-ms", type=float, default=0.0,
                        help="after each batch, wait this long (a GPU step): what loader workers overlap")  # fmt: skip
    parser.add_argument("--audio", type=Path, default=Path(tempfile.gettempdir()) / "muzarr_mtat_like")
    args = parser.parse_args()
    global STEP_SECONDS
    STEP_SECONDS = args.step_ms / 1000

    from pipeline import open_store
    from training.data import ExamplePlan, SplitReader, TrainStream

    work = Path(tempfile.mkdtemp(prefix="muzarr_loader_"))
    try:
        url = work / "synthetic.zarr"
        make_store(url, args.clips, args.audio)
        paths = make_npy(work / "npy", url)
        store = open_store(str(url))
        name = next(iter(store.arrays))
        rows = store.split("random", "train")
        plan = ExamplePlan(name, (N_MELS, N_FRAMES), CROP, 1)
        reader = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False)
        unverified = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False, verify=False)

        def shuffled(source=reader):
            return TrainStream(source, batch_size=32, seed=0, buffer_clips=256)

        # train --workers N: N processes decode shards ahead, started once and kept for every epoch
        kept = {n: TrainStream(reader, batch_size=32, seed=0, buffer_clips=256, workers=n) for n in (1, 2)}

        def with_workers(n):
            kept[n].set_epoch(kept[n].epoch + 1)
            return kept[n]

        def sequential():  # the same reader, crops and batches, in store order
            return TrainStream(reader, batch_size=32, seed=0, buffer_clips=256, shuffle=False)

        def naive():
            order = np.random.default_rng(0).permutation(len(rows))
            for start in range(0, len(order), 32):
                batch = [store.read(name, int(rows[i]))[:, :CROP] for i in order[start : start + 32]]
                yield np.stack(batch).astype(np.float32), None

        def npy():
            dataset = NpyDataset(paths, store.label_matrix)
            return torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, num_workers=args.workers)

        methods = {
            "muzarr shuffled epoch (chunk-aware)": shuffled,
            "muzarr shuffled epoch, reads not verified (--no-verify-reads)": lambda: shuffled(unverified),
            "muzarr shuffled epoch, 1 loader worker (--workers 1)": lambda: with_workers(1),
            "muzarr shuffled epoch, 2 loader workers (--workers 2)": lambda: with_workers(2),
            "muzarr sequential read": sequential,
            "Zarr, one read per clip in random order": naive,
            ".npy file per clip, shuffled (Won et al.)": npy,
        }
        for make in methods.values():  # warm-up: page cache and imports alike for all
            epoch_rate(make())
        # Rounds interleave the methods, so a slow spell of a shared machine hits all of them;
        # each method's figure is its median epoch.
        runs = {label: [] for label in methods}
        for _ in range(args.rounds):
            for label, make in methods.items():
                runs[label].append(epoch_rate(make()))
        rates = {label: float(np.median(r)) for label, r in runs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def paired(label: str, reference: str) -> float:
        # The ratio within each round (same spell of the machine), then its median.
        return float(np.median(np.array(runs[label]) / np.array(runs[reference])))

    sequential, npy_label = "muzarr sequential read", ".npy file per clip, shuffled (Won et al.)"
    print(
        f"{args.clips} clips of {N_MELS}x{N_FRAMES} float16, crops of {CROP} frames, batch 32, {args.workers} workers, "
        f"{args.rounds} rounds, {args.step_ms:g} ms step per batch; ratios are medians of the per-round ratios"
    )
    print("\n| method | samples/s (median) | epochs | vs sequential | vs .npy |\n|---|---|---|---|---|")
    for label, rate in rates.items():
        spread = ", ".join(f"{r:,.0f}" for r in runs[label])
        print(f"| {label} | {rate:,.0f} | {spread} | {paired(label, sequential):.2f}x | {paired(label, npy_label):.2f}x |")


if __name__ == "__main__":
    main()
