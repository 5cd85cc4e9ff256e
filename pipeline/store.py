"""The Zarr v3 store: layout, manifest, checksums, and the one public reader.

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

Every file muzarr writes itself (markers, tables, the manifest's ``zarr.json``) appears whole
or not at all: written to a temporary name and renamed on a local disk, one PUT on an object
store. Nothing in a store is code: JSON, Parquet and Zarr arrays with numeric dtypes and an
allow-list of codecs only.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import xxhash
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.errors import MuzarrError
from pipeline.storage import (
    FRESH_COPY,
    LOCK,
    MAX_BLOCK_BYTES,
    MAX_JSON_BYTES,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_PENDING,
    TARGET,
    Location,
    check_contained,
    check_key,
    check_metadata_size,
    check_table_size,
    location,
    read_json,
    read_table,
)

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
    if feature.kind == "waveform":
        return float(feature.sample_rate)
    if feature.kind == "logmel":
        return feature.sample_rate / feature.hop_length
    return None


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks),
            "shards": list(self.shards),
            **({"extents": self.extents} if self.extents else {}),
        }

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
    from pipeline import tracks as _tracks

    sub = (config.clip.n_subclips,) if config.clip.n_subclips else ()
    layouts = []
    timed = [f for f in config.features if config.clip.mode == "track" and _tracks.is_time_feature(f)]
    for feature in config.features:
        if feature in timed:
            layouts.append(_tracks.time_layout(feature, tracks))
            continue
        per_item = feature.output_shape(config.clip.n_samples(feature.sample_rate))
        clip_shape = (*sub, *per_item)
        rate = time_rate(feature)
        if rate is None:
            clip_bytes = math.prod(clip_shape) * np.dtype(feature.dtype).itemsize
            per_chunk = chunk_clips(clip_bytes, batch_clips=config.batch_clips)
            chunks, shards = (per_chunk, *clip_shape), (config.batch_clips, *clip_shape)
        else:
            step = time_chunk(clip_shape[-1], rate=rate)
            chunks = (1, *clip_shape[:-1], step)
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
    return layouts + [_tracks.extents_layout(f, n_clips, config.batch_clips) for f in timed]


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


class Store:
    """A muzarr store opened for reading: the only way other code reads one.

    A clip whose status is not ``ok`` is never returned as data: :meth:`read` raises for
    it, and :meth:`split` lists only ``ok`` clips.
    """

    def __init__(self, url: str | Location, *, storage_options: dict | None = None) -> None:
        self.location = loc = location(url, storage_options)
        self.url = url = loc.url
        check_contained(loc)
        check_metadata_size(loc, "zarr.json")
        try:
            self.group = loc.open_group(mode="r")
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError, NotADirectoryError) as err:
            self._refuse_damaged()
            raise MuzarrError(f"no muzarr store at {url} ({type(err).__name__}): build one with `pipe build`") from None
        except OSError as err:
            raise MuzarrError(f"cannot read {url}: {type(err).__name__}: {err}") from None
        manifest = self.group.attrs.get("muzarr")
        if not isinstance(manifest, dict):
            self._refuse_damaged()
            raise MuzarrError(f"{url} is a Zarr group but not a muzarr store (no 'muzarr' manifest attribute)")
        version = manifest.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version > SCHEMA_VERSION:
            raise MuzarrError(
                f"{url} was written with store schema version {version!r}; this muzarr reads up to "
                f"{SCHEMA_VERSION}: upgrade muzarr"
            )
        if version < SCHEMA_VERSION:
            raise old_layout(url, manifest)
        _check_manifest(manifest, url)
        self.manifest: dict[str, Any] = manifest
        status = read_json(loc, "status/zarr.json")
        shape = status.get("shape") if isinstance(status, dict) else None
        # Unreadable status metadata is damage for `pipe verify` to report; a readable one must hold every clip
        # (a grow makes it longer than n_clips until the manifest follows, never shorter).
        if isinstance(shape, list) and not (len(shape) == 1 and isinstance(shape[0], int) and shape[0] >= self.n_clips):
            raise MuzarrError(
                f"{url}: malformed store: the manifest says {self.n_clips} clips but status/zarr.json has shape "
                f"{shape}: {FRESH_COPY}"
            )

    def _refuse_damaged(self) -> None:
        """A muzarr folder whose ``zarr.json`` is not a manifest is a damaged store, not "no store"."""
        reason = manifest_damage(self.location)
        if reason is None:
            return
        from pipeline.config import BuildConfig, build_command

        rebuild = f"pipe build <dataset> --out {shlex.quote(self.url)} --overwrite"
        building = read_json(self.location, TARGET)  # the config of a build under way
        if isinstance(building, dict) and isinstance(building.get("config"), dict):
            try:
                config = BuildConfig.from_dict(building["config"], where=f"{self.url}/{TARGET}")
                rebuild = build_command(config, out=self.url, extra=("--overwrite",))
            except MuzarrError:
                pass
        raise damaged_manifest(self.url, reason, rebuild=rebuild)

    def __repr__(self) -> str:
        return f"Store({self.url!r}, dataset={self.dataset!r}, clips={self.n_clips}, arrays={list(self.arrays)})"

    @property
    def dataset(self) -> str:
        return self.manifest["config"]["dataset"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def complete(self) -> bool:
        return self.manifest.get("state") == "complete"

    @property
    def n_clips(self) -> int:
        return int(self.manifest["n_clips"])

    @property
    def n_subclips(self) -> int | None:
        return self.manifest.get("n_subclips")

    @property
    def arrays(self) -> dict[str, dict[str, Any]]:
        """Feature arrays: name → shape, dtype, chunks, shards, checksum, feature parameters."""
        return dict(self.manifest["arrays"])

    def config(self):
        from pipeline.config import BuildConfig

        return BuildConfig.from_dict(self.manifest["config"], where=f"{self.url} manifest")

    def feature(self, name: str):
        """The :class:`~pipeline.features.base.Feature` that wrote array ``name``."""
        from pipeline.features import feature_from_dict, load_all

        load_all()
        return feature_from_dict(self._array_info(name)["feature"], where=f"{self.url} manifest")

    def _array_info(self, name: str) -> dict[str, Any]:
        if name not in self.manifest["arrays"]:
            raise MuzarrError(f"store {self.url} has no array {name!r}; arrays: {', '.join(self.manifest['arrays'])}")
        return self.manifest["arrays"][name]

    def array(self, name: str) -> zarr.Array:
        """The raw Zarr array (for chunk-aware readers); prefer :meth:`read` elsewhere.

        Only its first :attr:`n_clips` rows belong to the store: while a build grows the
        store, the array can already be longer.
        """
        self._array_info(name)
        return self._open_array(name)

    def node(self, name: str):
        """``self.group[name]``, its ``zarr.json`` first checked to be of a size muzarr writes."""
        check_metadata_size(self.location, f"{name}/zarr.json")
        return self.group[name]

    def _open_array(self, name: str) -> zarr.Array:
        try:
            array = self.node(name)
        except (KeyError, ValueError, zarr.errors.BaseZarrError) as err:
            raise MuzarrError(f"store {self.url}: array {name!r} cannot be opened ({type(err).__name__}): run `pipe verify`") from None
        if not isinstance(array, zarr.Array):
            raise MuzarrError(f"store {self.url}: {name!r} is a group, not an array")
        problems = array_problems(array)
        if problems:
            raise MuzarrError(f"store {self.url}: refusing to read array {name!r}: {'; '.join(problems)}")
        opened = {
            "shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks),
            "shards": list(array.shards) if array.shards else None,
        }
        where = f"{self.url}: malformed store: {name}/zarr.json"
        # During a grow an array is longer than n_clips until the manifest follows: never shorter.
        wanted = {"shape": [self.n_clips], "dtype": "int8"} if name == "status" else self.manifest["arrays"][name]
        if "extents" in wanted:
            opened["extents"] = wanted["extents"]
        check_layout(name, opened, n_clips=array.shape[0], where=where)
        grows, fixed = (-1, slice(0, -1)) if "extents" in wanted else (0, slice(1, None))
        fits = (
            len(opened["shape"]) == len(wanted["shape"]) and opened["shape"][grows] >= wanted["shape"][grows]
            and opened["shape"][fixed] == list(wanted["shape"][fixed]) and opened["dtype"] == wanted["dtype"]
            and (name == "status" or (opened["chunks"], opened["shards"]) == (wanted["chunks"], wanted["shards"]))
        )
        if not fits:
            described = ", ".join(f"{key} {wanted.get(key)}" for key in opened if key in wanted)
            raise MuzarrError(
                f"{where} has shape {opened['shape']}, dtype {opened['dtype']}, chunks {opened['chunks']}, "
                f"shards {opened['shards']}; the manifest has {described}: {FRESH_COPY}"
            )
        return array

    def _table_rows(self, name: str) -> int:
        return self.n_clips * len(self.arrays) if name == "checksums" else self.n_clips

    def check_tables(self) -> None:
        """Every table there is holds the rows the manifest implies (footers only: no data read)."""
        fs, root = self.location.fs, self.location.root
        for name in TABLES:
            try:
                check_table_size(fs, f"{root}/tables/{name}.parquet", self._table_rows(name),
                                 where=f"{self.url}: malformed store: tables/{name}.parquet")  # fmt: skip
            except FileNotFoundError:
                continue  # a missing table is shown (and verified) in its place
            except (OSError, ValueError) as err:
                raise MuzarrError(
                    f"store {self.url}: tables/{name}.parquet cannot be read ({type(err).__name__}): run `pipe verify`"
                ) from None

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise MuzarrError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        rows = self._table_rows(name)
        try:
            return read_table(self.location, name, rows=rows)
        except FileNotFoundError:
            raise MuzarrError(f"store {self.url} is missing tables/{name}.parquet: run `pipe verify`") from None
        except (OSError, ValueError) as err:
            raise MuzarrError(f"store {self.url}: tables/{name}.parquet cannot be read ({type(err).__name__}): run `pipe verify`") from None

    @cached_property
    def status(self) -> np.ndarray:
        """int8 status per clip (0 pending, 1 ok, 2 failed)."""
        # n_clips is the manifest's word: the clips table (a byte or more per row) confirms it before it is allocated.
        self.clips  # noqa: B018
        return self._open_array("status")[: self.n_clips]

    @property
    def ok(self) -> np.ndarray:
        return self.status == STATUS_OK

    @cached_property
    def clips(self) -> pd.DataFrame:
        return self.table("clips")

    def labels(self) -> pd.DataFrame:
        return self.table("labels")

    def splits(self) -> pd.DataFrame:
        return self.table("splits")

    @cached_property
    def label_matrix(self) -> np.ndarray:
        """multilabel: float32 ``(n_clips, n_classes)``; multiclass: int64 ``(n_clips,)`` (-1 unlabelled)."""
        labels = self.labels()
        if self.task == "multilabel":
            return labels[self.classes].to_numpy(dtype=np.float32)
        return labels["label_index"].to_numpy(dtype=np.int64)

    def split(self, scheme: str, part: str) -> np.ndarray:
        """Row numbers of the ``ok`` clips in ``part`` (train/valid/test/all) of split ``scheme``."""
        splits = self.splits()
        if scheme not in splits.columns or scheme == "clip_id":
            known = [c for c in splits.columns if c != "clip_id"]
            raise MuzarrError(f"store {self.url} has no split scheme {scheme!r}; schemes: {', '.join(known)}")
        column = splits[scheme].to_numpy(dtype=object)
        chosen = np.ones(len(column), bool) if part == "all" else column == part
        if part not in ("train", "valid", "test", "all"):
            raise MuzarrError(f"split part {part!r} must be train, valid, test or all")
        return np.flatnonzero(chosen & self.ok)

    def stored_digests(self, name: str) -> np.ndarray:
        """The content digest of every clip of array ``name`` (``tables/checksums.parquet``), by row.

        The digests must combine to the manifest's checksum of the array; a table that does
        not hold one digest per clip, or whose digests disagree with the manifest, is damage.
        Digests use the manifest's ``digest`` algorithm (see :func:`clip_digests`).
        """
        info = self._array_info(name)
        table = self.table("checksums")
        where = f"store {self.url}: tables/checksums.parquet"
        if not {"array", "row", "digest"} <= set(table.columns):
            raise MuzarrError(f"{where} lacks the array, row and digest columns: run `pipe verify {self.url}`")
        rows = table[table["array"] == name].sort_values("row")
        digests = rows["digest"].astype(str).to_numpy(dtype=object)
        if rows["row"].tolist() != list(range(self.n_clips)) or combine_digests(digests) != info.get("checksum"):
            raise MuzarrError(
                f"{where}: the digests of {name} do not match the manifest's checksum: run `pipe verify {self.url}`"
            )
        return digests

    @property
    def max_keys(self) -> int:
        """The most keys this store can have: per batch (at most one per clip) a shard per array, a status
        chunk and a marker; plus metadata and tables. A longer key list was not written by muzarr."""
        shards = sum(info["shape"][-1] // info["shards"][-1] for info in self.arrays.values() if "extents" in info)
        return (self.n_clips + 2) * (len(self.arrays) + 2) + shards + 16

    @property
    def is_tracks(self) -> bool:
        """A store of whole tracks (clip mode ``track``): its time arrays concatenate them."""
        return any("extents" in info for info in self.arrays.values())

    def extents(self, name: str) -> np.ndarray:
        """int64 ``(n_clips, 2)``: every clip's ``[start, length]`` along the last axis of time array ``name``."""
        info = self._array_info(name)
        if "extents" not in info:
            raise MuzarrError(f"store {self.url}: array {name!r} has one row per clip, not extents")
        extents = self._open_array(info["extents"])[: self.n_clips]
        total = self._open_array(name).shape[-1]
        bad = np.flatnonzero((extents[:, 0] < 0) | (extents[:, 1] < 0) | (extents.sum(axis=1) > total))
        if len(bad):
            raise MuzarrError(f"store {self.url}: {info['extents']} row {bad[0]} {extents[bad[0]].tolist()} lies outside {name}: run `pipe verify`")
        return extents

    def track(self, name: str, row: int) -> np.ndarray:
        """The whole track of clip ``row`` in time array ``name`` (``[..., length]``); failed or pending is an error."""
        self._check_ok(np.atleast_1d(row))
        start, length = (int(v) for v in self.extents(name)[row])
        return self._open_array(name)[..., start : start + length]

    @property
    def digest_algorithm(self) -> str:
        """The per-clip digest of this store (stores from before the manifest named it used blake2b-128)."""
        return self.manifest.get("digest", "blake2b_128")

    def read(self, name: str, clips: int | slice | Iterable[int]) -> np.ndarray:
        """Data of array ``name`` for the given clip rows; a failed or pending clip is an error."""
        array = self.array(name)
        if "extents" in self._array_info(name):
            raise MuzarrError(
                f"array {name!r} of {self.url} holds whole tracks of different lengths: read one with Store.track(name, row)"
            )
        rows = np.arange(self.n_clips)[clips] if isinstance(clips, slice) else np.atleast_1d(np.asarray(clips))
        self._check_ok(rows)
        if isinstance(clips, (int, np.integer)):
            return array[int(clips)]
        return array.get_orthogonal_selection((rows,)) if len(rows) else np.empty((0, *array.shape[1:]), array.dtype)


    def _check_ok(self, rows: np.ndarray) -> None:
        status = self.status[rows]
        if (status != STATUS_OK).any():
            bad = rows[status != STATUS_OK][0]
            raise MuzarrError(
                f"clip {self.clips['clip_id'].iloc[bad]!r} (row {bad}) of {self.url} is "
                f"{STATUS_NAMES[int(self.status[bad])]}: it has no data to read"
            )


def _check_manifest(manifest: dict, url: str) -> None:
    """The fields every reader relies on, with the types it relies on (a store is untrusted input)."""
    where = f"{url}: malformed manifest"
    checks = {
        "config": dict, "task": str, "classes": list, "n_clips": int, "arrays": dict,
    }
    for key, kind in checks.items():
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise MuzarrError(f"{where}: {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    if manifest["n_clips"] < 0:
        raise MuzarrError(f"{where}: n_clips={manifest['n_clips']} is negative")
    sub = manifest.get("n_subclips")
    if sub is not None and (isinstance(sub, bool) or not isinstance(sub, int) or sub < 1):
        raise MuzarrError(f"{where}: n_subclips={sub!r} must be null or a positive integer")
    for name, info in manifest["arrays"].items():
        check_key(name, where=f"{where}: array name")
        if name == "status" or name.startswith(("tables/", "_muzarr/")) or not isinstance(info, dict):
            raise MuzarrError(f"{where}: array entry {name!r} is not a feature array description")
        if "extents" in info:
            extents = check_key(info["extents"], where=f"{where}: array {name!r} extents")
            if not isinstance(manifest["arrays"].get(extents), dict):
                raise MuzarrError(f"{where}: array {name!r} names extents {extents!r}, which the manifest does not hold")
        check_layout(name, info, n_clips=manifest["n_clips"], where=f"{url}: malformed store: the manifest")
        if sub is not None and (len(info["shape"]) < 3 or info["shape"][1] != sub):
            raise MuzarrError(
                f"{url}: malformed store: the manifest's array {name!r} has shape {info['shape']}, not {sub} "
                f"sub-clips per clip as its n_subclips says: {FRESH_COPY}"
            )
    if not all(isinstance(c, str) for c in manifest["classes"]):
        raise MuzarrError(f"{where}: 'classes' must be a list of strings")


# Top-level entries that only muzarr writes next to a store's zarr.json.
OWN_ENTRIES = ("_muzarr", "tables", "status")


def manifest_damage(loc: Location) -> str | None:
    """Why the ``zarr.json`` of a folder holding muzarr's own entries is not a store's manifest.

    None when it is one, when there is no ``zarr.json``, or when nothing says the folder is muzarr's.
    """
    fs, root = loc.fs, loc.root
    try:
        if (fs.size(f"{root}/zarr.json") or 0) > MAX_JSON_BYTES:
            return f"larger than the {MAX_JSON_BYTES >> 20} MiB of any manifest muzarr writes"
        raw = fs.cat_file(f"{root}/zarr.json")
        # the writer's lock alone says nothing: a build takes it before it looks at the folder
        if not any(fs.exists(f"{root}/{entry}") for entry in OWN_ENTRIES if entry != "_muzarr") and not (
            fs.exists(f"{root}/_muzarr") and any(p != f"{root}/{LOCK}" for p in fs.find(f"{root}/_muzarr"))
        ):
            return None
    except (OSError, ValueError):  # missing, or unreachable: nothing says it is damaged
        return None
    if not raw.strip():
        return "the file is empty"
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return f"not UTF-8 text: bad byte at offset {err.start}"
    except ValueError as err:
        return f"not JSON: {getattr(err, 'msg', err)} at byte {getattr(err, 'pos', '?')}"
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        return "not Zarr v3 group metadata"
    attributes = meta.get("attributes")
    if not isinstance(attributes, dict) or not isinstance(attributes.get("muzarr"), dict):
        return "it holds no muzarr manifest"
    return None


#: what each older store layout was, for the line that refuses it
OLD_LAYOUTS = {1: "whole-clip chunks"}


def old_layout(url: str, manifest: dict) -> MuzarrError:
    """The one error for a store of an older layout: what it is and the ``pipe build`` that rebuilds it."""
    from pipeline.config import BuildConfig, build_command

    version = manifest.get("schema_version")
    rebuild = f"pipe build <dataset> --out {shlex.quote(url)} --overwrite"
    if isinstance(manifest.get("config"), dict):
        try:
            config = BuildConfig.from_dict(manifest["config"], where=f"{url} manifest")
            rebuild = build_command(config, out=url, extra=("--overwrite",))
        except MuzarrError:
            pass
    what = f" ({OLD_LAYOUTS[version]})" if version in OLD_LAYOUTS else ""
    return MuzarrError(
        f"{url} was written by muzarr's store layout {version}{what}; this muzarr reads layout {SCHEMA_VERSION}: "
        f"rebuild it with: {rebuild}"
    )


def damaged_manifest(url: str, reason: str, *, rebuild: str) -> MuzarrError:
    """The one error for a store whose manifest is damaged; ``rebuild`` is the command that rebuilds it."""
    return MuzarrError(
        f"{url.rstrip('/')}/zarr.json, the store's manifest, is damaged ({reason}): the store cannot be read; "
        f"restore zarr.json from a copy of the store, or rebuild it: {rebuild}"
    )


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


def open_store(url: str | Location, *, storage_options: dict | None = None) -> Store:
    """Open a muzarr store for reading (local path or any fsspec URL: ``s3://``, ``https://``...)."""
    return Store(url, storage_options=storage_options)
