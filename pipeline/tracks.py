"""Whole tracks of any length (clip mode ``track``): probing, planning and a batch's writes.

A track store concatenates its tracks along the last axis of every array whose size follows
the audio (``waveform`` ``(sample,)``, ``logmel/<v>`` ``(mel, frame)``); ``extents/<array>``
holds each clip's ``[start, length]`` in that array's units (samples at its rate, frames).
Arrays of one row per clip (``status``, ``tabular/<set>``, the extents) are as in any store.

Every length is known before anything is written: a planning step probes each file
(:func:`pipeline.audio.probe`, on Dask) and derives each array's length per clip with one
formula (:func:`pipeline.audio.resample`'s length, then the feature's ``output_shape``). The
probe is kept in the store (``_muzarr/tracks.json``), so a resumed build or a grow plans the
same layout. Batch ``b`` (``batch_clips`` consecutive clips, as in any store) owns a region of
every time array that starts on a shard boundary and is padded with zeros to whole shards, so
tasks never write the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from pipeline.audio import probe, resampled_length
from pipeline.errors import MuzarrError
from pipeline.store.io import read_json, write_json
from pipeline.store.layout import chunk_length, clip_digests, fill_value, is_time_feature
from pipeline.store.location import Location

#: a batch's region is padded to whole shards: a shard holds the most time chunks (pipeline.store.time_chunk,
#: ~2 s each; a power of two, at most MAX_SHARD_CHUNKS) that keep that rounding within PADDING of a batch of
#: median length. Fewer, larger shard files for long tracks (MTG-Jamendo: 64 s shards, ~200,000 files of
#: waveform), small ones for short tracks. Chosen when a store is first planned; a grow keeps it.
PADDING = 0.02
MAX_SHARD_CHUNKS = 64
PROBE = "_muzarr/tracks.json"
#: files probed per Dask task (a probe reads a header: tasks of one file would cost more than the work)
PROBES_PER_TASK = 64


@dataclass(frozen=True)
class TrackPlan:
    """Per clip and time array, where its data goes: decided from the probes before any batch runs."""

    config: Any
    probes: tuple[dict, ...]
    kept_shards: tuple[tuple[str, int], ...] = ()  # (array, chunks per shard) of the store as first planned

    @property
    def n(self) -> int:
        return len(self.probes)

    @cached_property
    def features(self) -> list:
        return [f for f in self.config.features if is_time_feature(f)]

    @cached_property
    def problems(self) -> list[tuple[str, str] | None]:
        """Per clip: ``(stage, message)`` of why it cannot be stored, or None."""
        out = []
        for p in self.probes:
            if "error" in p:
                out.append(("decode", p["error"]))
                continue
            problem = self.config.clip.track_problem(p["frames"], p["rate"])
            out.append(("clip", problem) if problem else None)
        return out

    def length(self, feature, row: int) -> int:
        """The one formula: ``output_shape`` of the resampled length (0 for a clip that cannot be stored)."""
        if self.problems[row] is not None:
            return 0
        p = self.probes[row]
        return int(feature.output_shape(resampled_length(p["frames"], orig_sr=p["rate"], target_sr=feature.sample_rate))[-1])

    @cached_property
    def shard_chunks(self) -> dict[str, int]:
        """Time chunks per shard of each time array: the store's own, or chosen from the batches' lengths."""
        kept, size, out = dict(self.kept_shards), self.config.batch_clips, {}
        for feature in self.features:
            if feature.name in kept:
                out[feature.name] = kept[feature.name]
                continue
            lengths = [self.length(feature, r) for r in range(self.n)]
            batches = [sum(lengths[b : b + size]) for b in range(0, self.n, size)]
            room = PADDING * float(np.median(batches)) / chunk_length(feature) if batches else 1.0
            out[feature.name] = 1 << max(0, min(int(np.log2(max(room, 1.0))), int(np.log2(MAX_SHARD_CHUNKS))))
        return out

    def shard(self, feature) -> int:
        """Elements of the time axis per shard of ``feature``'s array."""
        return chunk_length(feature) * self.shard_chunks[feature.name]

    @cached_property
    def _regions(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per array: every clip's length, and every batch's region start (one more entry: the total)."""
        size = self.config.batch_clips
        out = {}
        for feature in self.features:
            lengths = np.array([self.length(feature, r) for r in range(self.n)], dtype=np.int64)
            shard = self.shard(feature)
            used = [int(lengths[b : b + size].sum()) for b in range(0, self.n, size)]
            starts = np.concatenate([[0], np.cumsum([-(-u // shard) * shard for u in used])]).astype(np.int64)
            out[feature.name] = (lengths, starts)
        return out

    def total(self, name: str) -> int:
        return int(self._regions[name][1][-1])

    def extents(self, name: str) -> np.ndarray:
        """int64 ``(n_clips, 2)``: ``[start, length]`` of every clip in array ``name``."""
        lengths, starts = self._regions[name]
        size = self.config.batch_clips
        out = np.zeros((self.n, 2), dtype=np.int64)
        for b in range(len(starts) - 1):
            chunk = lengths[b * size : (b + 1) * size]
            out[b * size : b * size + len(chunk), 0] = starts[b] + np.concatenate([[0], np.cumsum(chunk)[:-1]])
            out[b * size : b * size + len(chunk), 1] = chunk
        return out

    def padding(self, name: str) -> float:
        """Share of array ``name``'s time axis that is shard rounding, not audio."""
        lengths, starts = self._regions[name]
        total = int(starts[-1])
        return 0.0 if total == 0 else 1 - int(lengths.sum()) / total

    def batch(self, b: int) -> dict:
        """What batch ``b``'s task needs (plain JSON-able values: it travels to a Dask worker)."""
        size = self.config.batch_clips
        rows = range(b * size, min(self.n, (b + 1) * size))
        arrays = {}
        for feature in self.features:
            lengths, starts = self._regions[feature.name]
            arrays[feature.name] = {
                "start": int(starts[b]), "size": int(starts[b + 1] - starts[b]), "lengths": lengths[rows.start : rows.stop].tolist(),
            }
        return {"probes": [self.probes[r] for r in rows], "problems": [self.problems[r] for r in rows], "arrays": arrays}


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
    loc: Location, config, clip_ids: list[str], paths: list[str], client, *, reuse: bool, open_path: dict[str, str]
) -> TrackPlan:
    """Probe every track not probed by an earlier run of this build (``reuse``: read the store's
    ``_muzarr/tracks.json``; a row is reused when its clip id and path, relative to the source, are
    the same); ``open_path`` maps those paths to the files the workers open."""
    old = read_json(loc, PROBE) if reuse else None
    kept = old.get("shard_chunks") if isinstance(old, dict) else None
    kept = tuple((k, v) for k, v in kept.items() if _power_of_two(v)) if isinstance(kept, dict) else ()
    probes: list[dict | None] = [None] * len(paths)
    if isinstance(old, dict) and all(isinstance(old.get(k), list) for k in ("clips", "paths", "probes")):
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
    return TrackPlan(config, tuple(probes), kept)


def save_probes(loc: Location, plan: TrackPlan, clip_ids: list[str], paths: list[str]) -> None:
    """Keep the probes and the shard sizes in the store (one atomic write): a resumed build or a grow plans
    from them."""
    write_json(loc, PROBE, {"clips": clip_ids, "paths": paths, "probes": list(plan.probes), "shard_chunks": plan.shard_chunks})


def _power_of_two(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SHARD_CHUNKS and value & (value - 1) == 0


def _valid_probe(p: Any) -> bool:
    if not isinstance(p, dict):
        return False
    if "error" in p:
        return isinstance(p["error"], str)
    return all(isinstance(p.get(k), int) and not isinstance(p.get(k), bool) and p[k] > 0 for k in ("frames", "rate"))


class BatchTracks:
    """One batch's regions of the time arrays: buffers filled track by track, written whole."""

    def __init__(self, track: dict, layouts: dict, names: list[str]) -> None:
        self.problems = [tuple(p) if p else None for p in track["problems"]]
        self.probes = track["probes"]
        self.regions = track["arrays"]
        self.names = [n for n in names if n in self.regions]  # the time arrays this pass computes
        self.offsets = {n: np.concatenate([[0], np.cumsum(r["lengths"])[:-1]]).astype(np.int64) for n, r in self.regions.items()}
        self.buffers = {
            n: np.zeros((*layouts[n].shape[:-1], self.regions[n]["size"]), dtype=layouts[n].dtype) for n in self.names
        }

    def check_length(self, i: int, feature, samples: np.ndarray) -> None:
        """The decoded track has the length it was planned with (else it fails: never cut or padded)."""
        p = self.probes[i]
        want = resampled_length(p["frames"], orig_sr=p["rate"], target_sr=feature.sample_rate)
        if len(samples) != want:
            raise MuzarrError(
                f"decoded to {len(samples)} samples at {feature.sample_rate} Hz, but its probe planned {want} "
                f"({p['frames']} frames at {p['rate']} Hz): the file changed since the build was planned, or its header "
                "is wrong; rebuild with --overwrite to probe again"
            )

    def put(self, name: str, i: int, values: np.ndarray) -> None:
        length = self.regions[name]["lengths"][i]
        if values.shape[-1] != length:
            raise MuzarrError(f"{name} gave {values.shape[-1]} time steps, the plan has {length}")
        start = self.offsets[name][i]
        self.buffers[name][..., start : start + length] = values

    def clear(self, i: int) -> None:
        for name, buffer in self.buffers.items():
            self.blank(name, buffer, [i])

    def blank(self, name: str, buffer: np.ndarray, rows) -> None:
        """The tracks ``rows`` of ``buffer`` hold the array's fill value (NaN in a float array): they failed."""
        for i in rows:
            start = self.offsets[name][i]
            buffer[..., start : start + self.regions[name]["lengths"][i]] = fill_value(buffer.dtype)

    def digests(self, name: str, buffer: np.ndarray) -> list[str]:
        return [
            clip_digests(buffer[None, ..., s : s + n])[0] for s, n in zip(self.offsets[name], self.regions[name]["lengths"])
        ]

    def extents(self, name: str) -> np.ndarray:
        region = self.regions[name]
        return np.stack([region["start"] + self.offsets[name], np.asarray(region["lengths"], dtype=np.int64)], axis=1)

    def read(self, array, name: str) -> np.ndarray:
        region = self.regions[name]
        return array[..., region["start"] : region["start"] + region["size"]]

    def write(self, array, name: str, buffer: np.ndarray) -> None:
        """The batch's whole region: whole shards, which no other task writes."""
        region = self.regions[name]
        if region["size"]:
            array[..., region["start"] : region["start"] + region["size"]] = buffer


def length_summary(seconds: np.ndarray) -> dict[str, float]:
    """Count, min/median/max and total hours of track lengths (seconds)."""
    if not len(seconds):
        return {"count": 0}
    return {
        "count": len(seconds), "min": float(seconds.min()), "median": float(np.median(seconds)),
        "max": float(seconds.max()), "hours": float(seconds.sum() / 3600),
    }

