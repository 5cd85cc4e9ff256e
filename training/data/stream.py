"""Shuffled training batches, read shard by shard.

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
from collections.abc import Iterator

import numpy as np
import torch

from training.data.plan import crop_offsets
from training.data.reader import SplitReader, crop, gather_tensor


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
