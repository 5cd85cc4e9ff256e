"""Decoding a store's chunks without trusting the sizes they claim.

A zstd frame and a blosc chunk each say, in their first bytes, how large they decode; the decoders
allocate that much before reading on. A 16-byte chunk of a damaged or hostile store can claim a
terabyte: a reader then ends in ``MemoryError`` (or takes the memory) instead of naming the damage.
Here the zstd and blosc codecs zarr-python decodes with are replaced, for this process, by
subclasses that compare the claim with what a chunk of the array can hold (its shape and dtype,
from its metadata) and refuse it first, as :class:`DamagedChunk`. Writing is unchanged.

zarr-python decodes a read's chunks as tasks on its own event loop; when one fails, the read
raises at once while the others are still running. Left so, a process that exits soon after
(every command that ends in its one error line) destroys them pending, and asyncio prints their
tracebacks. :func:`zarr_reads` waits for them to finish and collects their errors first.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.registry import register_codec

from pipeline.errors import MuzarrError

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class DamagedChunk(MuzarrError):
    """A chunk whose own header claims more decoded bytes than a chunk of its array holds."""


def chunk_limit(chunk_spec) -> int:
    """The most bytes a compressed chunk of ``chunk_spec`` (zarr's ``ArraySpec``) may decode to.

    A compressor right after ``bytes`` decodes to exactly the chunk's bytes; one behind another
    compressor to that one's output, a little more for incompressible data: twice the chunk and
    4 KiB bounds both.
    """
    itemsize = np.dtype(chunk_spec.dtype.to_native_dtype()).itemsize
    return 2 * math.prod(chunk_spec.shape) * itemsize + 4096


def zstd_claim(data: bytes) -> int | None:
    """The content size a zstd frame's header declares (None: not declared, or not a zstd frame)."""
    if len(data) < 6 or data[:4] != _ZSTD_MAGIC:
        return None
    descriptor = data[4]
    single_segment = (descriptor >> 5) & 1
    field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    if not field or len(data) < start + field:
        return None
    value = int.from_bytes(data[start : start + field], "little")
    return value + 256 if field == 2 else value


def blosc_claim(data: bytes) -> int | None:
    """The decoded size a blosc chunk's 16-byte header declares (None: too short to have one)."""
    return int.from_bytes(data[4:8], "little") if len(data) >= 16 else None


def _refuse_claim(name: str, claim: int | None, chunk_bytes, chunk_spec) -> None:
    limit = chunk_limit(chunk_spec)
    if claim is not None and claim > limit:
        raise DamagedChunk(
            f"a {len(chunk_bytes)}-byte {name} chunk claims {claim} bytes decoded, more than a chunk of shape "
            f"{tuple(chunk_spec.shape)} holds: it is damaged"
        )


class BoundedZstd(ZstdCodec):
    """zarr-python's zstd codec, refusing a frame that claims more than its chunk holds before decoding it."""

    async def _decode_single(self, chunk_bytes, chunk_spec):
        _refuse_claim("zstd", zstd_claim(chunk_bytes.to_bytes()[:32]), chunk_bytes, chunk_spec)
        return await super()._decode_single(chunk_bytes, chunk_spec)


class BoundedBlosc(BloscCodec):
    """zarr-python's blosc codec, refusing a chunk that claims more than its chunk holds before decoding it."""

    async def _decode_single(self, chunk_bytes, chunk_spec):
        _refuse_claim("blosc", blosc_claim(chunk_bytes.to_bytes()[:16]), chunk_bytes, chunk_spec)
        return await super()._decode_single(chunk_bytes, chunk_spec)


def _install() -> None:
    """Make zarr-python decode ``zstd`` and ``blosc`` with the bounded codecs in this process."""
    for key, cls in (("zstd", BoundedZstd), ("blosc", BoundedBlosc)):
        register_codec(key, cls)
        zarr.config.set({f"codecs.{key}": f"{cls.__module__}.{cls.__qualname__}"})


_install()


def _settle() -> None:
    """Wait for every task on zarr-python's event loop to finish, collecting the errors they raise."""
    from zarr.core.sync import loop

    running = loop[0]
    if running is None or running.is_closed() or not running.is_running():
        return

    async def drain() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=30)
        for task in others:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: asyncio does not report it when the task is collected

    try:
        asyncio.run_coroutine_threadsafe(drain(), running).result(timeout=60)
    except Exception:  # noqa: BLE001, S110 - the read's own error is the one to report
        pass


@contextmanager
def zarr_reads(url: str, name: str, *, explain: bool = True) -> Iterator[None]:
    """Around zarr-python reads of array ``name`` of the store at ``url``: a failed read leaves no decoding
    task behind, and (``explain``) a chunk that claims more than it holds, or one too large to decode, is
    one line naming the array and ``pipe verify``."""
    try:
        yield
    except BaseException as error:
        _settle()
        if not explain:
            raise
        if isinstance(error, DamagedChunk):
            raise MuzarrError(f"store {url}: array {name!r} is damaged: {error}; run `pipe verify {url}`") from None
        if isinstance(error, MemoryError):
            raise MuzarrError(
                f"store {url}: array {name!r}: a chunk does not fit in memory as it decodes: the store is damaged or "
                f"was not written by muzarr; run `pipe verify {url}`"
            ) from None
        raise
