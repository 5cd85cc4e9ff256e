"""Low-level I/O of a store at a :class:`~pipeline.store.location.Location`: tables, JSON, markers and key lists.

Every file muzarr writes itself appears whole or not at all: a temporary name renamed on a
local disk, one PUT on an object store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import MuzarrError
from pipeline.store.consolidated import consolidated_metadata
from pipeline.store.location import Location, is_local, put_bytes

#: per-clip status values of the ``status`` array
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_OK: "ok", STATUS_FAILED: "failed"}
MARKERS = "_muzarr/batches"
KEYS = "_muzarr/keys.json"
TARGET = "_muzarr/target.json"
LOCK = "_muzarr/lock.json"  # only while a build writes the store (pipeline/lock.py)
COPYING = "_muzarr/copy.json"  # only while a copy writes the store (pipeline/store/copy.py)
#: the "array" of a note on how a clip's file decoded (not on one array: every array holds what was decoded)
DECODE_NOTE = "decode"
_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.partial$")
#: the most a chunk or a shard may take decoded: a reader holds a whole one in memory
MAX_BLOCK_BYTES = 4 << 30
#: no file muzarr writes comes near this (an encoded shard is about its decoded size at worst)
MAX_FILE_BYTES = 2 * MAX_BLOCK_BYTES
# A table row (a clip's path, error, notes, metadata) takes far less: anything bigger was not written by muzarr.
TABLE_ROW_BYTES = 64 << 10
TABLE_BASE_BYTES = 1 << 20
# Each batch writes a shard per array, a status chunk and a marker; a key is at most 1024 characters.
KEY_LIST_ENTRY_BYTES = 1100
#: the largest JSON document muzarr reads from a store (a manifest listing every failed clip of a large
#: dataset stays far below it); a bigger one is refused before it is read
MAX_JSON_BYTES = 64 << 20
#: what to do about a store whose sizes disagree (the end of every "malformed store" message)
FRESH_COPY = "get a fresh copy of the store, or rebuild it"


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


def check_contained(loc: Location) -> None:
    """Refuse a local store holding a symbolic link that leads outside it.

    A store is untrusted input: through such a link a read (``pipe copy``, an upload) would
    leak a file from elsewhere and a write (a grow) would land outside the store. muzarr
    writes no links; a link that stays inside the store is left alone (its bytes are the
    store's own). Other filesystems have no links: nothing to check.
    """
    fs, root = loc.fs, loc.root
    if not is_local(fs) or not os.path.isdir(root):
        return
    real = os.path.realpath(root)  # the store's folder may itself be a link
    folders = [real]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([real, target]) != real:
                        raise MuzarrError(
                            f"{loc}: {os.path.relpath(entry.path, real)} is a symbolic link to {target}, outside the "
                            "store: refusing to read or write through it; remove the link"
                        )
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)


def check_metadata_size(loc: Location, key: str) -> None:
    """Refuse a JSON file of the store (``zarr.json`` of the group or an array) too large to be muzarr's,
    before Zarr or muzarr reads it whole. A missing file, or a size the server does not tell, passes."""
    fs, root = loc.fs, loc.root
    try:
        size = fs.size(f"{root}/{key}")
    except (FileNotFoundError, OSError, ValueError):
        return
    if size is not None and size > MAX_JSON_BYTES:
        raise MuzarrError(
            f"{loc}: malformed store: {key} has {size} bytes, more than the {MAX_JSON_BYTES >> 20} MiB of any metadata "
            f"muzarr writes: {FRESH_COPY}"
        )


def folder_listing(fs, root: str, *, shown: int = 4) -> str:
    """A few of the file names under ``root`` (relative), for a message naming what a folder holds."""
    names = sorted(p[len(root) + 1 :] for p in fs.find(root) if p[len(root) + 1 :] != LOCK)
    return ", ".join(names[:shown]) + (f", ... ({len(names)} files)" if len(names) > shown else "")


def remove_temporaries(loc: Location) -> int:
    """Delete the ``*.<hex>.partial`` files a killed writer can leave on a local disk."""
    fs, root = loc.fs, loc.root
    if not is_local(fs) or not fs.exists(root):
        return 0
    stale = [p for p in fs.find(root) if _TEMPORARY.search(p)]
    for path in stale:
        fs.rm_file(path)
    return len(stale)


def write_table(loc: Location, name: str, table: pd.DataFrame) -> None:
    """Write ``tables/<name>.parquet`` atomically: a reader sees the old or the new file, whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = loc.fs, loc.root
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    # A column with no value yet (no clip failed: every "error" is None) would get Arrow type null, which
    # no reader can merge with the same column of another store; muzarr's empty columns are text.
    typed = pa.schema(
        [field.with_type(pa.string()) if pa.types.is_null(field.type) else field for field in arrow.schema],
        metadata=arrow.schema.metadata,
    )
    buffer = io.BytesIO()
    pq.write_table(arrow.cast(typed), buffer)
    put_bytes(fs, f"{root}/tables/{name}.parquet", buffer.getvalue())


def read_table(loc: Location, name: str, *, rows: int | None = None) -> pd.DataFrame:
    """``tables/<name>.parquet`` as a DataFrame; FileNotFoundError if it is not there.

    ``rows`` is the row count the manifest implies: the file's Parquet footer must say as
    much, and neither the file nor its decoded columns may be larger than that many rows
    plausibly take, before any data is read (a MuzarrError otherwise).
    """
    fs, root = loc.fs, loc.root
    path = f"{root}/tables/{name}.parquet"
    if rows is not None:
        check_table_size(fs, path, rows, where=f"{loc}: malformed store: tables/{name}.parquet")
    # one thread: tables are small, and pyarrow's thread pool hangs where threads cannot start
    return pd.read_parquet(io.BytesIO(fs.cat_file(path)), use_threads=False)


def check_table_size(fs, path: str, rows: int, *, where: str) -> None:
    """The Parquet file at ``path`` holds ``rows`` rows of a plausible size: from its size and footer only."""
    import pyarrow.parquet as pq

    limit = TABLE_BASE_BYTES + rows * TABLE_ROW_BYTES
    size = fs.size(path)
    if size is None or size > limit:
        raise MuzarrError(f"{where} has {size} bytes, more than {rows} rows take (at most {limit}): {FRESH_COPY}")
    tail = fs.cat_file(path, start=max(0, size - 8), end=size)
    footer = int.from_bytes(tail[:4], "little") if len(tail) == 8 and tail[4:] == b"PAR1" else -1
    if not 0 < footer <= size - 12:
        raise ValueError(f"{path} is not a Parquet file (no footer)")
    # Only the footer is fetched: the leading magic is all pyarrow needs besides it.
    meta = pq.ParquetFile(io.BytesIO(b"PAR1" + fs.cat_file(path, start=size - 8 - footer, end=size))).metadata
    decoded = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    # Every table has a column of distinct values (clip ids, digests): at least a byte per row on disk.
    if meta.num_rows != rows or meta.num_rows > size:
        raise MuzarrError(f"{where} has {meta.num_rows} rows in {size} bytes, the manifest implies {rows}: {FRESH_COPY}")
    if decoded > limit:
        raise MuzarrError(f"{where} decodes to {decoded} bytes, more than {rows} rows take (at most {limit}): {FRESH_COPY}")


def write_json(loc: Location, key: str, data: dict) -> None:
    """Write ``key`` (store-relative) as JSON, atomically."""
    fs, root = loc.fs, loc.root
    put_bytes(fs, f"{root}/{key}", json.dumps(data, sort_keys=True, default=_plain).encode())


def read_json(loc: Location, key: str) -> Any:
    """``key`` parsed as JSON, or None when it is missing or not valid JSON (a torn or foreign file)."""
    fs, root = loc.fs, loc.root
    check_metadata_size(loc, key)
    try:
        data = fs.cat_file(f"{root}/{key}")
    except FileNotFoundError:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def remove_key(loc: Location, key: str) -> None:
    fs, root = loc.fs, loc.root
    try:
        fs.rm_file(f"{root}/{key}")
    except FileNotFoundError:
        pass


def read_manifest(loc: Location) -> dict | None:
    """The manifest in the group's ``zarr.json``, or None when there is no readable muzarr group."""
    meta = read_json(loc, "zarr.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("attributes"), dict):
        return None
    manifest = meta["attributes"].get("muzarr")
    return manifest if isinstance(manifest, dict) else None


def write_manifest(loc: Location, manifest: dict) -> None:
    """Replace the manifest attribute of the group in one atomic write of its ``zarr.json``.

    Written here rather than through Zarr's attribute update so that it is one atomic write
    on any fsspec filesystem (a torn ``zarr.json`` would leave a store nobody can open). The
    document is Zarr v3 group metadata, laid out as Zarr writes it.
    """
    fs, root = loc.fs, loc.root
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
    except (FileNotFoundError, ValueError):
        meta = {"zarr_format": 3, "node_type": "group"}
    attributes = dict(meta.get("attributes") or {})
    attributes["muzarr"] = manifest
    meta = {"attributes": attributes, "zarr_format": 3, "node_type": "group",
            **{k: v for k, v in meta.items() if k not in ("attributes", "zarr_format", "node_type")},
            "consolidated_metadata": consolidated_metadata(loc, manifest)}  # fmt: skip
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


def read_markers(loc: Location, batches: Iterable[int]) -> dict[int, Any]:
    """The raw (parsed JSON) completion markers of ``batches`` that exist; unreadable ones are left out.

    Reads each marker by name: no listing, so it works on any filesystem.
    """
    fs, root = loc.fs, loc.root
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


def read_batch_markers(loc: Location) -> dict[int, dict]:
    """Every parseable completion marker, keyed by batch number (kept for older callers)."""
    fs, root = loc.fs, loc.root
    try:
        paths = fs.glob(f"{root}/{MARKERS}/*.json")
    except (FileNotFoundError, NotImplementedError):
        return {}
    numbers = []
    for path in paths:
        stem = path.rsplit("/", 1)[-1][: -len(".json")]
        if stem.isdigit():
            numbers.append(int(stem))
    return read_markers(loc, numbers)


def list_keys(loc: Location) -> dict[str, int]:
    """Every key of the store with its size (needs a filesystem that can list)."""
    fs, root = loc.fs, loc.root
    fs.invalidate_cache(root)  # object stores cache listings: this one must see every key written
    found = fs.find(root, detail=True)
    keys = {}
    for path, info in found.items():
        key = path[len(root) + 1 :] if path.startswith(root + "/") else path
        if not _TEMPORARY.search(key):
            keys[key] = int(info.get("size") or 0)
    return keys


def store_keys(loc: Location, *, limit: int | None = None) -> dict[str, int | None]:
    """The keys of a finished store: ``_muzarr/keys.json`` where it exists, else a listing.

    Every key is checked to stay inside the store (a store from elsewhere is untrusted);
    ``limit`` is the most keys the store's manifest allows: a longer list (or a list file
    too large for it, checked before it is read) is refused, as is a size no file reaches.
    """
    if limit is not None:
        fs, root = loc.fs, loc.root
        try:
            size = fs.size(f"{root}/{KEYS}") or 0
        except FileNotFoundError:
            size = 0
        if size > limit * KEY_LIST_ENTRY_BYTES:
            raise MuzarrError(
                f"{loc}/{KEYS} has {size} bytes, more than a list of the {limit} keys the store can have: refusing it"
            )
    recorded = read_json(loc, KEYS)
    if recorded is not None:
        keys = recorded.get("keys") if isinstance(recorded, dict) else None
        if not isinstance(keys, dict):
            raise MuzarrError(f"{loc}/{KEYS} is malformed: expected {{'keys': {{key: size}}}}")
    elif loc.is_http:
        raise MuzarrError(
            f"{loc} has no {KEYS} and HTTP cannot list files: finish the store with `pipe build` at its origin"
        )
    else:
        keys = list_keys(loc)
    if limit is not None and len(keys) > limit:
        raise MuzarrError(f"{loc} key list: {len(keys)} keys, more than the {limit} the store can have: refusing it")
    checked = {}
    for key, size in keys.items():
        check_key(key, where=f"{loc} key list")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES):
            raise MuzarrError(f"{loc} key list: size {size!r} of {key!r} is not a byte count (0 to {MAX_FILE_BYTES})")
        checked[key] = size
    return checked
