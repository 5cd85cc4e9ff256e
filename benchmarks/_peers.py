"""The peers of ``benchmarks/peers.py``: each builds and reads the set as its own documentation recommends.

Every peer stores what muzarr's MTAT entry stores: the 16 kHz waveform (clip length 29.12 s) and the
96-mel log-mel at 12 kHz (n_fft 512, hop 256, 37 zero frames each side), computed the way a
researcher writes it with librosa (``librosa.load``'s soxr HQ resampling, ``melspectrogram`` +
``power_to_db``); waveforms as int16 and log-mels as float16 where the format holds any dtype
(muzarr's own dtypes: the bytes on disk then compare containers, not dtypes). Whole tracks: the
waveform only, at its own length. ``peers.py`` checks what each stored against muzarr's store.

A reader is ``open_reader(peer, folder, feature, crop) -> Reader``: ``epoch(e)`` yields batches of
32 float32 crops (new crops every epoch), ``state``/``resume`` where the peer can continue an epoch
from its middle.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

RATE, MEL_RATE, N_FFT, HOP, N_MELS, PAD = 16000, 12000, 512, 256, 96, 37
BATCH = 32


@dataclass(frozen=True)
class SetSpec:
    """What a build stores: ``seconds`` is the clip length (None: whole tracks, waveform only)."""

    audio: str
    seconds: float | None

    @property
    def n_samples(self) -> int | None:
        return None if self.seconds is None else round(self.seconds * RATE)


def label_of(path: str) -> int:
    """The folder recipe's class: the first folder under the root (``0``..``f``), or 0 for tracks."""
    name = Path(path).parent.name
    return int(name, 16) if len(name) == 1 else 0


def clip_id(path: str) -> str:
    return Path(path).stem


def clip_arrays(y: np.ndarray, spec: SetSpec) -> dict[str, np.ndarray]:
    """muzarr's two features of decoded mono 16 kHz audio ``y``, as a user writes them with librosa."""
    import librosa

    y = np.asarray(y, dtype=np.float32)
    if spec.n_samples is None:
        return {"wave": to_int16(y)}
    wave = librosa.util.fix_length(y, size=spec.n_samples)
    y12 = librosa.resample(y, orig_sr=RATE, target_sr=MEL_RATE, res_type="soxr_hq")  # librosa.load(sr=12000)'s
    y12 = librosa.util.fix_length(y12, size=round(spec.seconds * MEL_RATE))
    return {"wave": to_int16(wave), "mel": logmel(y12).astype(np.float16)}


def logmel(y12: np.ndarray) -> np.ndarray:
    """``[n_mels, frames + 2 * PAD]``: ``power_to_db(melspectrogram(...), ref=1.0)`` with zero frames each side."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y12, sr=MEL_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    return np.pad(librosa.power_to_db(mel, ref=1.0), [(0, 0), (PAD, PAD)])


def to_int16(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(y * 32768.0), -32768, 32767).astype(np.int16)


def decode_file(path: str) -> np.ndarray:
    """``librosa.load(path, sr=16000)``: soundfile, mono, float32 (the files are 16 kHz already)."""
    import librosa

    y, _ = librosa.load(path, sr=RATE, mono=True)
    return y


def encode_file(path: str, spec: SetSpec) -> dict:
    """One sample as WebDataset and LitData writers take it: key, label and the arrays."""
    return {"key": clip_id(path), "label": label_of(path), **clip_arrays(decode_file(path), spec)}


# ---------------------------------------------------------------- builds


def build_datasets(paths: list[str], out: Path, spec: SetSpec, workers: int, *, torchcodec: bool = False) -> None:
    """Hugging Face datasets (https://huggingface.co/docs/datasets/audio_load and /audio_process):
    ``Dataset.from_dict`` of paths, ``cast_column("audio", Audio(sampling_rate=16000))``, ``map`` with
    ``num_proc`` computing the features, ``save_to_disk``.

    datasets 4+ decodes an Audio column through torchcodec, that is FFmpeg's MP3 decoder, whose samples
    differ from libsndfile's (muzarr's and ``librosa.load``'s) by ~2e-6: within an int16 step, but
    enough to move a few quiet log-mel values past float16 tolerance. So the comparable build takes the
    docs' other path, ``Audio(decode=False)`` (the column holds the path; "decode it yourself"), decoding
    with ``librosa.load`` as the other peers do; ``torchcodec=True`` is the default path, measured too."""
    from datasets import Array2D, Audio, Dataset, Features, List, Value

    columns = {"key": Value("string"), "label": Value("int64")}
    if spec.n_samples is None:
        columns["wave"] = List(Value("int16"))
    else:
        frames = 1 + round(spec.seconds * MEL_RATE) // HOP + 2 * PAD
        columns["wave"] = List(Value("int16"), length=spec.n_samples)
        columns["mel"] = Array2D(shape=(N_MELS, frames), dtype="float16")  # the docs' type for fixed-shape arrays

    def features(example):
        if torchcodec:  # torchcodec's AudioDecoder, resampled to 16 kHz if needed
            y = example["audio"].get_all_samples().data.numpy().mean(axis=0)
        else:
            y = decode_file(example["audio"]["path"])
        return {"key": clip_id(example["path"]), "label": label_of(example["path"]), **clip_arrays(y, spec)}

    audio = Audio(sampling_rate=RATE, decode=torchcodec)
    ds = Dataset.from_dict({"audio": paths, "path": paths}).cast_column("audio", audio)
    ds = ds.map(features, num_proc=workers, remove_columns=["audio", "path"], features=Features(columns))
    ds.save_to_disk(str(out), num_proc=workers)


def build_webdataset(paths: list[str], out: Path, spec: SetSpec, workers: int) -> None:
    """WebDataset (https://github.com/webdataset/webdataset, "Creating a WebDataset" in its README and
    ``examples/generate-text-dataset``): samples computed by a process pool, written by one ``ShardWriter``
    as ``.npy`` entries, shards of ~100 MB (its example's ``maxsize``)."""
    from multiprocessing import Pool

    import webdataset as wds

    out.mkdir(parents=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxsize=100e6, verbose=0) as sink, Pool(workers) as pool:
        for sample in pool.imap(_wds_sample, [(p, spec) for p in paths], chunksize=4):
            sink.write(sample)


def _wds_sample(job: tuple[str, SetSpec]) -> dict:
    s = encode_file(*job)
    sample = {"__key__": s["key"], "cls": s["label"], "wave.npy": s["wave"]}
    if "mel" in s:
        sample["mel.npy"] = s["mel"]
    return sample


def build_litdata(paths: list[str], out: Path, spec: SetSpec, workers: int) -> None:
    """LitData (https://github.com/Lightning-AI/litData, "Speed up model training", and its README's
    ``optimize`` example): ``optimize(fn, inputs, output_dir, num_workers, chunk_bytes="64MB")``."""
    from litdata import optimize

    optimize(fn=partial(encode_file, spec=spec), inputs=paths, output_dir=str(out), num_workers=workers,
             chunk_bytes="64MB", verbose=False)  # fmt: skip


def build_lhotse(paths: list[str], out: Path, spec: SetSpec, workers: int) -> None:
    """lhotse (https://lhotse.readthedocs.io/en/latest/features.html, "Creating custom feature extractor",
    and /cuts.html): ``RecordingSet.from_dir`` → ``CutSet.from_manifests``; the waveform is read from the
    source files when a crop is loaded (lhotse's own design: no decoded copy); the log-mel on the cuts
    resampled to 12 kHz with ``compute_and_store_features(..., num_jobs, storage_type=LilcomChunkyWriter)``
    and :class:`_peer_lhotse.MuzarrLogMel`; then a Shar export of both (``to_shar``: FLAC audio, lilcom
    features)."""
    from _peer_lhotse import build

    build(paths, out, spec, workers)


# ---------------------------------------------------------------- reads


class Reader:
    """Batches of crops of one feature of one built peer. ``epoch(e)`` starts epoch ``e`` with new crops."""

    resumable = False

    def epoch(self, e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def state(self, e: int, batches: int):
        """What the peer keeps to continue epoch ``e`` after ``batches`` batches (None: it keeps nothing)."""
        return

    def resume(self, state) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


def random_crop(item: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A crop of ``length`` along the last axis at a random start (zero-padded when the item is shorter)."""
    n = item.shape[-1]
    if n <= length:
        out = np.zeros((*item.shape[:-1], length), item.dtype)
        out[..., :n] = item
        return out
    start = int(rng.integers(0, n - length + 1))
    return np.asarray(item[..., start : start + length])


def to_batch(crops: list[np.ndarray], labels) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 batch as muzarr's stream gives it: int16 waveforms scaled by 1/32768."""
    x = torch.from_numpy(np.stack(crops))
    x = x.float() / 32768 if x.dtype == torch.int16 else x.float()
    return x, torch.as_tensor(np.asarray(labels))


class DatasetsReader(Reader):
    """``load_from_disk(...).with_format("numpy")`` under a ``DataLoader(shuffle=True)`` whose ``collate_fn``
    crops (https://huggingface.co/docs/datasets/use_with_pytorch): a true shuffle, rows fetched with
    ``__getitems__``. Resume: a map-style dataset restarts at any position of the epoch's permutation."""

    resumable = True

    def __init__(self, folder: Path, column: str, length: int) -> None:
        from datasets import load_from_disk

        # numpy format kwargs go to np.asarray: without a dtype, the formatter makes int16 int64 and
        # float16 float32 (datasets/formatting/np_formatter.py), 4x and 2x the bytes of every row
        dtype = np.int16 if column == "wave" else np.float16
        self.ds = load_from_disk(str(folder)).with_format("numpy", columns=[column, "label"], dtype=dtype)
        self.column, self.length = column, length

    def _loader(self, e: int, start: int = 0):
        order = torch.randperm(len(self.ds), generator=torch.Generator().manual_seed(e)).tolist()[start:]
        rng = np.random.default_rng([e, start])

        def collate(rows):
            return to_batch([random_crop(r[self.column], self.length, rng) for r in rows], [r["label"] for r in rows])

        return torch.utils.data.DataLoader(self.ds, batch_size=BATCH, sampler=order, collate_fn=collate)

    def epoch(self, e):
        return iter(self._loader(e))

    def state(self, e, batches):
        return (e, batches * BATCH)

    def resume(self, state):
        return iter(self._loader(*state))


class WebDatasetReader(Reader):
    """``WebDataset(urls, shardshuffle=...).shuffle(1000)`` (https://github.com/webdataset/webdataset, README:
    "shuffle" is a buffer of samples: an approximate shuffle), the field taken before decoding, cropped in a
    ``map``, ``batched(32)``. No resume: a WebDataset pipeline keeps no position."""

    def __init__(self, folder: Path, column: str, length: int) -> None:
        self.urls = sorted(str(p) for p in folder.glob("*.tar"))
        self.column, self.length = column, length

    def epoch(self, e):
        import webdataset as wds

        rng = np.random.default_rng(e)

        def crop(sample):
            item = np.load(io.BytesIO(sample[0]))
            return random_crop(item, self.length, rng), int(sample[1])

        pipeline = (
            wds.WebDataset(self.urls, shardshuffle=len(self.urls), seed=e, empty_check=False)
            .shuffle(1000, rng=__import__("random").Random(e))
            .to_tuple(f"{self.column}.npy", "cls")
            .map(crop)
        )
        batch_x, batch_y = [], []
        for x, y in pipeline:
            batch_x.append(x)
            batch_y.append(y)
            if len(batch_x) == BATCH:
                yield to_batch(batch_x, batch_y)
                batch_x, batch_y = [], []
        if len(batch_x) > 1:
            yield to_batch(batch_x, batch_y)


class LitDataReader(Reader):
    """``StreamingDataset(dir, shuffle=True, transform=crop)`` + ``StreamingDataLoader(batch_size=32)``
    (https://github.com/Lightning-AI/litData README: "Stream", "Transform", "Resume"): chunks permuted and
    items permuted within the chunks a worker holds. Resume: ``StreamingDataLoader.state_dict``."""

    resumable = True

    def __init__(self, folder: Path, column: str, length: int) -> None:
        self.folder, self.column, self.length = folder, column, length
        self.loader = self._loader()

    def _loader(self):
        from litdata import StreamingDataLoader, StreamingDataset

        rng = np.random.default_rng()
        column, length = self.column, self.length

        def crop(item):
            return random_crop(item[column], length, rng), item["label"]

        self.dataset = StreamingDataset(str(self.folder), shuffle=True, seed=0, transform=crop)
        return StreamingDataLoader(self.dataset, batch_size=BATCH, num_workers=0, collate_fn=_collate_pairs)

    def epoch(self, e):
        self.loader = self._loader()
        self.dataset.set_epoch(e + 1)
        return iter(self.loader)

    def state(self, e, batches):
        it = self.epoch(e)
        for _ in range(batches):
            next(it)
        return self.loader.state_dict()

    def resume(self, state):
        self.loader = self._loader()
        self.loader.load_state_dict(state)
        return iter(self.loader)


def _collate_pairs(pairs):
    return to_batch([p[0] for p in pairs], [p[1] for p in pairs])


class MuzarrReader(Reader):
    """muzarr's training stream as ``train`` uses it and ``loader_throughput.py`` measures it: ``TrainStream``
    over a ``SplitReader`` of every clip (buffer of 256 clips, shards permuted, crops read through the chunks
    they overlap, each chunk checked). No state to resume from: the stream is a function of (seed, epoch),
    so continuing at batch k means reading the epoch up to it."""

    def __init__(self, folder: Path, column: str, length: int, *, verify: bool = True) -> None:
        from pipeline import open_store
        from training.data import ExamplePlan, SplitReader

        store = open_store(str(folder))
        name = "waveform" if column == "wave" else next(a for a in store.arrays if a.startswith("logmel/"))
        info = store.arrays[name]
        if info.extents:  # a track store: crops within each track (as _track_plan plans them)
            plan = ExamplePlan(name, (*info.shape[:-1], -1), length, 1, tracks=True)
        else:
            plan = ExamplePlan(name, tuple(info.shape[1:]), length, 1)
        rows = np.arange(store.n_clips)
        self.reader = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False, verify=verify)

    def epoch(self, e):
        from training.data import TrainStream

        stream = TrainStream(self.reader, batch_size=BATCH, seed=0, buffer_clips=256)
        stream.set_epoch(e)
        return ((x, y) for x, y, _ in stream)


def open_reader(peer: str, folder: Path, column: str, length: int) -> Reader:
    if peer.startswith("lhotse"):
        from _peer_lhotse import LhotseReader, SharReader

        return (SharReader if peer.endswith("Shar") else LhotseReader)(folder, column, length)
    return READERS[peer](folder, column, length)


BUILDS: dict[str, Callable] = {
    "datasets": build_datasets, "datasets (torchcodec)": partial(build_datasets, torchcodec=True),
    "lhotse": build_lhotse, "WebDataset": build_webdataset, "LitData": build_litdata,
}  # fmt: skip
READERS = {
    "datasets": DatasetsReader, "WebDataset": WebDatasetReader, "LitData": LitDataReader, "muzarr": MuzarrReader,
    "muzarr --no-verify-reads": partial(MuzarrReader, verify=False),  # what checking every chunk read costs
}  # fmt: skip


def stored_arrays(peer: str, folder: Path, column: str) -> dict[str, np.ndarray]:
    """What a peer stored, clip id → array, read back whole through the peer's own API (for the check)."""
    if peer.startswith("datasets"):
        from datasets import load_from_disk

        ds = load_from_disk(str(folder)).with_format("numpy", columns=["key", column])
        return {str(k): v for k, v in zip(ds["key"], ds[column])}
    if peer == "WebDataset":
        import webdataset as wds

        urls = sorted(str(p) for p in folder.glob("*.tar"))
        return {s["__key__"]: s[f"{column}.npy"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode()}
    if peer == "LitData":
        from litdata import StreamingDataset

        return {item["key"]: item[column] for item in StreamingDataset(str(folder))}
    from _peer_lhotse import stored

    return stored(peer, folder, column)


def n_batches(n_items: int) -> int:
    return math.ceil(n_items / BATCH)
