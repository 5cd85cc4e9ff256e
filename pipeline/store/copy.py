"""Copying a store between any two fsspec URLs (HTTP sources included: see ``pipeline/store/http.py``).

A copy takes its list of keys from the store's ``_muzarr/keys.json`` (written when
the build finished), refuses any key that would leave the store, reads no file past the size
the list gives it, writes the destination's manifest last and then verifies the copy.

A copy cut short (killed, Ctrl-C, a full disk) resumes: the destination's ``_muzarr/copy.json``
(:class:`CopyMarker`, written before any key, removed after the manifest) names the source's
manifest, and the same command keeps what that copy wrote and copies the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline.errors import MuzarrError, write_errors
from pipeline.store.io import (
    COPYING,
    FRESH_COPY,
    KEYS,
    LOCK,
    MAX_JSON_BYTES,
    TARGET,
    check_contained,
    folder_listing,
    list_keys,
    read_json,
    remove_key,
    remove_temporaries,
    store_keys,
    write_json,
)
from pipeline.store.location import Location, location
from pipeline.store.reader import open_store
from pipeline.store.verify import verify_store

#: objects read at once (concurrently, from an object store or HTTP) ...
COPY_BATCH = 32
#: ... holding at most this many bytes by their listed sizes (a larger object is read alone)
COPY_BATCH_BYTES = 256 << 20


@dataclass
class CopyReport:
    """What :func:`copy_store` did, and the verification of the copy."""

    src: str
    dst: str
    n_keys: int  # objects in the copy
    n_bytes: int  # bytes copied by this run
    verify: object  # pipeline.store.verify.VerifyReport
    n_kept: int = 0  # objects an interrupted copy of the same store had written, kept

    @property
    def ok(self) -> bool:
        return self.verify.ok


@dataclass(frozen=True)
class CopyMarker:
    """``_muzarr/copy.json``: the destination is an unfinished copy of the store whose ``zarr.json``
    has this digest. Written before the first key and removed after the manifest, so it is there
    exactly when a copy was cut short; it names no URL (a URL can carry credentials)."""

    manifest: str  # blake2b-128 of the source's zarr.json

    @classmethod
    def of(cls, manifest: bytes) -> CopyMarker:
        return cls(manifest=hashlib.blake2b(manifest, digest_size=16).hexdigest())

    @classmethod
    def read(cls, loc: Location) -> CopyMarker | None:
        """The marker at ``loc``; None if there is none, or not one a copy wrote."""
        data = read_json(loc, COPYING)
        digest = data.get("manifest") if isinstance(data, dict) else None
        return cls(manifest=digest) if isinstance(digest, str) else None

    def write(self, loc: Location) -> None:
        write_json(loc, COPYING, {"manifest": self.manifest})


def copy_store(
    src: str | Location,
    dst: str | Location,
    *,
    overwrite: bool = False,
    src_options: dict | None = None,
    dst_options: dict | None = None,
    echo: Callable[[str], None] | None = None,
) -> CopyReport:
    """Copy the finished store at ``src`` to ``dst`` (any two fsspec URLs; ``dst`` not HTTP) and verify the copy.

    The keys come from ``src``'s ``_muzarr/keys.json`` (or a listing where ``src`` can list);
    a key that would leave the store (``..``, absolute) is refused before anything is
    written, and a file longer than its listed size is refused after reading one byte past it.
    The destination's ``zarr.json`` (its manifest) is written last, so a copy cut short is never
    mistaken for a store; running the same copy again finishes it (see :class:`CopyMarker`).
    ``src`` and ``dst`` must not overlap (the same place, or one inside the other).
    """
    source_loc, dest = location(src, src_options), location(dst, dst_options)
    src, dst = source_loc.url, dest.url
    dest.check_writable(verb="copy")
    check_apart(source_loc, dest)
    source = open_store(source_loc)
    if not source.complete:
        raise MuzarrError(f"{src} is not a finished store (state {source.manifest.state!r}): finish it first")
    keys = store_keys(source_loc, limit=source.max_keys)
    if "zarr.json" not in keys:
        raise MuzarrError(f"{src}: its key list has no zarr.json")
    for own in (TARGET, LOCK, COPYING):  # a build or a copy writing the source: never part of a copy
        keys.pop(own, None)
    if read_json(source_loc, KEYS) is not None:
        # the list itself, so that the copy can be copied from HTTP too; its size, to keep it on a resume
        keys[KEYS] = len(_read(source_loc, [KEYS], {KEYS: None})[KEYS])
    keys["zarr.json"] = None
    # The manifest copied is the one the marker names: read once, written last.
    manifest = _read(source_loc, ["zarr.json"], keys)["zarr.json"]
    marker = CopyMarker.of(manifest)
    ordered = sorted(k for k in keys if k != "zarr.json")
    total = 0
    with write_errors(dst, other="another destination"):
        kept = _prepare(dest, marker, overwrite=overwrite)
        todo = [k for k in ordered if not _kept(k, keys[k], kept)]
        marker.write(dest)
        done = len(ordered) - len(todo)
        for batch in _batches(todo, keys):
            for key, data in _read(source_loc, batch, keys).items():
                total += len(data)
                dest.put(key, data)
            done += len(batch)
            if echo:
                echo(f"  copied {done} of {len(ordered) + 1} objects")
        dest.put("zarr.json", manifest)  # last: until it is there, the destination is not a store
        total += len(manifest)
        remove_key(dest, COPYING)
    report = verify_store(dest)
    return CopyReport(src=src, dst=dst, n_keys=len(ordered) + 1, n_bytes=total, verify=report,
                      n_kept=len(ordered) - len(todo))  # fmt: skip


def check_apart(source: Location, dest: Location) -> None:
    """Refuse a destination that is the source, lies inside it, or holds it: writing (or clearing
    with ``--overwrite``) such a destination would change the source. Both places are resolved
    first (``..``, symbolic links, trailing slashes, ``file:`` URLs: :attr:`Location.place`)."""
    mine, theirs = source.place, dest.place
    if mine == theirs:
        raise MuzarrError(f"{source} and {dest} are the same place ({mine}): choose another destination")
    if source.contains(dest):
        raise MuzarrError(
            f"{dest} ({theirs}) is inside the source {source} ({mine}): choose a destination outside the source"
        )
    if dest.contains(source):
        raise MuzarrError(
            f"the source {source} ({mine}) is inside {dest} ({theirs}): choose a destination that does not hold the source"
        )


def _prepare(dest: Location, marker: CopyMarker, *, overwrite: bool) -> dict[str, int]:
    """Make ``dest`` ready for the copy; returns what an interrupted copy of the same store left there
    (key -> size), to be kept. Anything else that holds files needs ``overwrite``, and only a store
    (or a copy cut short) is replaced."""
    fs, root = dest.fs, dest.root
    fs.invalidate_cache(root)  # object stores cache listings: an earlier copy in this process made one
    if not fs.exists(root) or (fs.isdir(root) and not _holds_files(fs, root)):
        return {}
    check_contained(dest)  # a link planted there would take the copy's writes elsewhere
    if CopyMarker.read(dest) == marker:
        remove_temporaries(dest)
        return list_keys(dest)
    if not overwrite:
        raise MuzarrError(f"{dest} already exists: choose another destination or pass --overwrite")
    if not (fs.exists(f"{root}/zarr.json") or fs.exists(f"{root}/_muzarr")):
        # a store, or a copy cut short (its _muzarr/ keys come first): never someone's folder
        raise MuzarrError(
            f"{dest} is not a muzarr store (it holds {folder_listing(fs, root)}): "
            "--overwrite replaces stores only; choose another destination"
        )
    fs.rm(root, recursive=True)
    return {}


def _holds_files(fs, root: str) -> bool:
    """Whether folder ``root`` holds a file (a copy stopped before its first write can leave empty folders)."""
    for entry in fs.ls(root, detail=True):
        if entry.get("type") != "directory" or _holds_files(fs, entry["name"]):
            return True
    return False


def _kept(key: str, size: int | None, kept: dict[str, int]) -> bool:
    """An object the interrupted copy wrote whole: every write is atomic, so one of the listed size is
    the source's (the copy's verification checks every clip's digest again)."""
    return size is not None and kept.get(key) == size


def _batches(keys: list[str], sizes: dict[str, int | None]) -> Iterator[list[str]]:
    batch, held = [], 0
    for key in keys:
        size = sizes[key] or 0
        if batch and (len(batch) == COPY_BATCH or held + size > COPY_BATCH_BYTES):
            yield batch
            batch, held = [], 0
        batch.append(key)
        held += size
    if batch:
        yield batch


def _read(source: Location, batch: list[str], sizes: dict[str, int | None]) -> dict[str, bytes]:
    """The bytes of each key of ``batch``, reading at most one byte past its listed size (a JSON file's
    largest size where none is listed): a file larger than its listing is refused, never read whole."""
    fs, root = source.fs, source.root
    limits = [(MAX_JSON_BYTES if sizes[k] is None else sizes[k]) + 1 for k in batch]
    found = fs.cat_ranges([f"{root}/{k}" for k in batch], [0] * len(batch), limits, on_error="return")
    out = {}
    for key, data, limit in zip(batch, found, limits):
        if isinstance(data, BaseException) or data is None:
            raise MuzarrError(f"{source}: key {key} is listed in the store but cannot be read ({_why(data)})")
        expected = sizes[key]
        if len(data) >= limit:
            said = f"its key list says {expected}" if expected is not None else "more than muzarr writes in such a file"
            raise MuzarrError(f"{source}: {key} has more than {limit - 1} bytes, {said}: refusing it; {FRESH_COPY}")
        if expected is not None and len(data) != expected:
            raise MuzarrError(f"{source}: {key} has {len(data)} bytes, its key list says {expected}")
        out[key] = data
    return out


def _why(error) -> str:
    if error is None:
        return "missing"
    return f"{type(error).__name__}: {error}".splitlines()[0]
