"""Copying a store between any two fsspec URLs (HTTP included: see ``pipeline/http.py``).

A copy takes its list of keys from the store's ``_muzarr/keys.json`` (written when
the build finished), refuses any key that would leave the store, writes the destination's
manifest last and then verifies the copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import MuzarrError
from pipeline.store.io import KEYS, LOCK, TARGET, check_contained, folder_listing, read_json, store_keys
from pipeline.store.location import Location, location
from pipeline.store.reader import open_store
from pipeline.store.verify import verify_store

COPY_BATCH = 32


@dataclass
class CopyReport:
    """What :func:`copy_store` did, and the verification of the copy."""

    src: str
    dst: str
    n_keys: int
    n_bytes: int
    verify: object  # pipeline.store.verify.VerifyReport

    @property
    def ok(self) -> bool:
        return self.verify.ok


def copy_store(
    src: str | Location,
    dst: str | Location,
    *,
    overwrite: bool = False,
    src_options: dict | None = None,
    dst_options: dict | None = None,
    echo: Callable[[str], None] | None = None,
) -> CopyReport:
    """Copy the finished store at ``src`` to ``dst`` (any two fsspec URLs) and verify the copy.

    The keys come from ``src``'s ``_muzarr/keys.json`` (or a listing where ``src`` can list);
    a key that would leave the store (``..``, absolute) is refused before anything is
    written. The destination's ``zarr.json`` (its manifest) is written last, so a copy cut
    short is never mistaken for a store.
    """
    source_loc, dest = location(src, src_options), location(dst, dst_options)
    src, dst = source_loc.url, dest.url
    source = open_store(source_loc)
    if not source.complete:
        raise MuzarrError(f"{src} is not a finished store (state {source.manifest.get('state')!r}): finish it first")
    keys = store_keys(source_loc, limit=source.max_keys)
    if "zarr.json" not in keys:
        raise MuzarrError(f"{src}: its key list has no zarr.json")
    keys.pop(TARGET, None)
    keys.pop(LOCK, None)  # a build growing the source holds it: never part of a copy
    if read_json(source_loc, KEYS) is not None:
        keys[KEYS] = None  # the list itself, so that the copy can be copied from HTTP too
    src_fs, src_root = source_loc.fs, source_loc.root
    dst_fs, dst_root = dest.fs, dest.root
    if _same_place(src_fs, src_root, dst_fs, dst_root):
        raise MuzarrError(f"{src} and {dst} are the same place")
    if dst_fs.exists(dst_root) and (not dst_fs.isdir(dst_root) or dst_fs.ls(dst_root)):
        if not overwrite:
            raise MuzarrError(f"{dst} already exists: choose another destination or pass --overwrite")
        if not (dst_fs.exists(f"{dst_root}/zarr.json") or dst_fs.exists(f"{dst_root}/_muzarr")):
            # a store, or a copy cut short (its _muzarr/ keys come first): never someone's folder
            raise MuzarrError(
                f"{dst} is not a muzarr store (it holds {folder_listing(dst_fs, dst_root)}): "
                "--overwrite replaces stores only; choose another destination"
            )
        check_contained(dest)
        dst_fs.rm(dst_root, recursive=True)
    # zarr.json last: until it is there, the destination is not a store.
    ordered = sorted(k for k in keys if k != "zarr.json") + ["zarr.json"]
    total = 0
    for start in range(0, len(ordered), COPY_BATCH):
        batch = ordered[start : start + COPY_BATCH]
        found = src_fs.cat([f"{src_root}/{k}" for k in batch], on_error="return")
        for key in batch:
            data = found.get(f"{src_root}/{key}")
            if isinstance(data, BaseException) or data is None:
                raise MuzarrError(f"{src}: key {key} is listed in the store but cannot be read ({_why(data)})")
            expected = keys[key]
            if expected is not None and key not in ("zarr.json", KEYS) and len(data) != expected:
                raise MuzarrError(f"{src}: {key} has {len(data)} bytes, its key list says {expected}")
            total += len(data)
            dest.put(key, data)
        if echo:
            echo(f"  copied {min(start + COPY_BATCH, len(ordered))} of {len(ordered)} objects")
    report = verify_store(dest)
    return CopyReport(src=src, dst=dst, n_keys=len(ordered), n_bytes=total, verify=report)


def _same_place(src_fs, src_root: str, dst_fs, dst_root: str) -> bool:
    return type(src_fs) is type(dst_fs) and src_root.rstrip("/") == dst_root.rstrip("/")


def _why(error) -> str:
    if error is None:
        return "missing"
    return f"{type(error).__name__}: {error}".splitlines()[0]
