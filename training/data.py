"""From a store split to batches: input resolution, examples, chunk-aware shuffling, caching.

A *clip* is a row of the store; an *example* is what the model sees: the whole clip, one
stored sub-clip, or a crop of ``n`` frames/samples. Training draws one random crop per clip
(or every sub-clip) per epoch; evaluation takes ``eval_crops`` evenly spaced crops per clip and
the loop averages their predictions per clip, as the seed reports and Won et al. do.

Shuffling reads shard by shard (the blocks of clips a build task wrote): their order is
permuted per epoch, each shard's random crops are read through the store's crop reader
(``pipeline.store.arrays``: only the time chunks a crop overlaps), and the crops of a buffer of
shards are shuffled. Each read touches only its own shard, so a shuffled epoch costs what a
sequential one does. Every random choice comes from
``numpy.random.default_rng([seed, epoch, worker])``: an epoch is reproducible on its own, which
is what makes ``--resume`` end with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline import MuzarrError, Store
from pipeline.audio import ClipPolicy
from pipeline.config import build_command, make_feature
from pipeline.features.base import n_frames
from pipeline.store import ArrayReader
from training.models import InputSpec

LOGMEL_MATCH = ("sample_rate", "n_mels", "n_fft", "hop_length", "pad_frames")


def resolve_array(store: Store, spec: InputSpec) -> str:
    """The store array that serves ``spec``; a missing one names the ``pipe build`` option that adds it."""
    arrays = store.arrays
    if spec.kind == "tabular":
        name = f"tabular/{spec.tabular_set}"
        candidates = [name] if name in arrays else []
    else:
        candidates = []
        for name, info in arrays.items():
            feature = info["feature"]
            if feature["kind"] != spec.kind or feature["sample_rate"] != spec.sample_rate:
                continue
            if spec.kind == "logmel" and any(feature[k] != getattr(spec, k) for k in LOGMEL_MATCH):
                continue
            candidates.append(name)
        # Prefer the plain recipe (dB, top_db 80, full band) when several variants match.
        candidates.sort(key=lambda n: (arrays[n]["feature"].get("f_max") is not None, arrays[n]["feature"].get("log") != "db"))
    if not candidates:
        raise MuzarrError(
            f"store {store.url} has no {spec.kind} input for this model (arrays: {', '.join(arrays)}); "
            + _add_hint(store, spec)
        )
    return candidates[0]


def _add_hint(store: Store, spec: InputSpec) -> str:
    """The ``pipe build`` that adds ``spec``'s feature to the store as it is built (every override kept)."""
    feature = make_feature(spec.feature_spec(), where="model input")
    config = store.config()
    if feature.name not in store.arrays:
        return f"add it with: {build_command(config, out=store.url, source=store.source, add=[spec.feature_spec()])}"
    # A store has one array per name (one waveform): another variant of it goes into a second store.
    out = f"{store.url.rstrip('/').removesuffix('.zarr')}-{feature.kind}{feature.sample_rate}.zarr"
    command = build_command(replace(config, features=(feature,)), out=out, source=store.source)
    return f"its {feature.name} is another variant; build a store of this one: {command}"


@dataclass(frozen=True)
class ExamplePlan:
    """How clips of one array become examples.

    Attributes
    ----------
    array : str
        Store array name.
    clip_shape : tuple
        Stored per-clip shape (with the sub-clip axis when the store has one).
    length : int or None
        Crop length along the last axis (frames or samples); ``None`` = whole (sub-)clip.
    eval_crops : int
        Crops per (sub-)clip at evaluation.
    placement : {"spread", "won"}
        Where the evaluation crops start (:func:`eval_offsets`).
    group_subclips : bool
        Training batches hold whole clips (every sub-clip of each), not shuffled sub-clips.
    crop_span : int or None
        Training crops start so that they end within the first ``crop_span`` frames/samples
        (Won et al.'s loader: the first 29 s); ``None`` = anywhere in the (sub-)clip.
    tracks : bool
        The array holds whole tracks of any length (a track store): ``clip_shape`` ends in ``-1``,
        each clip's length is its extent, training crops fall anywhere within it and evaluation
        takes ``eval_crops`` crops spread over each whole track.
    """

    array: str
    clip_shape: tuple[int, ...]
    length: int | None
    eval_crops: int
    placement: str = "spread"
    group_subclips: bool = False
    crop_span: int | None = None
    tracks: bool = False

    @property
    def n_subclips(self) -> int:
        return self.clip_shape[0] if self._has_subclips else 1

    @property
    def _has_subclips(self) -> bool:
        return len(self.clip_shape) == (3 if self.is_2d else 2)

    @property
    def is_2d(self) -> bool:
        return self.array.startswith("logmel/")

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one stored (sub-)clip."""
        return self.clip_shape[1:] if self._has_subclips else self.clip_shape

    @property
    def example_shape(self) -> tuple[int, ...]:
        if self.length is None:
            return self.item_shape
        return (*self.item_shape[:-1], self.length)

    @property
    def examples_per_clip_eval(self) -> int:
        return self.n_subclips * self.eval_crops


def plan_examples(
    store: Store,
    spec: InputSpec,
    *,
    eval_crops: int | None = None,
    placement: str = "spread",
    sub_clips: int | None = None,
    group_subclips: bool = False,
) -> ExamplePlan:
    """Work out the example length and the evaluation crops of ``spec`` on ``store``.

    ``sub_clips`` (a protocol's): examples are the store's whole sub-clips, and the store must
    hold exactly that many per clip; a store of whole clips is refused with the build that
    makes the sub-clips.
    """
    array = resolve_array(store, spec)
    if "extents" in store.arrays[array]:
        return _track_plan(store, spec, array, eval_crops=eval_crops, placement=placement, sub_clips=sub_clips)
    clip_shape = tuple(store.arrays[array]["shape"][1:])
    plan = ExamplePlan(array, clip_shape, None, 1, placement)
    if sub_clips is not None:
        if plan.n_subclips != sub_clips:
            raise MuzarrError(_subclip_hint(store, spec, array, plan, sub_clips))
        return ExamplePlan(array, clip_shape, None, 1, placement, group_subclips)
    if spec.kind == "tabular" or spec.seconds is None:
        return plan
    length = spec.example_shape()[-1]
    stored = plan.item_shape[-1]
    if length >= stored:
        # The store's clips are no longer than one example: use them whole (zero-padded if short).
        return ExamplePlan(array, clip_shape, length if length > stored else None, 1, placement)
    crops = eval_crops or max(1, math.ceil(stored / length))
    return ExamplePlan(array, clip_shape, length, crops, placement)


#: evaluation crops per track of a track store (Won et al.'s MTG-Jamendo ``eval.py``: 16 per track)
TRACK_EVAL_CROPS = 16
#: the crop of a whole-clip model (crnn, cnn5, ...) on a track store: the 29.12 s of the MTAT clips it was made for
TRACK_WHOLE_CLIP_SECONDS = 29.12


def _track_plan(store: Store, spec: InputSpec, array: str, *, eval_crops, placement: str, sub_clips) -> ExamplePlan:
    """Examples of a track store's time array: crops of the model's input length within each track."""
    if sub_clips is not None:
        raise MuzarrError(
            f"this protocol trains on {sub_clips} stored sub-clips per clip, but {store.url} holds whole tracks "
            "(clip mode track): train on random crops with --sub-clips 0, or build a store of sub-clips"
        )
    inner = tuple(store.arrays[array]["shape"][:-1])
    length = spec.example_shape(spec.seconds or TRACK_WHOLE_CLIP_SECONDS)[-1]
    return ExamplePlan(array, (*inner, -1), length, eval_crops or TRACK_EVAL_CROPS, placement, tracks=True)


def plan_for(store: Store, spec: InputSpec, protocol) -> ExamplePlan:
    """:func:`plan_examples` with a :class:`~training.protocol.Protocol`'s evaluation, sub-clip
    and training-crop settings."""
    plan = plan_examples(
        store, spec, eval_crops=protocol.eval_crops, placement=protocol.eval_placement,
        sub_clips=protocol.sub_clips, group_subclips=protocol.group_subclips,
    )  # fmt: skip
    seconds = protocol.train_crop_seconds
    if seconds is None or plan.length is None or spec.kind == "tabular":
        return plan
    samples = round(seconds * spec.sample_rate)
    span = samples if spec.kind == "waveform" else n_frames(samples, hop_length=spec.hop_length, pad_frames=spec.pad_frames)
    return replace(plan, crop_span=span)


def crop_offsets(rng: np.random.Generator, n: int, *, total, length: int, span: int | None = None) -> np.ndarray:
    """``n`` random training-crop starts in ``[0, total - length]``; with ``span``, Won et al.'s
    ``floor(U * (span - length))`` (``mtat_loader.py``: the crop ends within the first
    ``span``), capped by the clip's own length. ``total`` may be one length per crop (tracks)."""
    if not np.isscalar(total):  # a length per crop
        high = np.asarray(total, dtype=np.int64) if span is None else np.minimum(span, total)
        return rng.integers(0, np.maximum(1, high - length + (span is None)), size=n)
    if span is None:
        return rng.integers(0, max(1, total - length + 1), size=n)
    return rng.integers(0, max(1, min(span, total) - length), size=n)


def _subclip_hint(store: Store, spec: InputSpec, array: str, plan: ExamplePlan, sub_clips: int) -> str:
    config = store.config()
    has = f"{plan.n_subclips} sub-clips per clip" if plan.n_subclips > 1 else "whole clips"
    total = config.clip.total_seconds or config.clip.seconds
    seconds = float(f"{min(spec.seconds or total, total / sub_clips):g}")  # sub-clips that fit in the clip
    clip = ClipPolicy(**{**config.clip.to_dict(), "mode": "split", "seconds": seconds, "total_seconds": total, "hop_seconds": None})
    split = replace(config, clip=clip, features=(make_feature(spec.feature_spec(), where="model input"),))
    base = store.url.rstrip("/").removesuffix(".zarr")
    return (
        f"this protocol trains on {sub_clips} sub-clips per clip, but {array} of {store.url} holds {has}; "
        f"build a store of sub-clips: {build_command(split, out=f'{base}-split.zarr', source=store.source)} "
        "(or train on random crops with --sub-clips 0)"
    )


def to_tensor(block: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored values as a float32 tensor (int16 waveforms scaled by 1/32768).

    torch converts float16 5x faster than numpy's one-value-at-a-time half-float cast.
    """
    values = torch.from_numpy(block).to(torch.float32)
    if dtype == "int16":
        values.mul_(1 / 32768)  # a power of two: exact, as int16 / 32768 is
    return values


def gather_tensor(parts: list[np.ndarray], part: np.ndarray, row: np.ndarray, dtype: str) -> torch.Tensor:
    """:func:`to_tensor` of the rows ``parts[part[i]][row[i]]``, converted straight into the batch.

    One pass over the examples: no concatenated buffer, no gathered copy in the stored dtype
    (with a 256-clip buffer of waveform crops these two copies cost a shuffled stream a fifth of
    its throughput; store order gathered them faster only because its rows were contiguous).
    """
    first = parts[0]
    out = torch.empty((len(part), *first.shape[1:]), dtype=torch.float32)
    target = out.numpy()
    scale = np.float32(1 / 32768)  # int16: float32(x) * 2**-15, as to_tensor (exact either way)
    for i, (p, r) in enumerate(zip(part.tolist(), row.tolist())):
        source = parts[p][r]
        if source.dtype == np.float16:  # torch converts float16 5x faster than numpy
            out[i].copy_(torch.from_numpy(source if source.flags.writeable else source.copy()))
        elif dtype == "int16":
            np.multiply(source, scale, out=target[i], dtype=np.float32)  # converted and scaled in one pass
        else:
            np.copyto(target[i], source, casting="unsafe")
    return out


def to_float(block: np.ndarray, dtype: str) -> np.ndarray:
    """:func:`to_tensor` as a numpy array."""
    return to_tensor(block, dtype).numpy()


def crop(items: np.ndarray, offsets: np.ndarray, length: int | None) -> np.ndarray:
    """Crop ``items [B, ..., T]`` to ``length`` along the last axis from ``offsets [B]``; pads if T < length."""
    if length is None:
        return items
    total = items.shape[-1]
    if total < length:
        pad = [(0, 0)] * (items.ndim - 1) + [(0, length - total)]
        return np.pad(items, pad)
    # One slice copy per item: a gather with an index array (take_along_axis) is ~10x slower.
    out = np.empty((*items.shape[:-1], length), dtype=items.dtype)
    for i, offset in enumerate(offsets):
        out[i] = items[i, ..., offset : offset + length]
    return out


def eval_offsets(total: int, length: int | None, crops: int, placement: str = "spread") -> np.ndarray:
    """Start offsets of ``crops`` evaluation crops of ``length`` in ``total``.

    ``spread``: evenly from 0 to ``total - length`` (the last crop ends at the clip's end);
    ``won``: ``i * ((total - length) // crops)``, as Won et al.'s ``eval.py`` (the tail after
    the last crop is not seen).
    """
    if length is None or total <= length:
        return np.zeros(crops, dtype=np.int64)
    if placement == "won":
        return np.arange(crops, dtype=np.int64) * ((total - length) // crops)
    return np.linspace(0, total - length, crops).round().astype(np.int64)


class SplitReader:
    """The clips of one split of one array, read from the store or held in memory.

    Parameters
    ----------
    store : Store
    plan : ExamplePlan
    rows : numpy.ndarray
        Store rows of the split (``ok`` clips only).
    targets : numpy.ndarray
        Labels of those rows (float32 multi-hot, or int64 class indices).
    cache : bool
        Hold the split in RAM (in its stored dtype) instead of reading chunks each epoch.
    verify : bool
        Check each whole clip read from the store against its digest in ``tables/checksums.parquet``
        (xxh3-128 at memory speed: see docs/benchmarks.md for its cost), so that damaged bytes
        that still decompress are never trained on, and each chunk a crop reads against its
        crc32c (a crop does not hold its whole clip to digest). A RAM-cached split is checked
        once, as it is loaded.
    """

    def __init__(
        self, store: Store, plan: ExamplePlan, rows: np.ndarray, targets: np.ndarray, *, cache: bool, verify: bool = True
    ) -> None:
        self.url = store.url
        self.plan = plan
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) > 1 and (np.diff(self.rows) <= 0).any():
            raise MuzarrError("SplitReader: rows must be ascending and unique (as Store.split gives them)")
        self.targets = targets
        self.clip_ids = store.clips["clip_id"].to_numpy()[self.rows]
        self.dtype = store.arrays[plan.array]["dtype"]
        # Streaming reads shard by shard: the unit a build writes, and what the shuffle permutes.
        self.array = ArrayReader(store, plan.array, verify=verify, clip_axis=not plan.tracks)
        self.extents = None
        if plan.tracks:
            if cache:
                raise MuzarrError(
                    f"{plan.array} of {store.url} holds whole tracks of any length: they are streamed, not cached; "
                    "train with --cache none (or auto)"
                )
            # a block is a build batch's tracks (one extents shard): what its task wrote together
            self.extents = store.extents(plan.array)[self.rows]
            self.chunk_clips = int(store.arrays[store.arrays[plan.array]["extents"]]["shards"][0])
        else:
            self.chunk_clips = self.array.rows_per_shard
        shard_of = self.rows // self.chunk_clips
        _, first = np.unique(shard_of, return_index=True)
        self._bounds = np.append(first, len(self.rows))
        self.memory = None
        if cache and len(self.rows):
            # read shard by shard like the stream, so a damaged shard is named, not a zarr traceback
            self.memory = np.concatenate([data for _, data in self.blocks()])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        if self.extents is not None:
            return int(np.prod(self.plan.clip_shape[:-1]) * self.extents[:, 1].sum()) * np.dtype(self.dtype).itemsize
        return int(np.prod(self.plan.clip_shape)) * np.dtype(self.dtype).itemsize * len(self.rows)

    def shorter_than(self, length: int) -> int:
        """How many tracks of a track store are shorter than ``length`` (their crops are zero-padded)."""
        return 0 if self.extents is None else int((self.extents[:, 1] < length).sum())

    def close(self) -> None:
        """Forget the open store handles (the next read opens them again)."""
        self.array.close()

    def positions(self, block: int) -> np.ndarray:
        """Split positions of block ``block``: a store shard's rows (streaming), or ``chunk_clips``
        consecutive positions (RAM cache)."""
        if self.memory is not None:
            return np.arange(block * self.chunk_clips, min((block + 1) * self.chunk_clips, len(self.rows)))
        return np.arange(self._bounds[block], self._bounds[block + 1])

    def blocks(
        self, order: np.ndarray | None = None, *, transform: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(positions, data)``: split positions and their whole stored rows, one block at a time.

        ``order`` permutes the blocks (shuffled epochs); positions index ``self.rows``.
        ``transform`` maps the rows ``[n, *clip_shape]`` to what the caller keeps of them.
        Rows read from the store are checked against their clip digests.
        """
        keep = transform or (lambda data: data)
        for block in range(self.n_blocks()) if order is None else order:
            positions = self.positions(int(block))
            if self.extents is not None:  # tracks of any length: the block's tracks one after another
                starts, lengths = self.extents[positions, 0], self.extents[positions, 1]
                tracks = [self.array.crops(None, [s], n)[0] for s, n in zip(starts, lengths) if n]
                yield positions, keep(np.concatenate(tracks, axis=-1)[None] if tracks else np.zeros((0,), self.dtype))
            elif self.memory is not None:
                yield positions, keep(self.memory[positions[0] : positions[-1] + 1])
            else:
                yield positions, keep(self.array.rows(self.rows[positions]))

    def crops(self, positions: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """Crops of ``length`` from ``starts`` of the clips at split ``positions`` (one each, no
        sub-clip axis), reading only the chunks they overlap (each passes its crc32c)."""
        if self.memory is not None:
            return crop(self.memory[positions], starts, length)
        if self.extents is not None:
            return self._track_crops(positions, starts, length)
        return self.array.crops(self.rows[positions], starts, length)

    def _track_crops(self, positions: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """Crops within each track (``starts`` relative to it); a track shorter than ``length`` is read
        whole and zero-padded."""
        first, lengths = self.extents[positions, 0], self.extents[positions, 1]
        whole = lengths >= length
        out = np.zeros((len(positions), *self.plan.clip_shape[:-1], length), dtype=self.dtype)
        if whole.any():
            out[whole] = self.array.crops(None, first[whole] + starts[whole], length)
        for i in np.flatnonzero(~whole & (lengths > 0)):
            out[i, ..., : lengths[i]] = self.array.crops(None, [first[i]], int(lengths[i]))[0]
        return out

    def n_blocks(self) -> int:
        if self.memory is not None:
            return math.ceil(len(self.rows) / self.chunk_clips)
        return len(self._bounds) - 1


def useful_workers(asked: int, reader: SplitReader, *, world: int = 1) -> tuple[int, str | None]:
    """Loader processes worth starting for ``reader`` (one rank of ``world``), and why fewer than ``asked``.

    A loader process decodes one shard at a time: more processes than the shards a rank reads in an epoch,
    or than the CPUs this process may use, only cost start-up time and memory (1000 of them exhaust the
    threads a process may have)."""
    if asked <= 0:
        return 0, None
    shards = max(1, math.ceil(reader.n_blocks() / world))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    useful = min(asked, shards, cpus)
    if useful == asked:
        return asked, None
    why = (f"the train split has {shards} shard{'s' * (shards != 1)} to read per epoch" if useful == shards
           else f"this process may use {cpus} CPU{'s' * (cpus != 1)}")  # fmt: skip
    return useful, f"--workers {asked}: starting {useful} loader process{'es' * (useful != 1)}, as {why}"


class TrainStream:
    """Shuffled training batches ``(x, y, positions)`` of one rank, read shard by shard.

    Each epoch: permute the shards (the same permutation on every rank, dealt out by rank:
    rank ``r`` of ``world`` reads shards ``order[r::world]``, so the ranks' examples are
    disjoint and together the whole split), read them one after another, keeping one random
    crop per (sub-)clip as each chunk is decoded, until a buffer holds about ``buffer_clips``
    clips' examples; shuffle the buffer and cut it into batches.

    A shard's crops are drawn from ``default_rng([seed, epoch, 1, shard])`` and the buffer is
    shuffled by ``default_rng([seed, epoch, rank + 1])``: with ``workers`` loader processes
    decoding shards ahead (a ``DataLoader`` over the shards, in order, its workers kept from
    one epoch to the next), the batches are the same as with none, for any number of workers.
    """

    def __init__(
        self, reader: SplitReader, *, batch_size: int, seed: int, buffer_clips: int = 512, shuffle: bool = True,
        rank: int = 0, world: int = 1, workers: int = 0,
    ) -> None:  # fmt: skip
        self.reader = reader
        self.batch_size = batch_size
        self.seed = seed
        self.buffer_clips = buffer_clips
        self.shuffle = shuffle
        self.rank, self.world = rank, world
        self.workers = workers
        self.epoch = 0
        self._loader = None  # the loader workers, started once and kept for every epoch
        self._queue = _Queue()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards(self) -> np.ndarray:
        """The shards (block indices of the reader) this rank reads this epoch, in order."""
        n_blocks = self.reader.n_blocks()
        order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(n_blocks) if self.shuffle else np.arange(n_blocks)
        return order[self.rank :: self.world]

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, self.rank + 1])
        n_subclips = self.reader.plan.n_subclips
        pending_x: list[np.ndarray] = []
        pending_p: list[np.ndarray] = []
        for positions, examples in self._cropped(self.shards()):
            pending_x.append(examples)
            pending_p.append(np.repeat(positions, n_subclips))
            if sum(len(p) for p in pending_p) >= self.buffer_clips * n_subclips:
                yield from self._emit(rng, pending_x, pending_p, final=False)
        yield from self._emit(rng, pending_x, pending_p, final=True)

    def _cropped(self, shards: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(positions, crops)`` of each shard in ``shards``, decoded here or by loader workers."""
        jobs = [(self.epoch, int(shard)) for shard in shards]
        if self.workers == 0 or not jobs:
            crops = CroppedShards(self.reader, seed=self.seed)
            for job in jobs:
                yield crops[job]
            return
        if self._loader is None:
            # the workers decode a whole shuffle buffer ahead while its batches train, not just a shard or two
            ahead = math.ceil(self.buffer_clips / self.reader.chunk_clips / self.workers) + 1
            self._loader = torch.utils.data.DataLoader(
                CroppedShards(self.reader, seed=self.seed), batch_size=None, sampler=self._queue,
                num_workers=self.workers, worker_init_fn=_fresh_handles, prefetch_factor=max(2, ahead),
                persistent_workers=True,
            )  # fmt: skip
        self._queue.jobs = jobs
        for positions, examples in self._loader:
            yield positions.numpy(), examples.numpy()

    def close(self) -> None:
        """Stop the loader workers (they are kept from epoch to epoch otherwise)."""
        self._loader = None

    def _emit(self, rng, pending_x: list, pending_p: list, *, final: bool):
        """Shuffle the buffered examples and yield full batches; keep the remainder buffered."""
        if not pending_p:
            return
        positions = np.concatenate(pending_p)
        # example k of the buffer is row row[k] of pending_x[part[k]] (the shards are not concatenated)
        part = np.repeat(np.arange(len(pending_x)), [len(x) for x in pending_x])
        row = np.concatenate([np.arange(len(x)) for x in pending_x])
        group = self.reader.plan.n_subclips if self.reader.plan.group_subclips else 1
        # grouped: whole clips are shuffled, each keeping its sub-clips together (clip-major)
        clips = rng.permutation(len(positions) // group) if self.shuffle else np.arange(len(positions) // group)
        order = (clips[:, None] * group + np.arange(group)).ravel()
        batch = max(1, self.batch_size // group) * group  # grouped: whole clips per batch
        usable = len(order) if final else len(order) - len(order) % batch
        for start in range(0, usable, batch):
            take = order[start : start + batch]
            if len(take) < 2 * group:
                break  # a last batch of one example (or clip) would break BatchNorm's training statistics
            yield (
                gather_tensor(pending_x, part[take], row[take], self.reader.dtype),
                torch.from_numpy(self.reader.targets[positions[take]]),
                torch.from_numpy(positions[take]),
            )
        rest = order[usable:]
        kept = [pending_x[p][r] for p, r in zip(part[rest].tolist(), row[rest].tolist())]
        pending_x.clear()
        pending_p.clear()
        if kept:
            pending_x.append(np.stack(kept))
            pending_p.append(positions[rest])


class _Queue(torch.utils.data.Sampler):
    """The ``(epoch, shard)`` jobs of the epoch under way, read by the loader in this process."""

    def __init__(self) -> None:
        self.jobs: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)


class CroppedShards(torch.utils.data.Dataset):
    """``(epoch, i)`` → shard ``i`` of a reader as ``(positions, crops)``: one random training
    crop per (sub-)clip, drawn from ``default_rng([seed, epoch, 1, i])`` whoever decodes it."""

    def __init__(self, reader: SplitReader, *, seed: int) -> None:
        self.reader = reader
        self.seed = seed

    def __len__(self) -> int:
        return self.reader.n_blocks()

    def __getitem__(self, job: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        epoch, shard = job
        reader = self.reader
        plan = reader.plan
        total, length = plan.item_shape[-1], plan.length
        rng = np.random.default_rng([self.seed, epoch, 1, shard])
        positions = reader.positions(shard)
        if plan.tracks:  # anywhere within each track (Won et al.'s jamendo_loader.py)
            totals = reader.extents[positions, 1]
            offsets = crop_offsets(rng, len(positions), total=totals, length=length, span=plan.crop_span)
            return positions, reader.crops(positions, offsets, length)
        if length is not None and length <= total and not plan._has_subclips:
            offsets = crop_offsets(rng, len(positions), total=total, length=length, span=plan.crop_span)
            return positions, reader.crops(positions, offsets, length)
        # whole (sub-)clips, or crops of sub-clips (each its own offset): whole rows, cropped here
        _, data = next(reader.blocks(np.array([shard])))
        items = data.reshape(-1, *plan.item_shape)
        if length is None:
            return positions, items.copy()
        offsets = crop_offsets(rng, len(items), total=total, length=length, span=plan.crop_span)
        return positions, crop(items, offsets, length)


def _fresh_handles(_worker: int) -> None:
    """In a loader worker: open the store anew (a forked copy of the parent's connection
    pool is not safe to share)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reader.close()


def eval_batches(
    reader: SplitReader, *, batch_clips: int, shards: np.ndarray | None = None
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Sequential evaluation batches ``(x, positions)``: every crop of every sub-clip of each clip
    (of the shards ``shards`` only, when given: a rank's share).

    ``x`` holds ``len(positions) * plan.examples_per_clip_eval`` examples, clip-major.
    """
    plan = reader.plan
    offsets = eval_offsets(plan.item_shape[-1], plan.length, plan.eval_crops, plan.placement)
    # each crop reads only its chunks; whole (sub-)clips and padded short clips are read whole
    cropping = plan.tracks or (plan.length is not None and plan.length <= plan.item_shape[-1] and not plan._has_subclips)
    pending_x, pending_p = [], []
    count = 0

    def flush():
        data = np.concatenate(pending_x)
        positions = np.concatenate(pending_p)
        pending_x.clear()
        pending_p.clear()
        if cropping:
            return to_tensor(data, reader.dtype), positions
        items = data.reshape(-1, *plan.item_shape)  # (clips * subclips, ...)
        items = np.repeat(items, plan.eval_crops, axis=0)
        starts = np.tile(offsets, len(items) // plan.eval_crops)
        return to_tensor(crop(items, starts, plan.length), reader.dtype), positions

    for block in range(reader.n_blocks()) if shards is None else shards:
        positions = reader.positions(int(block))
        if plan.tracks:  # spread over each whole track
            starts = [eval_offsets(int(n), plan.length, plan.eval_crops, plan.placement) for n in reader.extents[positions, 1]]
            data = reader.crops(np.repeat(positions, plan.eval_crops), np.concatenate(starts), plan.length)
        elif cropping:
            data = reader.crops(np.repeat(positions, plan.eval_crops), np.tile(offsets, len(positions)), plan.length)
        else:
            _, data = next(reader.blocks(np.array([block])))
        pending_x.append(data)
        pending_p.append(positions)
        count += len(positions)
        if count >= batch_clips:
            yield flush()
            count = 0
    if pending_p:
        yield flush()
