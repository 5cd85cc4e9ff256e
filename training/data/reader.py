"""One split of a store, read: its clips' arrays by block, by crop or from a RAM/GPU cache, and the
evaluation batches (every crop of every clip, in store order).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch

from pipeline import MuzarrError, Store
from pipeline.store import ArrayReader
from training.data.plan import ExamplePlan


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
        # an embedding's rows become float32 vectors as they are read (a layer, or the mean of the layers)
        self.dtype = "float32" if plan.vector is not None else store.arrays[plan.array].dtype
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
            self.chunk_clips = int(store.arrays[store.arrays[plan.array].extents].shards[0])
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
                yield positions, keep(self.plan.vectors_of(self.array.rows(self.rows[positions])))

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
