"""One task of a build: compute a batch of clips, write its shards, then its completion marker.

Batch ``b`` owns shard ``b`` of every array (``pipeline.build`` cuts the index so), so tasks
never write the same file. The marker is written last and atomically: its presence vouches
for every shard it lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from pipeline.audio import ClipError, DecodeError, load_clip
from pipeline.config import BuildConfig
from pipeline.errors import MuzarrError
from pipeline.store.io import DECODE_NOTE, STATUS_FAILED, STATUS_OK, clips_digest, marker_key, remove_key, write_json
from pipeline.store.layout import EXTENTS, ArrayLayout, clip_digests, fill_value
from pipeline.store.location import Location
from pipeline.store.marker import ArrayFailure, ClipFailure, Marker, Note
from pipeline.store.shards import ShardFormat, shard_path
from pipeline.tracks import BatchTracks, Region


@dataclass(frozen=True)
class BatchJob:
    """One batch's work, as the driver planned it: it crosses to a Dask worker whole (it pickles), and the
    worker computes from it without planning anything again.

    ``layouts`` are every array of the store (a track store's time arrays as the driver's plan sizes them),
    ``clip_ids`` and ``paths`` the batch's clips from row ``start``. ``arrays`` limits the work to those
    arrays (a grow; None: all); ``base`` is then the batch's valid marker, whose status, failures and digests
    stand for the other arrays. ``regions`` is a track store's region ``(start, size)`` of each time array.
    """

    loc: Location
    batch: int
    config: BuildConfig
    layouts: tuple[ArrayLayout, ...]
    start: int
    clip_ids: tuple[str, ...]
    paths: tuple[str, ...]
    arrays: tuple[str, ...] | None = None
    base: Marker | None = None
    regions: Mapping[str, Region] | None = None

    @property
    def stop(self) -> int:
        return self.start + len(self.clip_ids)


@dataclass(frozen=True)
class Overflow:
    """What a batch of a track store returns instead of a marker when its tracks decoded longer than its
    regions hold: nothing was written, and ``decoded`` is each clip's ``[frames, rate]`` (or why it failed),
    from which the driver sizes its new regions (:meth:`pipeline.tracks.TrackPlan.replanned`)."""

    batch: int
    decoded: tuple


def run_batch(job: BatchJob) -> Marker | Overflow:
    """Process one batch (a Dask task): compute, write its shards, status and marker.

    Returns the marker it wrote (:class:`~pipeline.store.marker.Marker`): per-clip status, the clips that
    could not be decoded (no array holds them), the stored clips one feature failed (that array holds its
    fill value there, the others hold the clip), per-array clip digests and notes (what storage lost of a
    stored clip, e.g. int16 clipping, or how its file decoded); or an :class:`Overflow`.
    """
    loc, batch, config, base = job.loc, job.batch, job.config, job.base
    clip_ids, paths = job.clip_ids, job.paths
    group = loc.open_group(mode="r+")
    layouts = {layout.name: layout for layout in job.layouts}
    todo = [name for name in layouts if job.arrays is None or name in job.arrays]
    kept = {} if base is None else {n: d for n, d in base.digests.items() if n in layouts and n not in todo}
    features = [f for f in config.features if f.name in todo]
    rates = tuple(sorted({f.sample_rate for f in features}))
    n = len(clip_ids)
    start, stop = job.start, job.stop
    tracks = BatchTracks(job.regions, layouts, todo) if job.regions is not None else None
    timed = set(job.regions or ())
    todo_rows = [name for name in todo if name not in timed and not name.startswith(f"{EXTENTS}/")]
    # A failed clip's rows hold the array's fill value (NaN in a float array), as rows never written do.
    buffers = {
        name: np.full((n, *layouts[name].shape[1:]), fill_value(layouts[name].dtype), dtype=layouts[name].dtype)
        for name in todo_rows
    }
    before = np.asarray(base.status if base else [STATUS_OK] * n, dtype=np.int8)
    status = before.copy()
    earlier = {f.clip_id: f for f in (base.failures if base else ())}
    failures: dict[int, ClipFailure] = {}
    lost: list[ArrayFailure] = []  # failures of one array only: the clip stays stored in the others
    notes: list[Note] = []
    decoded: list = [None] * n  # track stores: [frames, rate] (or the error) of each file, as read here

    def blank(i: int, name: str) -> None:  # a track not placed in a time array takes no room there
        if name in buffers:
            buffers[name][i] = fill_value(buffers[name].dtype)

    pending: dict[str, list] = {}  # batched features: the (row, audio) of each clip, computed after the loop

    def put(i: int, feature, audio, compute) -> None:
        """Store what ``compute()`` gives for clip ``i``, or record it as this array's failure."""
        try:
            values = compute()
            if not _all_finite(values):
                raise ValueError("computed values are not finite (NaN or infinity)")
        except Exception as error:  # noqa: BLE001 - a feature that fails on one clip is that array's failure
            # The clip keeps what the other features gave it; this array holds its fill value there.
            blank(i, feature.name)
            lost.append(_failure(clip_ids[i], paths[i], feature.name, error).of_array(feature.name))
            return
        if feature.name in timed:
            tracks.put(feature.name, i, values)
        else:
            buffers[feature.name][i] = values
        note = feature.storage_note(audio)
        if note:
            notes.append(Note(clip_ids[i], feature.name, note))

    for i, path in enumerate(paths):
        if status[i] == STATUS_FAILED:  # failed in an earlier pass: it would fail here the same way
            failures[i] = earlier[clip_ids[i]]
            continue
        try:
            clip = load_clip(path, rates=rates, policy=config.clip)
        except Exception as error:  # noqa: BLE001 - one bad clip must not stop the build
            failure = _failure(clip_ids[i], path, "clip" if isinstance(error, ClipError) else "decode", error)
            decoded[i] = failure.message
            if base is None:
                status[i] = STATUS_FAILED
                failures[i] = failure
                for name in todo:
                    blank(i, name)
            else:
                # A grow never takes a stored clip away (its file changed or went since): only the
                # arrays this pass adds have nothing for it.
                for feature in features:
                    blank(i, feature.name)
                    lost.append(failure.of_array(feature.name))
            continue
        decoded[i] = [clip.frames, clip.rate]
        if tracks and tracks.overflowing:
            continue  # only the lengths are needed now: the batch runs again in a larger region
        if clip.notes:
            notes.append(Note(clip_ids[i], DECODE_NOTE, "; ".join(clip.notes)))
        for feature in features:
            audio = clip.audio[feature.sample_rate]
            if feature.batched:  # computed for the whole batch at once, below
                pending.setdefault(feature.name, []).append((i, audio))
                continue
            put(i, feature, audio, lambda f=feature, a=audio: f.extract(a, sampling_rate=f.sample_rate))
    if tracks and tracks.overflowing:
        # Nothing is written: the driver gives this batch regions sized from what was decoded here.
        return Overflow(batch, tuple(decoded))
    for feature in features:
        if feature.name in pending:
            for i, audio, compute in _batched(feature, pending[feature.name]):
                put(i, feature, audio, compute)
    digests = {}
    for name, buffer in buffers.items():
        _write_shard(loc, group[name], batch, start, stop, buffer)
        digests[name] = clip_digests(buffer)
    if tracks:
        digests.update(_write_tracks(loc, group, batch, start, stop, tracks, todo))
    # The arrays this pass keeps are not touched: a grow never changes what an existing array holds.
    digests.update(kept)
    if base is None:
        _write_shard(loc, group["status"], batch, start, stop, status)
    kept_failures = tuple(x for x in (base.array_failures if base else ()) if x.array in kept)
    marker = Marker(
        batch=batch, start=start, stop=stop, clips=clips_digest(clip_ids), status=tuple(status.tolist()),
        failures=tuple(failures[i] for i in sorted(failures)), array_failures=kept_failures + tuple(lost),
        digests={name: tuple(digests[name]) for name in layouts}, notes=_kept_notes(base, kept, clip_ids, status) + tuple(notes),
    )
    if job.regions is not None:  # where its tracks went, and how long each one decoded (seconds)
        seconds = tuple(got[0] / got[1] if isinstance(got, list) and s == STATUS_OK else None for got, s in zip(decoded, status))
        marker = replace(marker, regions=dict(job.regions), seconds=seconds)
    # The marker is written last, in one atomic write: its presence means every shard it
    # lists is on disk.
    write_json(loc, marker_key(batch), marker.to_dict())
    return marker


def _batched(feature, items: list):
    """``(row, audio, compute)`` for each of ``items`` of a batched feature: one call computes every clip of the
    batch (a model's forward passes shared across clips); if that call fails, each clip is computed alone, so
    that the clip that fails is the one recorded."""
    try:
        values = feature.extract_many([audio for _, audio in items])
    except Exception:  # noqa: BLE001 - each clip alone says which one fails, and why
        values = None
    for k, (i, audio) in enumerate(items):
        if values is not None:
            yield i, audio, lambda v=values[k]: v
        else:
            yield i, audio, lambda a=audio: feature.extract(a, sampling_rate=feature.sample_rate)


def _write_tracks(loc: Location, group, batch: int, start: int, stop: int, tracks: BatchTracks, todo) -> dict:
    """Write the batch's regions of the time arrays and its rows of their extents; their clip digests."""
    digests = {}
    n = stop - start
    for name in tracks.names:
        tracks.write(loc, group[name], name)
        digests[name] = tracks.digests(name, n)
        extents = f"{EXTENTS}/{name}"
        if extents in todo:
            data = tracks.extents(name, n)
            _write_shard(loc, group[extents], batch, start, stop, data)
            digests[extents] = clip_digests(data)
    return digests


def _failure(clip_id: str, path: str, stage: str, error: BaseException) -> ClipFailure:
    """A failure record: the clip, its file, the stage (``decode``, ``clip`` or an array name) and one line of why."""
    message = str(error).strip() or type(error).__name__
    if not isinstance(error, (DecodeError, MuzarrError)):
        message = f"{type(error).__name__}: {message}"
    return ClipFailure(clip_id, path, stage, message.splitlines()[0])


def _kept_notes(base: Marker | None, kept: dict, clip_ids, status: np.ndarray) -> tuple[Note, ...]:
    """The earlier pass's notes on the arrays this pass keeps, for clips still stored."""
    stored = {clip_id for clip_id, s in zip(clip_ids, status) if s == STATUS_OK}
    return tuple(x for x in (base.notes if base else ()) if x.array in kept and x.clip_id in stored)


def _all_finite(values: np.ndarray) -> bool:
    """No NaN or infinity in ``values`` (float16 by its exponent bits: 9x faster than isfinite)."""
    if values.dtype == np.float16:
        return not ((values.view(np.uint16) & 0x7C00) == 0x7C00).any()
    return values.dtype.kind != "f" or bool(np.isfinite(values).all())


def _write_shard(loc: Location, array, batch: int, start: int, stop: int, data) -> None:
    """Write the batch's whole shard (one atomic file or object, replacing the old one).

    The old shard stays readable until it is replaced: readers of the store as it was (a
    grow rewrites the last, partial shard) never see it missing. Shards in muzarr's own
    format are encoded here, byte for byte what zarr-python writes, at a fraction of its
    cost (``pipeline.store.shards``); anything else goes through zarr. There, a shard that cannot
    be decoded (zarr merges into a partial edge shard) is deleted first, then written anew.
    """
    shard_format = ShardFormat.of(array)
    rows = shard_format.shard_shape[0] if shard_format is not None else 0
    # Only a write of every row the shard holds may replace it whole.
    if shard_format is not None and start == batch * rows and stop == min(array.shape[0], start + rows):
        loc.put(shard_path(array, batch), shard_format.encode(data))
        return
    key = f"{array.path}/{array.metadata.encode_chunk_key((batch,) + (0,) * (array.ndim - 1))}"
    try:
        try:
            array[start:stop] = data
        except Exception:  # noqa: BLE001 - a damaged old shard: replace it whole
            remove_key(loc, key)
            array[start:stop] = data
    except OSError as error:  # zarr's store drops the file's name (a full disk): name the shard
        if error.filename is not None or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, f"{loc.root}/{key}") from error
