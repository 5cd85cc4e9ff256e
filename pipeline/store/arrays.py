"""Reading an array of a store by whole rows or by crops along time, touching only the chunks needed.

:class:`ArrayReader` is the block/crop reader every consumer of feature data goes through
(training's stream, evaluation, the RAM cache). A crop ``(row, start, length)`` reads the
chunks it overlaps and nothing else: a local shard is memory-mapped (not pre-faulted, so only
the pages of those chunks are read), a remote one is read by byte ranges: its index, then just
those chunks, all of one request's in one ``cat_ranges``. Every chunk a read touches passes
its ``crc32c`` (store layout 2); whole rows are also checked against their clip digests in
``tables/checksums.parquet``. Damaged bytes are one :class:`MuzarrError` naming the shard and
``pipe verify``.

Arrays with a clip axis are addressed by row; arrays without one (whole tracks concatenated
along time) take absolute windows along their last axis (``rows=None``).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, defaultdict

import numpy as np
import zarr

from pipeline.errors import MuzarrError
from pipeline.store.codecs import zarr_reads
from pipeline.store.io import STATUS_NAMES, STATUS_OK
from pipeline.store.layout import clip_digests
from pipeline.store.reader import Store, open_store
from pipeline.store.shards import EMPTY, ShardFormat, map_local, shard_path

MAPPED_SHARDS = 1024  # local shards a reader keeps mapped (1024 waveform shards of MTAT: 15 GB of address space)


class ArrayReader:
    """Crops and whole rows of array ``name`` of ``store``.

    Parameters
    ----------
    store : Store
    name : str
        Array name (``"waveform"``, ``"logmel/<variant>"``, ...).
    verify : bool
        Check each chunk read against its ``crc32c`` and each whole row against its clip
        digest (``False``: trust the bytes, e.g. to measure what checking costs).
    clip_axis : bool
        The array's first axis is the store's clips (``False``: a track array, windows absolute).

    The reader opens its handles lazily and drops them when pickled, so a copy in a loader
    worker opens its own.
    """

    def __init__(self, store: Store, name: str, *, verify: bool = True, clip_axis: bool = True) -> None:
        info = store.array_info(name)
        self.url, self.location, self.name = store.url, store.location, name
        self.shape = info.shape
        self.dtype = np.dtype(info.dtype)
        self.shards = info.shards or info.chunks
        self.verify = verify
        self.clip_axis = clip_axis
        self._clip_ids = store.clips["clip_id"].to_numpy() if clip_axis else None
        self._status = store.status if clip_axis else None
        self._failed = store.array_failures(name)  # stored clips this array has no data for
        self._digest_algorithm = store.digest_algorithm
        self._digests = None
        self._handles = None
        self._maps: OrderedDict = OrderedDict()  # path -> (mapped bytes, index): see _mapped

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": None, "_maps": OrderedDict()}

    @property
    def rows_per_shard(self) -> int:
        return self.shards[0]

    def close(self) -> None:
        """Forget the open handles (the next read opens them again: a forked process must not share them)."""
        self._handles = None
        self._maps = OrderedDict()
        self.location = self.location.fresh()

    def _open(self):
        """``(store, zarr array, shard format or None, filesystem, root)``, opened once per process."""
        if self._handles is None:
            store = open_store(self.location)
            array = store.array(self.name)
            fs, root = self.location.fs, self.location.root
            self._handles = (store, array, ShardFormat.of(array), fs, root)
        return self._handles

    def shard_key(self, shard: int | tuple[int, ...]) -> str:
        """The store key of shard ``shard`` (its number along the first axis, or its grid position)."""
        return shard_path(self._open()[1], shard)

    def _check_rows(self, rows: np.ndarray) -> None:
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise MuzarrError(f"store {self.url}: {self.name} has rows 0..{self.shape[0] - 1}; asked for row {rows.max()}")
        bad = rows[self._status[rows] != STATUS_OK]
        if len(bad):
            raise MuzarrError(
                f"clip {self._clip_ids[bad[0]]!r} (row {bad[0]}) of {self.url} is "
                f"{STATUS_NAMES[int(self._status[bad[0]])]}: it has no data to read"
            )
        lost = [int(r) for r in rows if int(r) in self._failed] if self._failed else []
        if lost:
            x = self._failed[lost[0]]
            raise MuzarrError(
                f"clip {x.clip_id!r} (row {lost[0]}) of {self.url} failed {self.name} at {x.stage} ({x.message}): "
                f"that array has no data for it (`pipe info {self.url}` lists such clips)"
            )

    def crops(self, rows, starts, length: int) -> np.ndarray:
        """``[n, *inner, length]``: row ``rows[i]`` from ``starts[i]`` along the last axis (``rows=None``:
        an array without a clip axis, ``starts`` absolute along its last axis). Windows must lie
        within the array; each reads only the chunks it overlaps."""
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        extent = self.shape[-1]
        if len(starts) and (starts.min() < 0 or starts.max() + length > extent or length < 1):
            raise MuzarrError(
                f"store {self.url}: {self.name}: a crop of {length} from {int(starts.max())} reaches past its {extent} "
                "along time"
            )
        inner = [(0, n) for n in self.shape[(1 if self.clip_axis else 0) : -1]]
        if self.clip_axis:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            if len(rows) != len(starts):
                raise MuzarrError(f"crops: {len(rows)} rows but {len(starts)} starts")
            self._check_rows(rows)
            fmt = self._open()[2]
            if fmt is not None and _whole_but_time(fmt, self.shape):
                return self._crops_along_time(fmt, rows, starts, length)
            regions = [((int(r), int(r) + 1), *inner, (int(s), int(s) + length)) for r, s in zip(rows, starts)]
            shape = (len(starts), *self.shape[1:-1], length)
        else:
            regions = [(*inner, (int(s), int(s) + length)) for s in starts]
            shape = (len(starts), *self.shape[:-1], length)
        return self._read(regions, shape, populate=False)

    def _crops_along_time(self, fmt: ShardFormat, rows: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """:meth:`crops` of an array whose shards hold whole rows and whose chunks split rows along
        time only (every store layout 2 writes for clips): each crop is a few slice copies, one
        per time chunk it overlaps, each chunk checked once however many crops share it."""
        rows_per_shard, chunk_rows, step = fmt.shard_shape[0], fmt.chunk_shape[0], fmt.chunk_shape[-1]
        middle = (0,) * (len(fmt.chunk_shape) - 2)
        out = np.empty((len(rows), *self.shape[1:-1], length), dtype=self.dtype)
        firsts, lasts = (starts // step).tolist(), ((starts + length - 1) // step).tolist()
        wanted = []  # per crop: (shard, row within its chunk, [chunk, ...])
        by_shard = defaultdict(dict)
        for row, first, last in zip(rows.tolist(), firsts, lasts):
            shard, inside = divmod(row, rows_per_shard)
            shard = (shard, *middle, 0)
            chunks = [(inside // chunk_rows, *middle, t) for t in range(first, last + 1)]
            by_shard[shard].update(dict.fromkeys(chunks))
            wanted.append((shard, inside % chunk_rows, chunks))
        _, _, _, fs, root = self._open()
        fetched = self._fetch(fmt, fs, root, {shard: list(chunks) for shard, chunks in by_shard.items()}, False)
        decoded = {}
        for i, ((shard, sub, chunks), start) in enumerate(zip(wanted, starts.tolist())):
            for chunk in chunks:
                data = decoded.get((shard, chunk))
                if data is None:
                    data = decoded[shard, chunk] = self._chunk(fmt, chunk, *fetched[shard, chunk])
                origin = chunk[-1] * step
                lo, hi = max(start, origin), min(start + length, origin + step)
                out[i, ..., lo - start : hi - start] = data[sub, ..., lo - origin : hi - origin]
        return out

    def _chunk(self, fmt: ShardFormat, coords: tuple, encoded, where: str) -> np.ndarray:
        """A chunk's values from its encoded bytes (``None``: never written, the fill value)."""
        if encoded is None:
            return np.full(fmt.chunk_shape, fmt.fill_value, dtype=self.dtype)
        try:
            payload = fmt.payload(encoded, coords, where=where) if self.verify else _strip(fmt, encoded)
            return fmt.chunk_data(payload, coords, where=where)
        except MuzarrError as err:
            raise MuzarrError(f"{err}: run `pipe verify {self.url}`") from None

    def rows(self, rows) -> np.ndarray:
        """Whole rows ``[n, *shape[1:]]``, each also checked against its clip digest (with ``verify``)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check_rows(rows)
        whole = [(0, n) for n in self.shape[1:]]
        data = self._read([((int(r), int(r) + 1), *whole) for r in rows], (len(rows), *self.shape[1:]), populate=True)
        if self.verify and len(rows):
            self._check_digests(rows, data)
        return data

    def _check_digests(self, rows: np.ndarray, data: np.ndarray) -> None:
        if self._digests is None:
            self._digests = self._open()[0].stored_digests(self.name)
        actual = np.array(clip_digests(data, algorithm=self._digest_algorithm), dtype=object)
        bad = np.flatnonzero(actual != self._digests[rows])
        if len(bad):
            row = int(rows[bad[0]])
            raise MuzarrError(
                f"store {self.url}: {self.shard_key(row // self.rows_per_shard)}: clip {self._clip_ids[row]!r} (row {row}) "
                f"of {self.name} differs from its digest in tables/checksums.parquet (damaged bytes): "
                f"run `pipe verify {self.url}`"
            )

    def _read(self, regions: list[tuple], shape: tuple[int, ...], *, populate: bool) -> np.ndarray:
        """``regions[i]`` (a ``(lo, hi)`` per axis) into ``out[i]`` (the regions' shapes, squeezed of the row axis)."""
        _, array, fmt, fs, root = self._open()
        out = np.empty(shape, dtype=self.dtype)
        if fmt is None:  # a layout pipeline.store.shards does not handle: zarr-python reads it
            for i, region in enumerate(regions):
                out[i] = self._zarr(array, region).reshape(shape[1:])
            return out
        view = out.reshape(len(regions), *(hi - lo for lo, hi in regions[0])) if regions else out
        # every chunk touched, with where its pieces go: each chunk is fetched and decoded once
        pieces = defaultdict(list)
        for i, region in enumerate(regions):
            ranges = [range(lo // s, (hi - 1) // s + 1) for (lo, hi), s in zip(region, fmt.shard_shape)]
            for shard in itertools.product(*ranges):
                base = [k * s for k, s in zip(shard, fmt.shard_shape)]
                inside = [(max(lo, b) - b, min(hi, b + s) - b) for (lo, hi), b, s in zip(region, base, fmt.shard_shape)]
                chunk_ranges = [range(lo // c, (hi - 1) // c + 1) for (lo, hi), c in zip(inside, fmt.chunk_shape)]
                for chunk in itertools.product(*chunk_ranges):
                    origin = [k * c for k, c in zip(chunk, fmt.chunk_shape)]
                    source, target = [], [i]
                    for (lo, hi), o, c, b, (rlo, _) in zip(inside, origin, fmt.chunk_shape, base, region):
                        a, z = max(lo, o), min(hi, o + c)
                        source.append(slice(a - o, z - o))
                        target.append(slice(a + b - rlo, z + b - rlo))
                    pieces[shard, chunk].append((tuple(source), tuple(target)))
        by_shard = defaultdict(list)
        for shard, chunk in pieces:
            by_shard[shard].append(chunk)
        fetched = self._fetch(fmt, fs, root, by_shard, populate)
        for (shard, chunk), parts in pieces.items():
            data = self._chunk(fmt, chunk, *fetched[shard, chunk])
            for source, target in parts:
                view[target] = data[source]
        return out

    def _fetch(self, fmt: ShardFormat, fs, root: str, by_shard: dict, populate: bool) -> dict:
        """``(shard, chunk) -> (encoded bytes or None when empty, where)`` for every chunk asked for."""
        fetched = {}
        local = self.location.is_local
        wanted = []  # remote: (shard, chunk, path, start, end)
        for shard, chunks in by_shard.items():
            key = self.shard_key(shard)
            where = f"store {self.url}: {key}"
            path = f"{root}/{key}"
            try:
                if local and not populate:
                    blob, index = self._mapped(fmt, path, where)
                elif local:
                    blob = map_local(path, populate=True)
                    if blob is None:
                        raise FileNotFoundError(path)
                    blob = np.frombuffer(blob, dtype=np.uint8)
                    index = fmt.index_of(blob, where=where)
                else:
                    blob = None
                    index = fmt.read_index(_remote(fs, path, -fmt.index_bytes, None), where=where)
                limit = None if blob is None else len(blob) - fmt.index_bytes
                for chunk in chunks:
                    offset, size = (int(v) for v in index[chunk])
                    if offset == int(EMPTY):
                        fetched[shard, chunk] = None, where
                    elif limit is not None:
                        if offset + size > limit:
                            raise MuzarrError(
                                f"{where}: chunk {','.join(map(str, chunk))} lies outside the shard's data (a damaged "
                                "or truncated file)"
                            )
                        fetched[shard, chunk] = blob[offset : offset + size], where
                    else:
                        wanted.append((shard, chunk, path, offset, offset + size, where))
            except FileNotFoundError:
                raise MuzarrError(f"store {self.url}: shard {key} is missing: run `pipe verify {self.url}`") from None
            except MuzarrError as err:
                raise MuzarrError(f"{err}: run `pipe verify {self.url}`") from None
        if wanted:
            blobs = fs.cat_ranges([w[2] for w in wanted], [w[3] for w in wanted], [w[4] for w in wanted], on_error="return")
            for (shard, chunk, _, start, end, where), blob in zip(wanted, blobs):
                if isinstance(blob, BaseException) or len(blob) != end - start:
                    raise MuzarrError(
                        f"{where}: chunk {','.join(map(str, chunk))} cannot be read (a damaged or truncated file): "
                        f"run `pipe verify {self.url}`"
                    )
                fetched[shard, chunk] = blob, where
        return fetched

    def _mapped(self, fmt: ShardFormat, path: str, where: str) -> tuple[np.ndarray, np.ndarray]:
        """``(bytes, index)`` of the local shard at ``path``, mapped once and kept (the
        :data:`MAPPED_SHARDS` last used).

        Each first touch of a page of a mapping is a page fault, even with the page cached: about
        half the cost of reading a crop's chunks when a shard is mapped anew for every read. A
        kept mapping faults each page once in its life, so later epochs read without faults.
        The pages stay the page cache's (counted in RSS, reclaimable). A shard replaced since
        (muzarr renames a new file over it) is still read as mapped: :meth:`close` forgets them.
        """
        hit = self._maps.get(path)
        if hit is not None:
            self._maps.move_to_end(path)
            return hit
        blob = map_local(path, populate=False)
        if blob is None:
            raise FileNotFoundError(path)
        blob = np.frombuffer(blob, dtype=np.uint8)
        hit = self._maps[path] = blob, fmt.index_of(blob, where=where)
        if len(self._maps) > MAPPED_SHARDS:
            self._maps.popitem(last=False)
        return hit

    def _zarr(self, array: zarr.Array, region: tuple) -> np.ndarray:
        try:
            with zarr_reads(self.url, self.name):
                return np.asarray(array[tuple(slice(lo, hi) for lo, hi in region)])
        except (ValueError, OSError, RuntimeError) as err:
            shard = region[0][0] // self.rows_per_shard
            raise MuzarrError(
                f"store {self.url}: {self.shard_key(shard)} cannot be read ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:100]}): run `pipe verify {self.url}`"
            ) from None


def _whole_but_time(fmt: ShardFormat, shape: tuple[int, ...]) -> bool:
    """Shards hold whole rows and chunks split them along the last axis (time) only."""
    return fmt.shard_shape[1:] == tuple(shape[1:]) and fmt.chunk_shape[1:-1] == tuple(shape[1:-1])


def _strip(fmt: ShardFormat, encoded) -> np.ndarray:
    """A chunk's payload without checking its crc32c."""
    encoded = np.frombuffer(encoded, dtype=np.uint8)
    return encoded[:-4] if fmt.checksum else encoded


def _remote(fs, path: str, start: int, end: int | None) -> bytes:
    try:
        return fs.cat_file(path, start=start, end=end)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise MuzarrError(f"{path}: cannot be read ({type(err).__name__}: {str(err)[:100]})") from None
