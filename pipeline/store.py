"""The Zarr v3 store: layout, manifest, checksums, and the one public reader.

Layout of a store at ``URL`` (any fsspec URL; a local directory by default)::

    URL/zarr.json                 group; attributes["muzarr"] is the manifest
    URL/status                    int8 [clip]: 0 pending, 1 ok, 2 failed (authoritative)
    URL/waveform                  [clip, (subclip,) time]
    URL/logmel/<variant>          [clip, (subclip,) mel, frame]
    URL/tabular/<set>             [clip, (subclip,) column]
    URL/tables/clips.parquet      clip_id, path, status, stage, error, metadata
    URL/tables/labels.parquet     clip_id + one column per tag, or label / label_index
    URL/tables/splits.parquet     clip_id + one column per split scheme
    URL/tables/checksums.parquet  per array and clip: content digest
    URL/_muzarr/batches/*.json    completion marker of each finished batch

Every feature array is chunked for single-clip reads and sharded so that one build task
owns whole shards: ``batch_clips`` clips per shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import fsspec
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from pipeline.errors import MuzarrError

SCHEMA_VERSION = 1
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_OK: "ok", STATUS_FAILED: "failed"}
TABLES = ("clips", "labels", "splits", "checksums")
CHUNK_TARGET_BYTES = 1 << 20


def compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


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


def clip_digests(data: np.ndarray) -> list[str]:
    """One content digest per clip (first axis): blake2b-128 of the little-endian bytes."""
    little = data.astype(data.dtype.newbyteorder("<"), copy=False)
    return [hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).hexdigest() for row in little]


def combine_digests(digests: Iterable[str]) -> str:
    """An array's checksum: blake2b-256 over its clip digests in clip order."""
    h = hashlib.blake2b(digest_size=32)
    for digest in digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def storage_options_for(url: str, storage_options: dict | None) -> dict:
    return dict(storage_options or {})


def _fs(url: str, storage_options: dict | None):
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/")


def write_table(url: str, name: str, table: pd.DataFrame, *, storage_options: dict | None = None) -> None:
    """Write ``tables/<name>.parquet`` atomically enough: a reader sees the old or the new file."""
    fs, root = _fs(url, storage_options)
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    fs.makedirs(f"{root}/tables", exist_ok=True)
    with fs.open(f"{root}/tables/{name}.parquet", "wb") as handle:
        handle.write(buffer.getvalue())


def write_json(url: str, key: str, data: dict, *, storage_options: dict | None = None) -> None:
    fs, root = _fs(url, storage_options)
    fs.makedirs(f"{root}/{key.rpartition('/')[0]}", exist_ok=True)
    with fs.open(f"{root}/{key}", "w") as handle:
        handle.write(json.dumps(data, sort_keys=True))


def read_batch_markers(url: str, *, storage_options: dict | None = None) -> dict[int, dict]:
    """The completion markers of finished batches, keyed by batch number."""
    fs, root = _fs(url, storage_options)
    try:
        paths = fs.glob(f"{root}/_muzarr/batches/*.json")
    except FileNotFoundError:
        return {}
    markers = {}
    for path in paths:
        with fs.open(path, "r") as handle:
            marker = json.load(handle)
        markers[int(marker["batch"])] = marker
    return markers


@dataclass(frozen=True)
class ArrayLayout:
    """Shape, dtype, chunking and attributes of one feature array in a store."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...]
    attrs: dict

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks),
            "shards": list(self.shards),
        }


def plan_layout(config, n_clips: int) -> list[ArrayLayout]:
    """The arrays a build with ``config`` writes for ``n_clips`` clips."""
    sub = (config.clip.n_subclips,) if config.clip.n_subclips else ()
    layouts = []
    for feature in config.features:
        per_item = feature.output_shape(config.clip.n_samples(feature.sample_rate))
        clip_shape = (*sub, *per_item)
        clip_bytes = math.prod(clip_shape) * np.dtype(feature.dtype).itemsize
        per_chunk = chunk_clips(clip_bytes, batch_clips=config.batch_clips)
        layouts.append(
            ArrayLayout(
                name=feature.name,
                shape=(n_clips, *clip_shape),
                dtype=feature.dtype,
                chunks=(per_chunk, *clip_shape),
                shards=(config.batch_clips, *clip_shape),
                attrs={"feature": feature.to_dict(), **feature.attrs()},
            )
        )
    return layouts


def create_arrays(url: str, layouts: list[ArrayLayout], n_clips: int, batch_clips: int, *, storage_options=None):
    """Create the group, the status array and every feature array (empty)."""
    group = zarr.open_group(store=url, mode="a", storage_options=storage_options or None)
    group.create_array(
        "status", shape=(n_clips,), chunks=(batch_clips,), dtype="int8", fill_value=STATUS_PENDING,
        compressors=compressor(), overwrite=True, config={"write_empty_chunks": True},
        attributes={"values": STATUS_NAMES},
    )
    for layout in layouts:
        group.create_array(
            layout.name, shape=layout.shape, chunks=layout.chunks, shards=layout.shards,
            dtype=layout.dtype, fill_value=0, compressors=compressor(), overwrite=True,
            config={"write_empty_chunks": True}, attributes=layout.attrs,
        )
    return group


class Store:
    """A muzarr store opened for reading: the only way other code reads one.

    A clip whose status is not ``ok`` is never returned as data: :meth:`read` raises for
    it, and :meth:`split` lists only ``ok`` clips.
    """

    def __init__(self, url: str, *, storage_options: dict | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        try:
            self.group = zarr.open_group(store=url, mode="r", storage_options=self.storage_options or None)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError) as err:
            raise MuzarrError(f"no muzarr store at {url} ({type(err).__name__}): build one with `pipe build`") from None
        manifest = self.group.attrs.get("muzarr")
        if not isinstance(manifest, dict):
            raise MuzarrError(f"{url} is a Zarr group but not a muzarr store (no 'muzarr' manifest attribute)")
        version = manifest.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise MuzarrError(
                f"{url} was written with store schema version {version!r}; this muzarr reads up to "
                f"{SCHEMA_VERSION}: upgrade muzarr"
            )
        self.manifest: dict[str, Any] = manifest

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
        """The raw Zarr array (for chunk-aware readers); prefer :meth:`read` elsewhere."""
        self._array_info(name)
        return self.group[name]

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise MuzarrError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        fs, root = _fs(self.url, self.storage_options)
        try:
            with fs.open(f"{root}/tables/{name}.parquet", "rb") as handle:
                return pd.read_parquet(io.BytesIO(handle.read()))
        except FileNotFoundError:
            raise MuzarrError(f"store {self.url} is missing tables/{name}.parquet: run `pipe verify`") from None

    @cached_property
    def status(self) -> np.ndarray:
        """int8 status per clip (0 pending, 1 ok, 2 failed)."""
        return self.group["status"][:]

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

    def read(self, name: str, clips: int | slice | Iterable[int]) -> np.ndarray:
        """Data of array ``name`` for the given clip rows; a failed or pending clip is an error."""
        array = self.array(name)
        rows = np.arange(self.n_clips)[clips] if isinstance(clips, slice) else np.atleast_1d(np.asarray(clips))
        status = self.status[rows]
        if (status != STATUS_OK).any():
            bad = rows[status != STATUS_OK][0]
            raise MuzarrError(
                f"clip {self.clips['clip_id'].iloc[bad]!r} (row {bad}) of {self.url} is "
                f"{STATUS_NAMES[int(self.status[bad])]}: it has no data to read"
            )
        if isinstance(clips, (int, np.integer)):
            return array[int(clips)]
        return array.get_orthogonal_selection((rows,)) if len(rows) else np.empty((0, *array.shape[1:]), array.dtype)


def open_store(url: str, *, storage_options: dict | None = None) -> Store:
    """Open a muzarr store for reading (local path or any fsspec URL: ``s3://``, ``https://``...)."""
    return Store(str(url), storage_options=storage_options)
