"""Stores at URLs: reading over plain HTTP, and copying a store between any two fsspec URLs.

HTTP cannot list files, and many simple servers (Python's ``http.server`` among them)
ignore ``Range`` requests and answer with the whole file. Reading therefore never lists,
and :class:`RangeCheckingHTTPFileSystem` cuts the requested bytes out of a whole-file answer
itself. A copy takes its list of keys from the store's ``_muzarr/keys.json`` (written when
the build finished), refuses any key that would leave the store, writes the destination's
manifest last and then verifies the copy.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import MuzarrError
from pipeline.storage import folder_listing
from pipeline.store import KEYS, TARGET, _fs, check_contained, is_local, open_store, put_bytes, read_json, store_keys

WHOLE_FILE_CACHE_BYTES = 64 << 20
COPY_BATCH = 32


try:  # HTTP needs aiohttp (the "remote" extra); everything else here works without it
    import aiohttp
    from fsspec.implementations.http import HTTPFileSystem
except ImportError:  # pragma: no cover - exercised only without the extra
    HTTPFileSystem = None

if HTTPFileSystem is not None:

    class RangeCheckingHTTPFileSystem(HTTPFileSystem):
        """fsspec's HTTP filesystem, correct with servers that ignore ``Range``.

        fsspec trusts the server to honour a byte range; a server that answers ``200`` with
        the whole file would hand Zarr's shard reader the wrong bytes. Here a ``206`` answer is
        used as is, and a ``200`` answer is sliced locally (and kept in a small cache, since the
        next read of the same shard would fetch the whole file again).
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._whole: OrderedDict[str, bytes] = OrderedDict()
            self._whole_lock = threading.Lock()

        async def _cat_file(self, url, start=None, end=None, **kwargs):
            if start is None and end is None:
                return await super()._cat_file(url, **kwargs)
            if start is not None and end is not None and start == end:
                return b""
            with self._whole_lock:
                cached = self._whole.get(url)
            if cached is not None:
                return cached[slice(start, end)]
            kw = self.kwargs.copy()
            kw.update(kwargs)
            headers = kw.pop("headers", {}).copy()
            headers["Range"] = await self._process_limits(url, start, end)
            session = await self.set_session()
            async with session.get(self.encode_url(url), headers=headers, **kw) as response:
                body = await response.read()
                self._raise_not_found_for_status(response, url)
                ranged = response.status == 206
            if ranged:
                return body
            self._remember(url, body)
            return body[slice(start, end)]

        async def _exists(self, path, **kwargs):
            # fsspec asks with a GET and drops the connection mid-body; HEAD costs no transfer.
            session = await self.set_session()
            try:
                async with session.head(self.encode_url(path), allow_redirects=True, **self.kwargs) as response:
                    if response.status not in (405, 501):
                        return response.status < 400
            except aiohttp.ClientError:
                return False
            return await super()._exists(path, **kwargs)  # HEAD not allowed here: fall back to GET

        def _remember(self, url: str, body: bytes) -> None:
            with self._whole_lock:
                self._whole[url] = body
                self._whole.move_to_end(url)
                while sum(len(b) for b in self._whole.values()) > WHOLE_FILE_CACHE_BYTES and len(self._whole) > 1:
                    self._whole.popitem(last=False)


def http_filesystem(storage_options: dict | None = None, *, asynchronous: bool = False):
    """The HTTP filesystem for muzarr's own reads (sync) or for Zarr's store (``asynchronous=True``)."""
    if HTTPFileSystem is None:
        raise MuzarrError("reading a store over HTTP needs aiohttp: pip install 'muzarr[remote]'")
    fs = RangeCheckingHTTPFileSystem(asynchronous=asynchronous, **(storage_options or {}))
    if asynchronous:
        if not _ASYNC_REGISTERED:
            atexit.register(_close_async_sessions)
            _ASYNC_REGISTERED.append(True)
        _ASYNC.add(fs)
    return fs


_ASYNC: weakref.WeakSet = weakref.WeakSet()
_ASYNC_REGISTERED: list[bool] = []


def _close_async_sessions() -> None:
    """Close the sessions Zarr's event loop opened (aiohttp warns about each one left open at exit)."""
    from zarr.core.sync import sync

    for fs in list(_ASYNC):
        session = getattr(fs, "_session", None)
        if session is not None and not session.closed:
            try:
                sync(session.close())
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass


@dataclass
class CopyReport:
    """What :func:`copy_store` did, and the verification of the copy."""

    src: str
    dst: str
    n_keys: int
    n_bytes: int
    verify: object  # pipeline.verify.VerifyReport

    @property
    def ok(self) -> bool:
        return self.verify.ok


def copy_store(
    src: str,
    dst: str,
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
    from pipeline.verify import verify_store

    source = open_store(src, storage_options=src_options)
    if not source.complete:
        raise MuzarrError(f"{src} is not a finished store (state {source.manifest.get('state')!r}): finish it first")
    # Per batch (at most one per clip): a shard per array, a status chunk and a marker; plus metadata and tables.
    limit = (source.n_clips + 2) * (len(source.arrays) + 2) + 16
    keys = store_keys(src, limit=limit, storage_options=src_options)
    if "zarr.json" not in keys:
        raise MuzarrError(f"{src}: its key list has no zarr.json")
    keys.pop(TARGET, None)
    if read_json(src, KEYS, storage_options=src_options) is not None:
        keys[KEYS] = None  # the list itself, so that the copy can be copied from HTTP too
    src_fs, src_root = _fs(src, src_options)
    dst_fs, dst_root = _fs(dst, dst_options)
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
        check_contained(dst, storage_options=dst_options)
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
            if is_local(dst_fs):
                put_bytes(dst_fs, f"{dst_root}/{key}", data)
            else:
                dst_fs.pipe_file(f"{dst_root}/{key}", data)
        if echo:
            echo(f"  copied {min(start + COPY_BATCH, len(ordered))} of {len(ordered)} objects")
    report = verify_store(dst, storage_options=dst_options)
    return CopyReport(src=src, dst=dst, n_keys=len(ordered), n_bytes=total, verify=report)


def _same_place(src_fs, src_root: str, dst_fs, dst_root: str) -> bool:
    return type(src_fs) is type(dst_fs) and src_root.rstrip("/") == dst_root.rstrip("/")


def _why(error) -> str:
    if error is None:
        return "missing"
    return f"{type(error).__name__}: {error}".splitlines()[0]
