"""Whole tracks of any length (clip mode ``track``): probing, planning and a batch's writes.

A track store concatenates its tracks along the last axis of every array whose size follows
the audio (``waveform`` ``(sample,)``, ``logmel/<v>`` ``(mel, frame)``); ``extents/<array>``
holds each clip's ``[start, length]`` in that array's units (samples at its rate, frames).
Arrays of one row per clip (``status``, ``tabular/<set>``, the extents) are as in any store.

Batch ``b`` (``batch_clips`` consecutive clips, as in any store) owns a **region** of every time
array: a run of whole shards that no other batch touches, so tasks never write the same file.
Regions are planned before any batch runs, from each file's probe (:func:`pipeline.audio.probe`,
on Dask): the most samples the file can decode to, read from its header (an MP3's header length
is an estimate: :mod:`pipeline.mpeg` bounds it). A batch places its tracks one after another at
the lengths they really decode to, so a file that decodes shorter than its header says (encoder
padding, a stopped download) just leaves padding. A batch whose tracks decode longer than its
region holds (a header that lies, a file changed since it was probed) writes nothing and reports
what it decoded; when every batch has run, each such batch gets a new region sized from those
exact lengths at the end of the array, in batch order, and runs again there (:meth:`TrackPlan.replanned`).

The probes and the regions are kept in the store (``_muzarr/tracks.json``): a resumed build or a
grow keeps every region that still fits, so finished batches stay finished; each batch's marker
records its regions, and counts only for the regions the plan gives it. A region a batch left
(its tracks grew) is never reused: it holds no file, and nothing reads it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from pipeline.audio import probe, resampled_length
from pipeline.store.io import read_json, write_json
from pipeline.store.layout import chunk_length, clip_digests, is_time_feature
from pipeline.store.location import Location
from pipeline.store.shards import ShardFormat, shard_path

#: a batch's region is padded to whole shards: a shard holds the most time chunks (pipeline.store.time_chunk,
#: ~2 s each; a power of two, at most MAX_SHARD_CHUNKS) that keep that rounding within PADDING of a batch of
#: median length. Fewer, larger shard files for long tracks (MTG-Jamendo: 64 s shards, ~200,000 files of
#: waveform), small ones for short tracks. Chosen when a store is first planned; a grow keeps it.
PADDING = 0.02
MAX_SHARD_CHUNKS = 64
PROBE = "_muzarr/tracks.json"
#: files probed per Dask task (a probe reads a header: tasks of one file would cost more than the work)
PROBES_PER_TASK = 64
#: times a batch is given a new region in one build before its files are taken to be changing under it
MAX_REPLANS = 3

Region = tuple[int, int]  # (start, size) along a time array: whole shards


@dataclass(frozen=True)
class TrackPlan:
    """Every batch's region of every time array, decided from the probes before any batch runs.

    ``kept_shards`` and ``kept_regions`` are the store's, as first planned (read back from
    ``_muzarr/tracks.json``, validated): a region that still holds its batch's tracks is kept.
    """

    config: Any
    probes: tuple[dict, ...]
    kept_shards: tuple[tuple[str, int], ...] = ()  # (array, chunks per shard)
    kept_regions: tuple[tuple[str, tuple[Region, ...]], ...] = ()  # (array, region of each batch)

    @property
    def n(self) -> int:
        return len(self.probes)

    @property
    def n_batches(self) -> int:
        return -(-self.n // self.config.batch_clips)

    @cached_property
    def features(self) -> list:
        return [f for f in self.config.features if is_time_feature(f)]

    def bound(self, feature, row: int) -> int:
        """The most time steps clip ``row`` can take in ``feature``'s array (0 for a file its probe could not
        read or a track too long to store: the batch decodes it again and places what it gets)."""
        p = self.probes[row]
        if "error" in p or self.config.clip.track_problem(p["frames"], p["rate"]):
            return 0
        samples = resampled_length(p["frames"], orig_sr=p["rate"], target_sr=feature.sample_rate)
        return int(feature.output_shape(samples)[-1])

    def _bounds(self, feature) -> np.ndarray:
        return np.array([self.bound(feature, r) for r in range(self.n)], dtype=np.int64)

    @cached_property
    def shard_chunks(self) -> dict[str, int]:
        """Time chunks per shard of each time array: the store's own, or chosen from the batches' lengths."""
        kept, size, out = dict(self.kept_shards), self.config.batch_clips, {}
        for feature in self.features:
            if feature.name in kept:
                out[feature.name] = kept[feature.name]
                continue
            bounds = self._bounds(feature)
            batches = [int(bounds[b : b + size].sum()) for b in range(0, self.n, size)]
            room = PADDING * float(np.median(batches)) / chunk_length(feature) if batches else 1.0
            out[feature.name] = 1 << max(0, min(int(np.log2(max(room, 1.0))), int(np.log2(MAX_SHARD_CHUNKS))))
        return out

    def shard(self, feature) -> int:
        """Elements of the time axis per shard of ``feature``'s array."""
        return chunk_length(feature) * self.shard_chunks[feature.name]

    @cached_property
    def regions(self) -> dict[str, list[Region]]:
        """Per time array, every batch's region: the kept one where it holds the batch's tracks (or is the
        last region and can grow in place), else a new one after every region there is, in batch order."""
        kept, size, out = dict(self.kept_regions), self.config.batch_clips, {}
        for feature in self.features:
            shard, bounds = self.shard(feature), self._bounds(feature)
            old = kept.get(feature.name, ())
            end = max((s + z for s, z in old), default=0)
            regions = []
            for b in range(self.n_batches):
                need = -(-int(bounds[b * size : (b + 1) * size].sum()) // shard) * shard
                start, held = old[b] if b < len(old) else (None, 0)
                if start is not None and held >= need:
                    regions.append((start, held))
                elif start is not None and start + held == end:
                    regions.append((start, need))
                    end = start + need
                else:
                    regions.append((end, need))
                    end += need
            out[feature.name] = regions
        return out

    def total(self, name: str) -> int:
        """Length of time array ``name``: the end of its last region."""
        return max((s + z for s, z in self.regions[name]), default=0)

    def batch_regions(self, b: int) -> dict[str, Region]:
        """Batch ``b``'s region of each time array: where its task places its tracks, and its marker records."""
        return {name: tuple(r[b]) for name, r in self.regions.items()}

    def replanned(self, decoded: dict[int, list]) -> TrackPlan:
        """The plan after batches decoded longer than their regions: ``decoded`` maps each such batch to what
        its task read of every clip (``[frames, rate]``, or an error message). Those clips' probes become
        exact; every other region is kept, and those batches get new ones."""
        probes = list(self.probes)
        size = self.config.batch_clips
        for b, rows in decoded.items():
            for i, got in enumerate(rows):
                probes[b * size + i] = {"frames": got[0], "rate": got[1]} if isinstance(got, list) else {"error": got}
        regions = tuple((name, tuple(r)) for name, r in self.regions.items())
        return replace(self, probes=tuple(probes), kept_shards=tuple(self.shard_chunks.items()), kept_regions=regions)


def _probe_many(paths: list[str]) -> list[dict]:
    from pipeline.audio import DecodeError

    out = []
    for path in paths:
        try:
            frames, rate = probe(path)
        except DecodeError as error:
            out.append({"error": str(error)})
        else:
            out.append({"frames": frames, "rate": rate})
    return out


def plan_tracks(
    loc: Location, config, clip_ids: list[str], paths: list[str], client, *, reuse: bool, open_path: dict[str, str],
    lengths: dict[str, int], reprobe: bool = False,
) -> TrackPlan:
    """Probe every track not probed by an earlier run of this build (``reuse``: read the store's
    ``_muzarr/tracks.json``; a row is reused when its clip id and path, relative to the source, are
    the same; ``reprobe``: probe every file again, keeping only the regions); ``open_path`` maps those
    paths to the files the workers open; ``lengths`` is each time array's length in the store now
    (a kept region must lie inside it)."""
    old = read_json(loc, PROBE) if reuse else None
    old = old if isinstance(old, dict) else {}
    kept = old.get("shard_chunks")
    kept = tuple((k, v) for k, v in kept.items() if _power_of_two(v)) if isinstance(kept, dict) else ()
    probes: list[dict | None] = [None] * len(paths)
    if not reprobe and all(isinstance(old.get(k), list) for k in ("clips", "paths", "probes")):
        for i, (clip, path, p) in enumerate(zip(old["clips"], old["paths"], old["probes"])):
            if i < len(paths) and clip == clip_ids[i] and path == paths[i] and _valid_probe(p):
                probes[i] = p
    todo = [i for i, p in enumerate(probes) if p is None]
    groups = [todo[k : k + PROBES_PER_TASK] for k in range(0, len(todo), PROBES_PER_TASK)]
    if groups:
        futures = [client.submit(_probe_many, [open_path[paths[i]] for i in g], pure=False) for g in groups]
        for group, future in zip(groups, futures):
            for i, p in zip(group, future.result()):
                probes[i] = p
    plan = TrackPlan(config, tuple(probes), kept)
    regions = old.get("regions")
    valid = {
        f.name: tuple(tuple(r) for r in regions[f.name]) for f in plan.features
        if isinstance(regions, dict) and dict(kept).get(f.name)
        and _valid_regions(regions.get(f.name), shard=plan.shard(f), length=lengths.get(f.name, 0))
    }
    return replace(plan, kept_regions=tuple(valid.items()))


def stored_regions(loc: Location, name: str, *, shard: int, length: int, n_batches: int) -> list[Region] | None:
    """The region of every batch in time array ``name`` as ``_muzarr/tracks.json`` gives them (None when it does
    not: missing, damaged, not whole shards of ``shard`` elements inside ``length``, overlapping)."""
    plan = read_json(loc, PROBE)
    regions = plan.get("regions", {}).get(name) if isinstance(plan, dict) and isinstance(plan.get("regions"), dict) else None
    if len(regions or ()) != n_batches or not _valid_regions(regions, shard=shard, length=length):
        return None
    return [tuple(r) for r in regions]


def save_plan(loc: Location, plan: TrackPlan, clip_ids: list[str], paths: list[str]) -> None:
    """Keep the probes, the shard sizes and the regions in the store (one atomic write): a resumed build or a
    grow plans from them."""
    write_json(loc, PROBE, {
        "clips": clip_ids, "paths": paths, "probes": list(plan.probes), "shard_chunks": plan.shard_chunks,
        "regions": {name: [list(r) for r in regions] for name, regions in plan.regions.items()},
    })


def remove_left_regions(loc: Location, plan: TrackPlan) -> None:
    """Delete the shard files of every time array that lie in no batch's region (a region a batch left when its
    tracks outgrew it, written by an earlier build): nothing reads them, and a copy would carry them."""
    fs, root = loc.fs, loc.root
    for feature in plan.features:
        shard = plan.shard(feature)
        used = {k for s, z in plan.regions[feature.name] for k in range(s // shard, (s + z) // shard)}
        folder = f"{root}/{feature.name}/c"
        try:
            files = fs.find(folder)
        except (FileNotFoundError, OSError):
            continue
        stale = [p for p in files if p.rsplit("/", 1)[-1].isdigit() and int(p.rsplit("/", 1)[-1]) not in used]
        if stale:
            fs.rm(stale)


def _power_of_two(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SHARD_CHUNKS and value & (value - 1) == 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _valid_probe(p: Any) -> bool:
    if not isinstance(p, dict):
        return False
    if "error" in p:
        return isinstance(p["error"], str)
    return all(_count(p.get(k)) and p[k] > 0 for k in ("frames", "rate"))


def _valid_regions(regions: Any, *, shard: int, length: int) -> bool:
    """Regions as a build writes them: whole shards, inside the array's ``length``, none overlapping another."""
    if not isinstance(regions, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(_count(v) and v % shard == 0 for v in r) for r in regions
    ):
        return False
    used = sorted((s, s + z) for s, z in regions if z)
    return all(a[1] <= b[0] for a, b in itertools.pairwise(used)) and all(stop <= length for _, stop in used)


class BatchTracks:
    """One batch's regions of the time arrays: tracks placed one after another at the lengths they decode
    to, in buffers written whole. A track that does not fit marks the batch as overflowing (nothing is
    written; the driver gives it a larger region)."""

    def __init__(self, regions: dict[str, Region], layouts: dict, names: list[str]) -> None:
        self.regions = {n: r for n, r in regions.items() if n in names}  # the time arrays this pass computes
        self.names = list(self.regions)
        self.buffers = {
            n: np.zeros((*layouts[n].shape[:-1], self.regions[n][1]), dtype=layouts[n].dtype) for n in self.names
        }
        self.placed: dict[str, dict[int, tuple[int, int]]] = {n: {} for n in self.names}  # row -> (offset, length)
        self.used = dict.fromkeys(self.names, 0)
        self.overflowing = False

    def put(self, name: str, i: int, values: np.ndarray) -> None:
        """Track ``i``'s values, after the tracks placed before it (tracks are put in row order)."""
        length = values.shape[-1]
        start = self.used[name]
        if start + length > self.regions[name][1]:
            self.overflowing = True
            return
        self.buffers[name][..., start : start + length] = values
        self.placed[name][i] = (start, length)
        self.used[name] = start + length

    def _spans(self, name: str, n: int) -> list[tuple[int, int]]:
        """``(offset in the region, length)`` of every row; a row not placed takes no room where it would be."""
        spans, cursor = [], 0
        for i in range(n):
            start, length = self.placed[name].get(i, (cursor, 0))
            spans.append((start, length))
            cursor = start + length
        return spans

    def digests(self, name: str, n: int) -> list[str]:
        buffer = self.buffers[name]
        return [clip_digests(buffer[None, ..., s : s + z])[0] for s, z in self._spans(name, n)]

    def extents(self, name: str, n: int) -> np.ndarray:
        """int64 ``(n, 2)``: ``[start, length]`` of the batch's ``n`` rows in array ``name``."""
        spans = np.array(self._spans(name, n), dtype=np.int64).reshape(n, 2)
        spans[:, 0] += self.regions[name][0]
        return spans

    def write(self, loc: Location, array, name: str) -> None:
        """The batch's whole region: whole shards, which no other task writes."""
        write_region(loc, array, self.regions[name][0], self.buffers[name])


def write_region(loc: Location, array, start: int, data: np.ndarray) -> None:
    """``data`` into time array ``array`` from ``start``, both whole shards: each shard one atomic write,
    every chunk in it (a chunk of silence is data, not a chunk to leave out)."""
    shard = array.shards[-1]
    fmt = ShardFormat.of(array)
    for k in range(data.shape[-1] // shard):
        part = data[..., k * shard : (k + 1) * shard]
        if fmt is None:  # a layout pipeline.store.shards does not handle: zarr writes it
            array[..., start + k * shard : start + (k + 1) * shard] = part
        else:
            loc.put(shard_path(array, (0,) * (array.ndim - 1) + (start // shard + k,)), fmt.encode(part))


def length_summary(seconds: np.ndarray) -> dict[str, float]:
    """Count, min/median/max and total hours of track lengths (seconds)."""
    if not len(seconds):
        return {"count": 0}
    return {
        "count": len(seconds), "min": float(seconds.min()), "median": float(np.median(seconds)),
        "max": float(seconds.max()), "hours": float(seconds.sum() / 3600),
    }
