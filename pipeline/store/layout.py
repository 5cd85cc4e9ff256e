"""The arrays of a store: their shapes, chunks, shards, codecs, dimension names and fill values
(store layout 2), the per-clip content digests, and the checks a layout read from a store must pass.

Layout of a store at ``URL`` (any fsspec URL; a local directory by default)::

    URL/zarr.json                 group; attributes["muzarr"] is the manifest
    URL/status                    int8 [clip]: 0 pending, 1 ok, 2 failed (authoritative)
    URL/waveform                  [clip, (subclip,) time_waveform]
    URL/logmel/<variant>          [clip, (subclip,) mel_<variant>, frame_<variant>]
    URL/tabular/<set>             [clip, (subclip,) column_<set>]
    URL/tables/clips.parquet      clip_id, path, status, stage, error, metadata
    URL/tables/labels.parquet     clip_id + one column per tag, or label / label_index
    URL/tables/splits.parquet     clip_id + one column per split scheme
    URL/tables/checksums.parquet  per array and clip: content digest
    URL/_muzarr/batches/*.json    completion marker of each finished batch (JSON, written atomically)
    URL/_muzarr/keys.json         every key of the finished store with its size (for copies over HTTP)
    URL/_muzarr/target.json       only while a build or grow is under way: what it is building

Every feature array is sharded so that one build task owns whole shards: ``batch_clips``
clips per shard. Inside a shard, waveforms and log-mels are chunked along time (store layout 2:
one clip by :func:`time_chunk` samples or frames, so a crop reads only the chunks it overlaps),
tabular arrays by whole clips; every chunk ends with its ``crc32c``.
The bracketed names are each array's Zarr ``dimension_names`` (:func:`dimension_names`); a row
no build wrote, or whose clip failed, holds NaN in a float array and 0 in an integer one
(:func:`fill_value`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import xxhash
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.errors import MuzarrError
from pipeline.store.io import FRESH_COPY, MAX_BLOCK_BYTES, STATUS_NAMES, STATUS_PENDING, check_metadata_size
from pipeline.store.location import Location

#: 2: time-chunked waveforms and log-mels, crc32c per chunk (1: whole-clip chunks)
SCHEMA_VERSION = 2
TABLES = ("clips", "labels", "splits", "checksums")
CHUNK_TARGET_BYTES = 1 << 20
# Codecs a store may use: decoding any of these runs no code from the store (no pickle, no object dtype).
ALLOWED_CODECS = frozenset({"bytes", "blosc", "zstd", "gzip", "crc32c", "transpose", "sharding_indexed"})


def compressor() -> BloscCodec:
    # lz4 decodes at memory speed: training reads every clip each epoch, so reading speed
    # matters more than the last 10 % of disk (zstd 1: 1.52x on log-mels, lz4: 1.38x).
    # Bit-shuffling would store waveforms 1.13x -> 1.21x smaller and encode them ~10 % faster,
    # but decodes them 1.43x slower (log-mels 1.15x slower): a build encodes once, training
    # decodes every epoch.
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def chunk_clips(clip_bytes: int, *, batch_clips: int) -> int:
    """Clips per chunk: the largest power of two (dividing ``batch_clips``) under ~1 MiB."""
    per_chunk = 1
    while (
        per_chunk * 2 <= batch_clips
        and batch_clips % (per_chunk * 2) == 0
        and per_chunk * 2 * clip_bytes <= CHUNK_TARGET_BYTES
    ):
        per_chunk *= 2
    return per_chunk


#: seconds of audio per time chunk. Measured (benchmarks/loader_throughput.py --candidates): crop
#: reads/s of 59,049-sample waveform crops 5,548 / 5,715 / 5,660 with chunks of 0.91 / 2.08 / 7.28 s,
#: of 188-frame log-mel crops 4,368 / 11,203 / 10,934 with chunks of 1.02 / 2.05 / 6.14 s.
TIME_CHUNK_SECONDS = 2.0


def time_chunk(length: int | None, *, rate: float) -> int:
    """Samples or frames per chunk along the time axis of an array of ``length`` per clip
    (``None``: tracks of any length) at ``rate`` per second.

    About :data:`TIME_CHUNK_SECONDS`: the divisor of ``length`` nearest to it (chunks tile
    the clip exactly), when one lies within a factor of 2; else (a length with no such
    divisor, or no fixed length) the power of two nearest to it, and the shard grid reaches
    past the clip's end as zarr allows. A clip shorter than 1.5 chunks is one chunk.
    """
    target = max(1, round(TIME_CHUNK_SECONDS * rate))
    if length is not None and length <= 1.5 * target:
        return length
    if length is not None:
        divisors = [d for d in range(max(1, target // 2), 2 * target + 1) if length % d == 0]
        if divisors:
            return min(divisors, key=lambda d: (abs(d - target), d))
    return 1 << max(0, round(math.log2(target)))


def time_rate(feature) -> float | None:
    """Samples or frames per second along the last axis of ``feature``'s arrays (``None``: no time axis)."""
    return feature.frame_rate()


def split_chunks(feature, chunks: tuple[int, ...]) -> tuple[int, ...]:
    """``chunks`` (of ``feature``'s own axes, the last ones) with each of its :attr:`split_axes` one index
    per chunk: an embedding's layers, so that a probe of one layer reads only that layer's bytes."""
    axes = tuple(feature.axes)
    out = list(chunks)
    for i, axis in enumerate(axes):
        if axis in feature.split_axes:
            out[len(out) - len(axes) + i] = 1
    return tuple(out)


#: the per-clip content digest of new stores (the manifest's "digest"); older stores used blake2b-128
DIGEST = "xxh3_128"
CLIP_DIGESTS = {
    "xxh3_128": lambda raw: xxhash.xxh3_128_hexdigest(raw),
    "blake2b_128": lambda raw: hashlib.blake2b(raw, digest_size=16).hexdigest(),
}


def clip_digests(data: np.ndarray, *, algorithm: str = DIGEST) -> list[str]:
    """One content digest per clip (first axis) of its little-endian bytes.

    xxh3-128 hashes at memory speed (0.1 ms for a 29 s waveform, blake2b 1.6 ms): a build
    digests every byte it writes. It detects damage, not tampering: stores are shared with
    their checksums from the same source.
    """
    if algorithm not in CLIP_DIGESTS:
        raise MuzarrError(f"unknown clip digest {algorithm!r}; known: {', '.join(CLIP_DIGESTS)}")
    digest = CLIP_DIGESTS[algorithm]
    little = data.astype(data.dtype.newbyteorder("<"), copy=False)
    return [digest(np.ascontiguousarray(row)) for row in little]


def combine_digests(digests: Iterable[str]) -> str:
    """An array's checksum: blake2b-256 over its clip digests in clip order."""
    h = hashlib.blake2b(digest_size=32)
    for digest in digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


#: Dimensions every array of a store shares: one row per clip, and the clip policy's sub-clips.
SHARED_DIMENSIONS = ("clip", "subclip")


def dimension_names(variant: str, axes: Sequence[str]) -> tuple[str, ...]:
    """The Zarr ``dimension_names`` of array ``variant`` whose axes are ``axes`` (``("clip", "mel", "frame")``).

    ``clip`` and ``subclip`` are shared by every array and ``status``, so xarray lines a group's
    arrays up on them and ``ds.where(ds.status == 1)`` masks what is not ok. Any other axis is
    the variant's own (``mel_<variant>``): two log-mel variants in one group differ in size (64
    and 96 mels) or in what a bin means, and xarray refuses one dimension with two sizes.
    """
    return tuple(axis if axis in SHARED_DIMENSIONS else f"{axis}_{variant}" for axis in axes)


def fill_value(dtype: str) -> float | int:
    """What a row no build wrote, or whose clip failed, holds: NaN in a float array, never a value a
    clip could have (zeros are digital silence); 0 in an integer one (int16 audio has no spare value)."""
    return float("nan") if np.dtype(dtype).kind == "f" else 0


@dataclass(frozen=True)
class ArrayLayout:
    """Shape, dtype, chunking, codecs and attributes of one feature array in a store."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    attrs: dict
    extents: str | None = None  # a track store's time array: the array of its clips' [start, length]
    dimension_names: tuple[str, ...] | None = None
    compressed: bool = True

    @property
    def compressors(self) -> list:
        # crc32c last: a reader checks every chunk it touches (a crop cannot check its clip's digest)
        return [compressor(), Crc32cCodec()] if self.compressed else [Crc32cCodec()]


#: features whose arrays are stored without blosc: a crop is then a copy out of the mapped shard,
#: nothing to decode. Measured (benchmarks/loader_throughput.py --candidates, 160 MTAT-like clips):
#: crop reads/s 5,715 raw vs 3,217 lz4 for waveforms (1.07x the bytes), 11,203 vs 7,011 for
#: 96 x 1440 log-mels (1.24x the bytes); tabular arrays are whole-row reads and stay compressed.
UNCOMPRESSED = frozenset({"waveform", "logmel"})


def plan_layout(config, n_clips: int, *, tracks=None) -> list[ArrayLayout]:
    """The arrays a build with ``config`` writes for ``n_clips`` clips (``tracks``: a track store's
    :class:`~pipeline.tracks.TrackPlan`, which sizes its time arrays)."""
    sub = (config.clip.n_subclips,) if config.clip.n_subclips else ()
    layouts = []
    timed = [f for f in config.features if config.clip.mode == "track" and is_time_feature(f)]
    for feature in config.features:
        if feature in timed:
            layouts.append(time_layout(feature, tracks))
            continue
        per_item = feature.output_shape(config.clip.n_samples(feature.sample_rate))
        clip_shape = (*sub, *per_item)
        rate = time_rate(feature)
        if rate is None:
            chunk_shape = split_chunks(feature, clip_shape)
            clip_bytes = math.prod(chunk_shape) * np.dtype(feature.dtype).itemsize
            per_chunk = chunk_clips(clip_bytes, batch_clips=config.batch_clips)
            chunks, shards = (per_chunk, *chunk_shape), (config.batch_clips, *clip_shape)
        else:
            step = time_chunk(clip_shape[-1], rate=rate)
            chunks = (1, *split_chunks(feature, (*clip_shape[:-1], step)))
            shards = (config.batch_clips, *clip_shape[:-1], -(-clip_shape[-1] // step) * step)
        axes = ("clip", *(("subclip",) if sub else ()), *feature.axes)
        layouts.append(
            ArrayLayout(
                name=feature.name,
                shape=(n_clips, *clip_shape),
                dtype=feature.dtype,
                chunks=chunks,
                shards=shards,
                # "status" names the array that says which rows hold data (CF: ancillary_variables)
                attrs={
                    "feature": feature.to_dict(), **feature.attrs(), "axes": list(axes),
                    "status": "status", "ancillary_variables": "status",
                },
                dimension_names=dimension_names(feature.variant, axes),
                compressed=feature.kind not in UNCOMPRESSED,
            )
        )
    return layouts + [extents_layout(f, n_clips, config.batch_clips) for f in timed]


def _status_layout(n_clips: int, batch_clips: int) -> ArrayLayout:
    return ArrayLayout(
        name="status", shape=(n_clips,), dtype="int8", chunks=(batch_clips,), shards=None,
        attrs={
            "values": STATUS_NAMES, "axes": ["clip"],
            "flag_values": sorted(STATUS_NAMES), "flag_meanings": " ".join(STATUS_NAMES[v] for v in sorted(STATUS_NAMES)),
        },
        dimension_names=dimension_names("status", ("clip",)),
    )


def _create_array(group: zarr.Group, layout: ArrayLayout) -> zarr.Array:
    return group.create_array(
        layout.name, shape=layout.shape, chunks=layout.chunks, shards=layout.shards, dtype=layout.dtype,
        fill_value=STATUS_PENDING if layout.name == "status" else fill_value(layout.dtype),
        compressors=layout.compressors, overwrite=True, config={"write_empty_chunks": True}, attributes=layout.attrs,
        dimension_names=layout.dimension_names,
    )


def create_arrays(loc: Location, layouts: list[ArrayLayout], n_clips: int, batch_clips: int):
    """Create the group, the status array and every feature array (empty)."""
    group = loc.open_group(mode="a")
    for layout in [_status_layout(n_clips, batch_clips), *layouts]:
        _create_array(group, layout)
    return group


def ensure_arrays(loc: Location, layouts: list[ArrayLayout], n_clips: int, batch_clips: int) -> set[str]:
    """Bring the group to ``layouts`` for ``n_clips`` clips, keeping every array that already fits.

    An array with the right dtype, chunks, shards and clip shape is kept (resized along the
    clip axis if the clip count changed; its files are not touched otherwise); a missing or
    different one is created empty. Returns the names created, whose old completion claims
    no longer hold. Idempotent: a build killed here does the same again.
    """
    group = loc.open_group(mode="a")
    created = set()
    for layout in [_status_layout(n_clips, batch_clips), *layouts]:
        check_metadata_size(loc, f"{layout.name}/zarr.json")
        try:
            array = group[layout.name]
        except (KeyError, ValueError, TypeError, zarr.errors.BaseZarrError):
            array = None  # missing, or metadata a killed writer left unreadable
        # a track store's time array grows along time, any other along clips
        fixed = slice(0, -1) if layout.extents else slice(1, None)
        fits = (
            isinstance(array, zarr.Array)
            and array.dtype == np.dtype(layout.dtype)
            and tuple(array.shape[fixed]) == tuple(layout.shape[fixed])
            and tuple(array.chunks) == tuple(layout.chunks)
            and (tuple(array.shards) if array.shards else None) == (tuple(layout.shards) if layout.shards else None)
            and _same_metadata(array, layout)
        )
        if not fits:
            _create_array(group, layout)
            created.add(layout.name)
        elif layout.extents and array.shape != layout.shape:
            array.resize(layout.shape)
        elif not layout.extents and array.shape[0] != n_clips:
            array.resize((n_clips, *layout.shape[1:]))
    return created


def _same_metadata(array: zarr.Array, layout: ArrayLayout) -> bool:
    """``array`` has the fill value, dimension names and attributes ``layout`` gives (a kept array keeps them)."""
    wanted_fill = STATUS_PENDING if layout.name == "status" else fill_value(layout.dtype)
    fill = array.metadata.fill_value
    same_fill = bool(np.isnan(fill)) if np.isnan(wanted_fill) else fill == wanted_fill
    names = getattr(array.metadata, "dimension_names", None)
    return (
        same_fill and tuple(names or ()) == tuple(layout.dimension_names or ())
        and array.attrs.asdict() == json.loads(json.dumps(layout.attrs))
    )


def array_problems(array: zarr.Array) -> list[str]:
    """Why an array must not be decoded: a non-numeric dtype or a codec outside :data:`ALLOWED_CODECS`."""
    problems = []
    if np.dtype(array.dtype).kind not in "biuf":
        problems.append(f"dtype {array.dtype} is not numeric")
    names = []
    for codec in array.metadata.codecs if hasattr(array.metadata, "codecs") else []:
        names.append(codec.to_dict().get("name"))
        for inner in (*getattr(codec, "codecs", ()), *getattr(codec, "index_codecs", ())):
            names.append(inner.to_dict().get("name"))
    if not hasattr(array.metadata, "codecs"):
        problems.append("it is not a Zarr v3 array")
    bad = sorted({str(n) for n in names if n not in ALLOWED_CODECS})
    if bad:
        problems.append(f"codec(s) {bad} are not allowed (allowed: {', '.join(sorted(ALLOWED_CODECS))})")
    return problems



def check_layout(name: str, info: dict, *, n_clips: int, where: str) -> None:
    """An array's ``shape``, ``dtype``, ``chunks`` and ``shards`` (as the manifest holds them) before anything is
    allocated from them: ``n_clips`` rows, positive sizes, chunks that tile the shards, and a chunk or shard no
    larger decoded than :data:`MAX_BLOCK_BYTES` (a reader holds a whole one in memory)."""
    problem = _layout_problem(info, n_clips)
    if problem:
        raise MuzarrError(f"{where}: array {name!r} {problem}: {FRESH_COPY}")


def _layout_problem(info: dict, n_clips: int) -> str | None:
    shape, chunks, shards = info.get("shape"), info.get("chunks"), info.get("shards")

    def sizes(value) -> bool:
        return (
            isinstance(value, list) and len(value) == len(shape)
            and all(not isinstance(v, bool) and isinstance(v, int) and v >= 1 for v in value)
        )

    timed = "extents" in info  # a track store's time array: its last axis is every track's time, no clip axis
    if timed:
        # positive sizes, and a time length (0 when no track was stored)
        if not isinstance(shape, list) or not shape or not sizes([*shape[:-1], 1]) or not sizes([*shape[:-1], 1 + (shape[-1] if isinstance(shape[-1], int) else -1)]):
            return f"has shape {shape!r}, not positive sizes and a time length"
    elif not isinstance(shape, list) or not shape or not sizes([1, *shape[1:]]) or shape[0] != n_clips:
        return f"has shape {shape!r} for {n_clips} clips"
    try:
        dtype = np.dtype(info.get("dtype"))
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        return f"has dtype {info.get('dtype')!r}, not a numeric type"
    if not sizes(chunks) or not (shards is None or sizes(shards)):
        return f"has chunks {chunks!r} and shards {shards!r}, not {len(shape)} positive sizes each"
    if shards is not None and any(s % c for s, c in zip(shards, chunks)):
        return f"has chunks {chunks} that do not divide its shards {shards}"
    if not timed and any(c > n for c, n in zip(chunks[1:], shape[1:])):
        return f"has chunks {chunks} larger than a clip of shape {shape[1:]}"
    for kind, block in (("clip", None if timed else [1, *shape[1:]]), ("chunk", chunks), ("shard", shards)):
        if block is not None and math.prod(block) * dtype.itemsize > MAX_BLOCK_BYTES:
            gib = math.prod(block) * dtype.itemsize / 2**30
            return f"has {kind}s of shape {block} {dtype}: {gib:.1f} GiB decoded, more than the {MAX_BLOCK_BYTES >> 30} GiB a reader can hold"
    return None


# A track store (clip mode "track"): its time arrays concatenate whole tracks (pipeline/tracks.py plans them).
EXTENTS = "extents"


def is_time_feature(feature) -> bool:
    """Whether ``feature``'s output grows with its input along the last axis (waveform, log-mel)."""
    a, b = feature.output_shape(1 << 16), feature.output_shape(1 << 17)
    return len(a) == len(b) and a[:-1] == b[:-1] and a[-1] != b[-1]


def extents_name(name: str) -> str:
    return f"{EXTENTS}/{name}"


def chunk_length(feature) -> int:
    """Elements of the time axis per chunk (tracks have no fixed length: a power of two near 2 s)."""
    return time_chunk(None, rate=time_rate(feature))


def time_layout(feature, plan) -> ArrayLayout:
    """The layout of ``feature``'s array in a track store: its tracks concatenated along time, sized by
    ``plan`` (a :class:`~pipeline.tracks.TrackPlan`; its length 0 when no plan is given: a batch task
    takes its own region from the driver)."""
    prefix = tuple(feature.output_shape(1)[:-1])
    chunk = chunk_length(feature)
    total = plan.total(feature.name) if plan is not None else 0
    extents = extents_name(feature.name)
    return ArrayLayout(
        name=feature.name, shape=(*prefix, total), dtype=feature.dtype, chunks=split_chunks(feature, (*prefix, chunk)),
        # a batch task is given its regions, not the plan: its layout's shards are not used
        shards=(*prefix, plan.shard(feature) if plan is not None else chunk),
        attrs={"feature": feature.to_dict(), **feature.attrs(), "axes": list(feature.axes), "extents": extents},
        extents=extents, dimension_names=dimension_names(feature.variant, feature.axes),
        compressed=feature.kind not in UNCOMPRESSED,
    )


def extents_layout(feature, n_clips: int, batch_clips: int) -> ArrayLayout:
    units = f"samples at {feature.sample_rate} Hz" if feature.kind == "waveform" else "frames"
    return ArrayLayout(
        name=extents_name(feature.name), shape=(n_clips, 2), dtype="int64", chunks=(batch_clips, 2), shards=(batch_clips, 2),
        attrs={"feature": {"kind": EXTENTS, "of": feature.name}, "axes": ["clip", "extent"], "columns": ["start", "length"],
               "units": units},
        dimension_names=("clip", "extent"),
    )
