"""Whole shards of muzarr's feature arrays, encoded and decoded without zarr-python's machinery.

A build task writes whole shards and the training stream reads whole shards. For both,
zarr-python's asynchronous codec pipeline costs more than the work itself (a 16-clip batch
spent ~3.5 ms per clip there, besides compression). This module handles the one byte format
muzarr writes — Zarr v3 ``sharding_indexed``, chunks split along the clip axis only, inner
codecs ``bytes`` (little-endian) then optionally ``blosc``, index at the end encoded as
``bytes`` + ``crc32c`` — and produces exactly the bytes zarr-python does
(``tests/test_shards.py``), so a store stays a plain Zarr store any Zarr v3 reader opens.

Any other layout (a store written by another tool, a future codec) is not handled here:
:meth:`ShardFormat.of` returns ``None`` and callers go through zarr-python.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import google_crc32c
import numpy as np
import zarr
from numcodecs.blosc import Blosc

from pipeline.errors import MuzarrError

EMPTY = np.uint64(2**64 - 1)
_SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


@dataclass(frozen=True)
class ShardFormat:
    """The byte layout of one shard of a sharded array.

    Attributes
    ----------
    shard_shape, chunk_shape : tuple
        Shape of a shard and of the chunks inside it; they differ on the first axis only.
    dtype : numpy.dtype
        Little-endian element type.
    blosc : numcodecs.blosc.Blosc or None
        The inner compressor (``None``: chunks stored raw).
    fill_value : scalar
        Value of chunks the shard does not hold.
    """

    shard_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    dtype: np.dtype
    blosc: Blosc | None
    fill_value: object

    @classmethod
    def of(cls, array: zarr.Array) -> ShardFormat | None:
        """The format of ``array``'s shards, or ``None`` when it is not one this module handles.

        It reads zarr-python's codec objects; a zarr release that changed them gives ``None``
        (zarr-python then reads and writes, slower but right), never an error.
        """
        try:
            return cls._of(array)
        except (AttributeError, TypeError, ValueError, KeyError):
            return None

    @classmethod
    def _of(cls, array: zarr.Array) -> ShardFormat | None:
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        metadata = array.metadata
        codecs = getattr(metadata, "codecs", ())
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or array.shards is None:
            return None
        sharding = codecs[0]
        shard_shape, chunk_shape = tuple(array.shards), tuple(sharding.chunk_shape)
        if shard_shape[1:] != chunk_shape[1:] or shard_shape[0] % chunk_shape[0]:
            return None
        if sharding.index_location != ShardingCodecIndexLocation.end:
            return None
        index_codecs = sharding.index_codecs
        if not (
            len(index_codecs) == 2
            and isinstance(index_codecs[0], BytesCodec)
            and _little(index_codecs[0])
            and isinstance(index_codecs[1], Crc32cCodec)
        ):
            return None
        inner = sharding.codecs
        dtype = np.dtype(array.dtype)
        if not inner or not isinstance(inner[0], BytesCodec) or not (_little(inner[0]) or dtype.itemsize == 1):
            return None
        blosc = None
        if len(inner) == 2 and isinstance(inner[1], BloscCodec):
            config = inner[1]
            blosc = Blosc(
                cname=config.cname.value,
                clevel=config.clevel,
                shuffle=_SHUFFLES[config.shuffle.value],
                blocksize=config.blocksize,
                typesize=config.typesize or dtype.itemsize,
            )
        elif len(inner) != 1:
            return None
        fill = metadata.fill_value
        return cls(shard_shape, chunk_shape, dtype.newbyteorder("<"), blosc, fill)

    @property
    def n_chunks(self) -> int:
        return self.shard_shape[0] // self.chunk_shape[0]

    @property
    def index_bytes(self) -> int:
        return self.n_chunks * 16 + 4

    def encode(self, data: np.ndarray) -> bytes:
        """The shard holding ``data``.

        ``data`` may be shorter than a shard (the array's last, partial shard): as zarr does,
        the chunk it ends in is padded with the fill value and the chunks past it are left
        out of the shard (marked empty in its index).
        """
        if data.shape[1:] != self.shard_shape[1:] or len(data) > self.shard_shape[0]:
            raise ValueError(f"shard data of shape {data.shape} does not fit shards of {self.shard_shape}")
        data = np.asarray(data, dtype=self.dtype)
        step = self.chunk_shape[0]
        n_rows = len(data)
        if n_rows % step:
            full = np.full((n_rows + step - n_rows % step, *self.shard_shape[1:]), self.fill_value, dtype=self.dtype)
            full[:n_rows] = data
            data = full
        parts = []
        index = np.full((self.n_chunks, 2), EMPTY, dtype="<u8")
        offset = 0
        for i in range(len(data) // step):
            chunk = np.ascontiguousarray(data[i * step : (i + 1) * step])
            encoded = self.blosc.encode(chunk.view(np.uint8).reshape(-1)) if self.blosc else chunk.tobytes()
            parts.append(encoded)
            index[i] = offset, len(encoded)
            offset += len(encoded)
        index_raw = index.tobytes()
        parts.append(index_raw)
        parts.append(np.uint32(google_crc32c.value(index_raw)).astype("<u4").tobytes())
        return b"".join(parts)

    def decode(self, blob: bytes | bytearray | memoryview | np.ndarray, *, where: str = "shard") -> np.ndarray:
        """The shard's data ``[shape=shard_shape]`` from its bytes; a damaged shard is a MuzarrError."""
        out = np.empty(self.shard_shape, dtype=self.dtype)
        step = self.chunk_shape[0]
        for i, encoded in self._encoded_chunks(blob, where):
            self._decode_chunk(encoded, out[i * step : (i + 1) * step], i, where)
        return out

    def iter_chunks(
        self, blob: bytes | bytearray | memoryview | np.ndarray, *, where: str = "shard"
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Decode the chunks one at a time into one reused buffer: yields ``(first row, data)``.

        ``data`` is only valid until the next chunk is yielded. Readers that keep a small part
        of each clip (a training crop) touch a chunk-sized, cache-resident buffer instead of
        a whole decoded shard.
        """
        buffer = np.empty(self.chunk_shape, dtype=self.dtype)
        step = self.chunk_shape[0]
        for i, encoded in self._encoded_chunks(blob, where):
            self._decode_chunk(encoded, buffer, i, where)
            yield i * step, buffer

    def _encoded_chunks(self, blob, where: str) -> Iterator[tuple[int, memoryview | None]]:
        """``(chunk number, its encoded bytes or None when empty)``, after checking the index."""
        view = memoryview(blob).cast("B")
        if len(view) < self.index_bytes:
            raise MuzarrError(f"{where}: {len(view)} bytes is shorter than its own index ({self.index_bytes} bytes)")
        index_raw = bytes(view[-self.index_bytes : -4])
        stored_crc = int(np.frombuffer(view[-4:], dtype="<u4")[0])
        if google_crc32c.value(index_raw) != stored_crc:
            raise MuzarrError(f"{where}: the shard index fails its crc32c check (a damaged or truncated file)")
        index = np.frombuffer(index_raw, dtype="<u8").reshape(self.n_chunks, 2)
        limit = len(view) - self.index_bytes
        for i, (offset, length) in enumerate(index):
            if offset == EMPTY:
                yield i, None
                continue
            if offset + length > limit:
                raise MuzarrError(f"{where}: chunk {i} lies outside the shard's data (a damaged or truncated file)")
            yield i, view[int(offset) : int(offset + length)]

    def _decode_chunk(self, encoded: memoryview | None, target: np.ndarray, i: int, where: str) -> None:
        if encoded is None:
            target[...] = self.fill_value
            return
        flat = target.reshape(-1).view(np.uint8)
        if self.blosc is None:
            if len(encoded) != flat.size:
                raise MuzarrError(f"{where}: chunk {i} holds {len(encoded)} bytes, expected {flat.size}")
            flat[...] = np.frombuffer(encoded, dtype=np.uint8)
            return
        try:
            self.blosc.decode(encoded, out=flat)
        except Exception as error:  # noqa: BLE001 - blosc raises plain RuntimeError/ValueError
            raise MuzarrError(f"{where}: chunk {i} does not decompress ({error})") from None


def _little(codec) -> bool:
    endian = getattr(codec, "endian", None)
    return endian is None or getattr(endian, "value", endian) == "little"


def shard_path(array: zarr.Array, shard: int) -> str:
    """The store-relative key of shard number ``shard`` (along the clip axis)."""
    key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
    return f"{array.path}/{key}" if array.path else key


def map_local(path: str) -> memoryview | None:
    """A local file's bytes, memory-mapped read-only and pre-faulted (``None`` if it does not exist).

    Decoding straight from the page cache skips copying the compressed shard into process
    memory. The mapping lives as long as the returned view (and views of it). muzarr replaces
    shards by renaming a new file over the old one, which leaves a mapped file intact.
    """
    try:
        with open(path, "rb", buffering=0) as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return memoryview(b"")
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            return memoryview(mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ))
    except FileNotFoundError:
        return None
