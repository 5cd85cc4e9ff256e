"""Reading stores over plain HTTP.

HTTP cannot list files, and many simple servers (Python's ``http.server`` among them)
ignore ``Range`` requests and answer with the whole file. Reading therefore never lists,
and :class:`RangeCheckingHTTPFileSystem` cuts the requested bytes out of a whole-file answer
itself.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import OrderedDict

from pipeline.errors import MuzarrError

WHOLE_FILE_CACHE_BYTES = 64 << 20


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
            from_front = start is not None and start >= 0 and end is not None and end >= 0
            async with session.get(self.encode_url(url), headers=headers, **kw) as response:
                self._raise_not_found_for_status(response, url)
                if response.status == 206:
                    return await _read_at_most(response, end - start if from_front else None)
                # A whole-file answer: a range from the front needs only its first `end` bytes, and a
                # file far larger than asked for (a planted one) is never read whole.
                body = await _read_at_most(response, end if from_front else None)
                whole = not from_front or len(body) < end or not await response.content.read(1)
            if whole:
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


async def _read_at_most(response, limit: int | None) -> bytes:
    """The body of ``response``, or its first ``limit`` bytes (read in blocks: nothing more is held)."""
    if limit is None:
        return await response.read()
    blocks, size = [], 0
    while size < limit:
        block = await response.content.read(min(limit - size, 1 << 20))
        if not block:
            break
        blocks.append(block)
        size += len(block)
    return b"".join(blocks)


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
