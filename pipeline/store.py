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
    URL/_muzarr/batches/*.json    completion marker of each finished batch (JSON, written atomically)
    URL/_muzarr/keys.json         every key of the finished store with its size (for copies over HTTP)
    URL/_muzarr/target.json       only while a build or grow is under way: what it is building

Every feature array is chunked for single-clip reads and sharded so that one build task
owns whole shards: ``batch_clips`` clips per shard.

Every file muzarr writes itself (markers, tables, the manifest's ``zarr.json``) appears whole
or not at all: written to a temporary name and renamed on a local disk, one PUT on an object
store. Nothing in a store is code: JSON, Parquet and Zarr arrays with numeric dtypes and an
allow-list of codecs only.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import uuid
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
MARKERS = "_muzarr/batches"
KEYS = "_muzarr/keys.json"
TARGET = "_muzarr/target.json"
# Codecs a store may use: decoding any of these runs no code from the store (no pickle, no object dtype).
ALLOWED_CODECS = frozenset({"bytes", "blosc", "zstd", "gzip", "crc32c", "transpose", "sharding_indexed"})
_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.partial$")


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


def is_http(url: str) -> bool:
    return str(url).split("://", 1)[0].lower() in ("http", "https") if "://" in str(url) else False


def _fs(url: str, storage_options: dict | None):
    """The fsspec filesystem and root path of ``url`` (HTTP gets a range-checking filesystem)."""
    if is_http(url):
        from pipeline.remote import http_filesystem

        return http_filesystem(storage_options), str(url).rstrip("/")
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/")


def zarr_store(url: str, storage_options: dict | None = None, *, read_only: bool = True):
    """What ``zarr.open_group(store=...)`` needs for ``url``: the URL itself, or a store object for HTTP."""
    if is_http(url):
        from zarr.storage import FsspecStore

        from pipeline.remote import http_filesystem

        return FsspecStore(http_filesystem(storage_options, asynchronous=True), path=str(url).rstrip("/"), read_only=True)
    return url


def open_group(url: str, *, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    store = zarr_store(url, storage_options, read_only=mode == "r")
    options = None if not isinstance(store, str) else (storage_options or None)
    # Zarr v3 only: a v2 group could hold arrays with a pickle filter, whose decoding runs code.
    return zarr.open_group(store=store, mode=mode, storage_options=options, zarr_format=3)


def check_key(key: Any, *, where: str) -> str:
    """A store-relative key that stays inside the store: no ``..``, no absolute path, no scheme."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise MuzarrError(f"{where}: key {key!r} is not a non-empty string")
    parts = key.split("/")
    if any(not _KEY_PART.match(part) or part in (".", "..") for part in parts):
        raise MuzarrError(
            f"{where}: key {key!r} is not a plain relative path inside the store (letters, digits, _ . - and /; "
            "no '..', no absolute path): refusing it"
        )
    return key


def is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def put_bytes(fs, path: str, data: bytes) -> None:
    """Write one file so that a reader (or a killed writer) never leaves half of it.

    Local disk: a temporary name in the same folder, then ``os.replace`` (atomic on POSIX).
    Object stores: a single PUT, which is atomic by itself.
    """
    if is_local(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temporary = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    else:
        fs.pipe_file(path, data)


def remove_temporaries(url: str, *, storage_options: dict | None = None) -> int:
    """Delete the ``*.<hex>.partial`` files a killed writer can leave on a local disk."""
    fs, root = _fs(url, storage_options)
    if not is_local(fs) or not fs.exists(root):
        return 0
    stale = [p for p in fs.find(root) if _TEMPORARY.search(p)]
    for path in stale:
        fs.rm_file(path)
    return len(stale)


def write_table(url: str, name: str, table: pd.DataFrame, *, storage_options: dict | None = None) -> None:
    """Write ``tables/<name>.parquet`` atomically: a reader sees the old or the new file, whole."""
    fs, root = _fs(url, storage_options)
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    put_bytes(fs, f"{root}/tables/{name}.parquet", buffer.getvalue())


def read_table(url: str, name: str, *, storage_options: dict | None = None) -> pd.DataFrame:
    """``tables/<name>.parquet`` as a DataFrame; FileNotFoundError if it is not there."""
    fs, root = _fs(url, storage_options)
    data = fs.cat_file(f"{root}/tables/{name}.parquet")
    return pd.read_parquet(io.BytesIO(data))


def write_json(url: str, key: str, data: dict, *, storage_options: dict | None = None) -> None:
    """Write ``key`` (store-relative) as JSON, atomically."""
    fs, root = _fs(url, storage_options)
    put_bytes(fs, f"{root}/{key}", json.dumps(data, sort_keys=True, default=_plain).encode())


def read_json(url: str, key: str, *, storage_options: dict | None = None) -> Any:
    """``key`` parsed as JSON, or None when it is missing or not valid JSON (a torn or foreign file)."""
    fs, root = _fs(url, storage_options)
    try:
        return json.loads(fs.cat_file(f"{root}/{key}"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None


def remove_key(url: str, key: str, *, storage_options: dict | None = None) -> None:
    fs, root = _fs(url, storage_options)
    try:
        fs.rm_file(f"{root}/{key}")
    except FileNotFoundError:
        pass


def read_manifest(url: str, *, storage_options: dict | None = None) -> dict | None:
    """The manifest in the group's ``zarr.json``, or None when there is no readable muzarr group."""
    meta = read_json(url, "zarr.json", storage_options=storage_options)
    if not isinstance(meta, dict) or not isinstance(meta.get("attributes"), dict):
        return None
    manifest = meta["attributes"].get("muzarr")
    return manifest if isinstance(manifest, dict) else None


def write_manifest(url: str, manifest: dict, *, storage_options: dict | None = None) -> None:
    """Replace the manifest attribute of the group in one atomic write of its ``zarr.json``.

    Written here rather than through Zarr's attribute update so that it is one atomic write
    on any fsspec filesystem (a torn ``zarr.json`` would leave a store nobody can open). The
    document is Zarr v3 group metadata, laid out as Zarr writes it.
    """
    fs, root = _fs(url, storage_options)
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
    except (FileNotFoundError, ValueError):
        meta = {"zarr_format": 3, "node_type": "group"}
    attributes = dict(meta.get("attributes") or {})
    attributes["muzarr"] = manifest
    meta = {"attributes": attributes, "zarr_format": 3, "node_type": "group",
            **{k: v for k, v in meta.items() if k not in ("attributes", "zarr_format", "node_type")}}
    put_bytes(fs, f"{root}/zarr.json", json.dumps(meta, indent=2, default=_plain).encode())


def _plain(value: Any) -> Any:
    """JSON for the numpy scalars and arrays a recipe's ``info`` may hold (as Zarr's encoder does)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "__fspath__"):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def marker_key(batch: int) -> str:
    return f"{MARKERS}/{batch:06d}.json"


def clips_digest(clip_ids: Iterable[str]) -> str:
    """Digest of a batch's clip ids, in order: a marker only counts for the clips it was written for."""
    return hashlib.blake2b("\n".join(map(str, clip_ids)).encode(), digest_size=16).hexdigest()


def read_markers(url: str, batches: Iterable[int], *, storage_options: dict | None = None) -> dict[int, Any]:
    """The raw (parsed JSON) completion markers of ``batches`` that exist; unreadable ones are left out.

    Reads each marker by name: no listing, so it works on any filesystem.
    """
    fs, root = _fs(url, storage_options)
    paths = {f"{root}/{marker_key(b)}": b for b in batches}
    if not paths:
        return {}
    found = fs.cat(list(paths), on_error="return")
    markers = {}
    for path, data in found.items():
        if isinstance(data, BaseException):
            continue
        try:
            markers[paths[path]] = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            continue  # torn or foreign: that batch is not done
    return markers


def read_batch_markers(url: str, *, storage_options: dict | None = None) -> dict[int, dict]:
    """Every parseable completion marker, keyed by batch number (kept for older callers)."""
    fs, root = _fs(url, storage_options)
    try:
        paths = fs.glob(f"{root}/{MARKERS}/*.json")
    except (FileNotFoundError, NotImplementedError):
        return {}
    numbers = []
    for path in paths:
        stem = path.rsplit("/", 1)[-1][: -len(".json")]
        if stem.isdigit():
            numbers.append(int(stem))
    return read_markers(url, numbers, storage_options=storage_options)


def check_marker(marker: Any, *, batch: int, start: int, stop: int, clips: str, names: Iterable[str]) -> dict | None:
    """The marker normalised to the arrays in ``names`` it vouches for, or None if it cannot be trusted.

    A marker counts only if it is for this batch, these rows and these clips, and every
    field has the shape a finished batch writes; anything else (a torn write, a marker of
    an older layout, a hand-edited file) means "not done".
    """
    n = stop - start
    if not isinstance(marker, dict):
        return None
    # Markers written before the clip-id digest existed have no "clips": their rows must do.
    if (marker.get("batch"), marker.get("start"), marker.get("stop"), marker.get("clips", clips)) != (batch, start, stop, clips):
        return None
    status, failures, digests = marker.get("status"), marker.get("failures"), marker.get("digests")
    if not (isinstance(status, list) and len(status) == n and all(s in (STATUS_OK, STATUS_FAILED) for s in status)):
        return None
    if not (isinstance(failures, list) and isinstance(digests, dict)):
        return None
    keys = ("clip_id", "path", "stage", "message")
    if len(failures) != status.count(STATUS_FAILED) or not all(
        isinstance(f, dict) and all(isinstance(f.get(k), str) for k in keys) for f in failures
    ):
        return None
    kept = {}
    for name in names:
        values = digests.get(name)
        if isinstance(values, list) and len(values) == n and all(_is_digest(v) for v in values):
            kept[name] = values
    return {**marker, "digests": kept}


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def list_keys(url: str, *, storage_options: dict | None = None) -> dict[str, int]:
    """Every key under ``url`` with its size (needs a filesystem that can list)."""
    fs, root = _fs(url, storage_options)
    fs.invalidate_cache(root)  # object stores cache listings: this one must see every key written
    found = fs.find(root, detail=True)
    keys = {}
    for path, info in found.items():
        key = path[len(root) + 1 :] if path.startswith(root + "/") else path
        if not _TEMPORARY.search(key):
            keys[key] = int(info.get("size") or 0)
    return keys


def store_keys(url: str, *, storage_options: dict | None = None) -> dict[str, int | None]:
    """The keys of a finished store: ``_muzarr/keys.json`` where it exists, else a listing.

    Every key is checked to stay inside the store (a store from elsewhere is untrusted).
    """
    recorded = read_json(url, KEYS, storage_options=storage_options)
    if recorded is not None:
        keys = recorded.get("keys") if isinstance(recorded, dict) else None
        if not isinstance(keys, dict):
            raise MuzarrError(f"{url}/{KEYS} is malformed: expected {{'keys': {{key: size}}}}")
    elif is_http(url):
        raise MuzarrError(
            f"{url} has no {KEYS} and HTTP cannot list files: finish the store with `pipe build` at its origin"
        )
    else:
        keys = list_keys(url, storage_options=storage_options)
    checked = {}
    for key, size in keys.items():
        check_key(key, where=f"{url} key list")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise MuzarrError(f"{url} key list: size {size!r} of {key!r} is not a byte count")
        checked[key] = size
    return checked


@dataclass(frozen=True)
class ArrayLayout:
    """Shape, dtype, chunking and attributes of one feature array in a store."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
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


def _status_layout(n_clips: int, batch_clips: int) -> ArrayLayout:
    return ArrayLayout(
        name="status", shape=(n_clips,), dtype="int8", chunks=(batch_clips,), shards=None,
        attrs={"values": STATUS_NAMES},
    )


def _create_array(group: zarr.Group, layout: ArrayLayout) -> zarr.Array:
    return group.create_array(
        layout.name, shape=layout.shape, chunks=layout.chunks, shards=layout.shards, dtype=layout.dtype,
        fill_value=STATUS_PENDING if layout.name == "status" else 0, compressors=compressor(), overwrite=True,
        config={"write_empty_chunks": True}, attributes=layout.attrs,
    )


def create_arrays(url: str, layouts: list[ArrayLayout], n_clips: int, batch_clips: int, *, storage_options=None):
    """Create the group, the status array and every feature array (empty)."""
    group = open_group(url, mode="a", storage_options=storage_options)
    for layout in [_status_layout(n_clips, batch_clips), *layouts]:
        _create_array(group, layout)
    return group


def ensure_arrays(
    url: str, layouts: list[ArrayLayout], n_clips: int, batch_clips: int, *, storage_options=None
) -> set[str]:
    """Bring the group to ``layouts`` for ``n_clips`` clips, keeping every array that already fits.

    An array with the right dtype, chunks, shards and clip shape is kept (resized along the
    clip axis if the clip count changed; its files are not touched otherwise); a missing or
    different one is created empty. Returns the names created, whose old completion claims
    no longer hold. Idempotent: a build killed here does the same again.
    """
    group = open_group(url, mode="a", storage_options=storage_options)
    created = set()
    for layout in [_status_layout(n_clips, batch_clips), *layouts]:
        try:
            array = group[layout.name]
        except (KeyError, ValueError, TypeError, zarr.errors.BaseZarrError):
            array = None  # missing, or metadata a killed writer left unreadable
        fits = (
            isinstance(array, zarr.Array)
            and array.dtype == np.dtype(layout.dtype)
            and tuple(array.shape[1:]) == tuple(layout.shape[1:])
            and tuple(array.chunks) == tuple(layout.chunks)
            and (tuple(array.shards) if array.shards else None) == (tuple(layout.shards) if layout.shards else None)
        )
        if not fits:
            _create_array(group, layout)
            created.add(layout.name)
        elif array.shape[0] != n_clips:
            array.resize((n_clips, *layout.shape[1:]))
    return created


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

    def __init__(self, url: str, *, storage_options: dict | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        try:
            self.group = open_group(url, mode="r", storage_options=self.storage_options)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError, NotADirectoryError) as err:
            raise MuzarrError(f"no muzarr store at {url} ({type(err).__name__}): build one with `pipe build`") from None
        except OSError as err:
            raise MuzarrError(f"cannot read {url}: {type(err).__name__}: {err}") from None
        manifest = self.group.attrs.get("muzarr")
        if not isinstance(manifest, dict):
            raise MuzarrError(f"{url} is a Zarr group but not a muzarr store (no 'muzarr' manifest attribute)")
        version = manifest.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version > SCHEMA_VERSION:
            raise MuzarrError(
                f"{url} was written with store schema version {version!r}; this muzarr reads up to "
                f"{SCHEMA_VERSION}: upgrade muzarr"
            )
        _check_manifest(manifest, url)
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
        """The raw Zarr array (for chunk-aware readers); prefer :meth:`read` elsewhere.

        Only its first :attr:`n_clips` rows belong to the store: while a build grows the
        store, the array can already be longer.
        """
        self._array_info(name)
        return self._open_array(name)

    def _open_array(self, name: str) -> zarr.Array:
        try:
            array = self.group[name]
        except (KeyError, ValueError, zarr.errors.BaseZarrError) as err:
            raise MuzarrError(f"store {self.url}: array {name!r} cannot be opened ({type(err).__name__}): run `pipe verify`") from None
        if not isinstance(array, zarr.Array):
            raise MuzarrError(f"store {self.url}: {name!r} is a group, not an array")
        problems = array_problems(array)
        if problems:
            raise MuzarrError(f"store {self.url}: refusing to read array {name!r}: {'; '.join(problems)}")
        return array

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise MuzarrError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        try:
            return read_table(self.url, name, storage_options=self.storage_options)
        except FileNotFoundError:
            raise MuzarrError(f"store {self.url} is missing tables/{name}.parquet: run `pipe verify`") from None
        except (OSError, ValueError) as err:
            raise MuzarrError(f"store {self.url}: tables/{name}.parquet cannot be read ({type(err).__name__}): run `pipe verify`") from None

    @cached_property
    def status(self) -> np.ndarray:
        """int8 status per clip (0 pending, 1 ok, 2 failed)."""
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
    for name, info in manifest["arrays"].items():
        check_key(name, where=f"{where}: array name")
        if name == "status" or name.startswith(("tables/", "_muzarr/")) or not isinstance(info, dict):
            raise MuzarrError(f"{where}: array entry {name!r} is not a feature array description")
    if not all(isinstance(c, str) for c in manifest["classes"]):
        raise MuzarrError(f"{where}: 'classes' must be a list of strings")


def open_store(url: str, *, storage_options: dict | None = None) -> Store:
    """Open a muzarr store for reading (local path or any fsspec URL: ``s3://``, ``https://``...)."""
    return Store(str(url), storage_options=storage_options)
