"""Whole shards of muzarr's feature arrays, encoded and decoded without zarr-python's machinery.

A build task writes whole shards and readers (``pipeline.store.arrays``) read whole shards or just
the chunks a crop overlaps. For both, zarr-python's asynchronous codec pipeline costs more
than the work itself (a 16-clip batch spent ~3.5 ms per clip there, besides compression).
This module handles the one byte format muzarr writes — Zarr v3 ``sharding_indexed``, a
regular N-d grid of chunks inside each shard (store layout 2 splits the time axis), inner
codecs ``bytes`` (little-endian), optionally ``blosc``, optionally ``crc32c`` last, index at
the end encoded as ``bytes`` + ``crc32c`` — and produces exactly the bytes zarr-python does
(chunks laid out in its Morton order, ``tests/test_shards.py``), so a store stays a plain
Zarr store any Zarr v3 reader opens.

Any other layout (a store written by another tool, a future codec) is not handled here:
:meth:`ShardFormat.of` returns ``None`` and callers go through zarr-python.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

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
        Shape of a shard and of the chunks inside it (each axis of a chunk divides the shard's).
    dtype : numpy.dtype
        Little-endian element type.
    blosc : numcodecs.blosc.Blosc or None
        The inner compressor (``None``: chunks stored raw).
    fill_value : scalar
        Value of chunks the shard does not hold.
    checksum : bool
        Each chunk ends with the ``crc32c`` of its encoded bytes (the last inner codec).
    """

    shard_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    dtype: np.dtype
    blosc: Blosc | None
    fill_value: object
    checksum: bool = False

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
        if len(shard_shape) != len(chunk_shape) or any(s % c for s, c in zip(shard_shape, chunk_shape)):
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
        inner = list(sharding.codecs)
        dtype = np.dtype(array.dtype)
        if not inner or not isinstance(inner[0], BytesCodec) or not (_little(inner[0]) or dtype.itemsize == 1):
            return None
        checksum = isinstance(inner[-1], Crc32cCodec)
        middle = inner[1:-1] if checksum else inner[1:]
        blosc = None
        if len(middle) == 1 and isinstance(middle[0], BloscCodec):
            config = middle[0]
            blosc = Blosc(
                cname=config.cname.value,
                clevel=config.clevel,
                shuffle=_SHUFFLES[config.shuffle.value],
                blocksize=config.blocksize,
                typesize=config.typesize or dtype.itemsize,
            )
        elif middle:
            return None
        fill = metadata.fill_value
        return cls(shard_shape, chunk_shape, dtype.newbyteorder("<"), blosc, fill, checksum)

    @property
    def grid(self) -> tuple[int, ...]:
        """Chunks per shard along each axis."""
        return tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape))

    @property
    def n_chunks(self) -> int:
        return math.prod(self.grid)

    @property
    def index_bytes(self) -> int:
        return self.n_chunks * 16 + 4

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one decoded chunk."""
        return math.prod(self.chunk_shape) * self.dtype.itemsize

    @property
    def max_bytes(self) -> int:
        """The most bytes a shard of this format takes: every chunk at its largest encoding (blosc adds at most
        16 bytes to incompressible data; 32 allowed), its checksum, and the index. A longer file is damaged."""
        return self.n_chunks * (self.chunk_bytes + 32 + 4) + self.index_bytes

    def encode(self, data: np.ndarray) -> bytes:
        """The shard holding ``data``.

        ``data`` may be smaller than a shard along any axis (the array's edge shards): as zarr
        does, each chunk it reaches into is padded with the fill value and the chunks wholly
        past it are left out of the shard (marked empty in its index).
        """
        if data.ndim != len(self.shard_shape) or any(n > s for n, s in zip(data.shape, self.shard_shape)):
            raise ValueError(f"shard data of shape {data.shape} does not fit shards of {self.shard_shape}")
        data = np.asarray(data, dtype=self.dtype)
        valid = data.shape
        if valid != self.shard_shape:
            grown = tuple(-(-n // c) * c for n, c in zip(valid, self.chunk_shape))
            full = np.full(grown, self.fill_value, dtype=self.dtype)
            full[tuple(slice(0, n) for n in valid)] = data
            data = full
        parts = []
        index = np.full((*self.grid, 2), EMPTY, dtype="<u8")
        offset = 0
        for coords in morton_order(self.grid):
            origin = [i * c for i, c in zip(coords, self.chunk_shape)]
            if any(o >= n for o, n in zip(origin, valid)):
                continue
            chunk = data[tuple(slice(o, o + c) for o, c in zip(origin, self.chunk_shape))]
            encoded = self.encode_chunk(chunk)
            parts.append(encoded)
            index[coords] = offset, len(encoded)
            offset += len(encoded)
        index_raw = index.tobytes()
        parts.append(index_raw)
        parts.append(np.uint32(google_crc32c.value(index_raw)).astype("<u4").tobytes())
        return b"".join(parts)

    def encode_chunk(self, chunk: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(chunk, dtype=self.dtype)
        encoded = self.blosc.encode(raw.view(np.uint8).reshape(-1)) if self.blosc else raw.tobytes()
        if self.checksum:
            encoded = bytes(encoded) + np.uint32(google_crc32c.value(encoded)).astype("<u4").tobytes()
        return encoded

    def read_index(self, raw, *, where: str = "shard") -> np.ndarray:
        """The shard index ``[shape=(*grid, 2)]`` (offset, length; ``EMPTY`` offsets for absent chunks)
        from its encoded bytes (the shard's last :attr:`index_bytes`), after its crc32c check."""
        view = np.frombuffer(raw, dtype=np.uint8)
        if len(view) != self.index_bytes:
            raise MuzarrError(f"{where}: {len(view)} bytes is shorter than its own index ({self.index_bytes} bytes)")
        body = view[:-4]
        if google_crc32c.value(body) != int(view[-4:].view("<u4")[0]):
            raise MuzarrError(f"{where}: the shard index fails its crc32c check (a damaged or truncated file)")
        return body.view("<u8").reshape(*self.grid, 2)

    def index_of(self, blob, *, where: str = "shard") -> np.ndarray:
        """:meth:`read_index` of a whole shard's bytes."""
        view = np.frombuffer(blob, dtype=np.uint8)
        if len(view) < self.index_bytes:
            raise MuzarrError(f"{where}: {len(view)} bytes is shorter than its own index ({self.index_bytes} bytes)")
        return self.read_index(view[len(view) - self.index_bytes :], where=where)

    def payload(self, encoded, coords, *, where: str = "shard") -> np.ndarray:
        """A chunk's encoded bytes without its checksum, which is checked first."""
        encoded = np.frombuffer(encoded, dtype=np.uint8)
        if not self.checksum:
            return encoded
        if len(encoded) < 4 or google_crc32c.value(encoded[:-4]) != int(encoded[-4:].view("<u4")[0]):
            raise MuzarrError(f"{where}: chunk {_name(coords)} fails its crc32c check (damaged bytes)")
        return encoded[:-4]

    def chunk_data(self, payload: np.ndarray, coords, *, where: str = "shard", out: np.ndarray | None = None) -> np.ndarray:
        """A chunk ``[shape=chunk_shape]`` from its :meth:`payload`: a read-only view of it when
        stored raw (a crop is then a copy out of the mapped shard), else decoded into ``out``."""
        if self.blosc is None:
            if len(payload) != self.chunk_bytes:
                raise MuzarrError(f"{where}: chunk {_name(coords)} holds {len(payload)} bytes, expected {self.chunk_bytes}")
            data = payload.view(self.dtype).reshape(self.chunk_shape)
            if out is not None:
                out[...] = data
                return out
            return data
        # blosc decodes into contiguous memory only (a chunk of a shard split along time is not)
        target = out if out is not None and out.flags.c_contiguous else np.empty(self.chunk_shape, dtype=self.dtype)
        try:
            self.blosc.decode(payload, out=target.reshape(-1).view(np.uint8))
        except Exception as error:  # noqa: BLE001 - blosc raises plain RuntimeError/ValueError
            raise MuzarrError(f"{where}: chunk {_name(coords)} does not decompress ({error})") from None
        if out is not None and out is not target:
            out[...] = target
        return out if out is not None else target

    def decode(self, blob: bytes | bytearray | memoryview | np.ndarray, *, where: str = "shard") -> np.ndarray:
        """The shard's data ``[shape=shard_shape]`` from its bytes; a damaged shard is a MuzarrError."""
        out = np.empty(self.shard_shape, dtype=self.dtype)
        for origin, encoded in self._encoded_chunks(blob, where):
            target = out[tuple(slice(o, o + c) for o, c in zip(origin, self.chunk_shape))]
            if encoded is None:
                target[...] = self.fill_value
            else:
                coords = tuple(o // c for o, c in zip(origin, self.chunk_shape))
                self.chunk_data(self.payload(encoded, coords, where=where), coords, where=where, out=target)
        return out

    def iter_chunks(
        self, blob: bytes | bytearray | memoryview | np.ndarray, *, where: str = "shard"
    ) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        """Decode the chunks one at a time (C order of the grid): yields ``(origin, data)``, ``origin``
        the chunk's first index along each axis of the shard.

        ``data`` is only valid until the next chunk is yielded (a reused buffer, or a view of
        ``blob`` for raw chunks).
        """
        buffer = np.empty(self.chunk_shape, dtype=self.dtype)
        for origin, encoded in self._encoded_chunks(blob, where):
            if encoded is None:
                buffer[...] = self.fill_value
                yield origin, buffer
                continue
            coords = tuple(o // c for o, c in zip(origin, self.chunk_shape))
            payload = self.payload(encoded, coords, where=where)
            yield origin, self.chunk_data(payload, coords, where=where, out=None if self.blosc is None else buffer)

    def _encoded_chunks(self, blob, where: str) -> Iterator[tuple[tuple[int, ...], np.ndarray | None]]:
        """``(chunk origin, its encoded bytes or None when empty)`` in C order, after checking the index."""
        view = np.frombuffer(blob, dtype=np.uint8)
        index = self.index_of(view, where=where)
        limit = len(view) - self.index_bytes
        for coords in itertools.product(*map(range, self.grid)):
            offset, length = index[coords]
            origin = tuple(i * c for i, c in zip(coords, self.chunk_shape))
            if offset == EMPTY:
                yield origin, None
                continue
            if offset + length > limit:
                raise MuzarrError(f"{where}: chunk {_name(coords)} lies outside the shard's data (a damaged or truncated file)")
            yield origin, view[int(offset) : int(offset + length)]


def _name(coords) -> str:
    """A chunk's grid position as text: ``3`` on a 1-d grid, ``0,3`` on a 2-d one."""
    coords = (coords,) if isinstance(coords, (int, np.integer)) else coords
    return ",".join(str(int(c)) for c in coords)


@lru_cache(maxsize=64)
def morton_order(grid: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The chunks of a shard in the order zarr-python lays them out: by compressed Morton code
    (bits of the coordinates interleaved, axes with one chunk taking none)."""
    bits = [(n - 1).bit_length() for n in grid]

    def code(coords):
        z, out_bit = 0, 0
        for bit in range(max(bits, default=0)):
            for axis, width in enumerate(bits):
                if bit < width:
                    z |= ((coords[axis] >> bit) & 1) << out_bit
                    out_bit += 1
        return z

    return tuple(sorted(itertools.product(*map(range, grid)), key=code))


def _little(codec) -> bool:
    endian = getattr(codec, "endian", None)
    return endian is None or getattr(endian, "value", endian) == "little"


def shard_path(array: zarr.Array, shard: int | tuple[int, ...]) -> str:
    """The store-relative key of shard ``shard``: its number along the first axis (the others 0),
    or its position in the shard grid."""
    coords = tuple(shard) if isinstance(shard, tuple) else (shard,) + (0,) * (array.ndim - 1)
    key = array.metadata.encode_chunk_key(coords)
    return f"{array.path}/{key}" if array.path else key


def map_local(path: str, *, populate: bool = True) -> memoryview | None:
    """A local file's bytes, memory-mapped read-only (``None`` if it does not exist).

    Decoding straight from the page cache skips copying the shard into process memory.
    ``populate`` pre-faults the whole file (a reader about to decode all of it); a reader that
    wants a few chunks of it leaves it off, so only the pages it touches are read. The mapping
    lives as long as the returned view (and views of it). muzarr replaces shards by renaming a
    new file over the old one, which leaves a mapped file intact.
    """
    try:
        with open(path, "rb", buffering=0) as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return memoryview(b"")
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            return memoryview(mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ))
    except FileNotFoundError:
        return None
