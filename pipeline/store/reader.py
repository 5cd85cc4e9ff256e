"""The one public reader of a store: :class:`Store` (manifest, tables, status, labels, splits, whole
clips), and the checks that a folder is a store of this layout.

Every file muzarr writes itself (markers, tables, the manifest's ``zarr.json``) appears whole
or not at all: written to a temporary name and renamed on a local disk, one PUT on an object
store. Nothing in a store is code: JSON, Parquet and Zarr arrays with numeric dtypes and an
allow-list of codecs only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cached_property

import numpy as np
import pandas as pd
import zarr

from pipeline.errors import MuzarrError
from pipeline.store.codecs import zarr_reads
from pipeline.store.io import (
    FRESH_COPY,
    LOCK,
    MAX_JSON_BYTES,
    STATUS_NAMES,
    STATUS_OK,
    TARGET,
    check_contained,
    check_metadata_size,
    check_table_size,
    read_json,
    read_table,
)
from pipeline.store.layout import TABLES, array_problems, check_layout, clip_digests, combine_digests
from pipeline.store.location import Location, location
from pipeline.store.manifest import ArrayInfo, Manifest, RowFailure, damaged_manifest
from pipeline.store.shards import ShardFormat, shard_path


class Store:
    """A muzarr store opened for reading: the only way other code reads one.

    A clip whose status is not ``ok`` is never returned as data: :meth:`read` raises for
    it, and :meth:`split` lists only ``ok`` clips.
    """

    def __init__(self, url: str | Location, *, storage_options: dict | None = None) -> None:
        self.location = loc = location(url, storage_options)
        self.url = url = loc.url
        check_contained(loc)
        check_metadata_size(loc, "zarr.json")
        try:
            self.group = loc.open_group(mode="r")
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError, NotADirectoryError) as err:
            self._refuse_damaged()
            raise MuzarrError(f"no muzarr store at {url} ({type(err).__name__}): build one with `pipe build`") from None
        except OSError as err:
            raise MuzarrError(f"cannot read {url}: {type(err).__name__}: {err}") from None
        manifest = self.group.attrs.get("muzarr")
        if not isinstance(manifest, dict):
            self._refuse_damaged()
            raise MuzarrError(f"{url} is a Zarr group but not a muzarr store (no 'muzarr' manifest attribute)")
        self.manifest = Manifest.from_dict(manifest, url=url)
        status = read_json(loc, "status/zarr.json")
        shape = status.get("shape") if isinstance(status, dict) else None
        # Unreadable status metadata is damage for `pipe verify` to report; a readable one must hold every clip
        # (a grow makes it longer than n_clips until the manifest follows, never shorter).
        if isinstance(shape, list) and not (len(shape) == 1 and isinstance(shape[0], int) and shape[0] >= self.n_clips):
            raise MuzarrError(
                f"{url}: malformed store: the manifest says {self.n_clips} clips but status/zarr.json has shape "
                f"{shape}: {FRESH_COPY}"
            )

    def _refuse_damaged(self) -> None:
        """A muzarr folder whose ``zarr.json`` is not a manifest is a damaged store, not "no store"."""
        reason = manifest_damage(self.location)
        if reason is None:
            return
        building = read_json(self.location, TARGET)  # the config of a build under way
        config = building.get("config") if isinstance(building, dict) else None
        raise damaged_manifest(self.url, reason, config=config if isinstance(config, dict) else None)

    def __repr__(self) -> str:
        return f"Store({self.url!r}, dataset={self.dataset!r}, clips={self.n_clips}, arrays={list(self.arrays)})"

    @property
    def dataset(self) -> str:
        return self.manifest.dataset

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    @property
    def n_clips(self) -> int:
        return self.manifest.n_clips

    @property
    def n_subclips(self) -> int | None:
        return self.manifest.n_subclips

    @property
    def split_schemes(self) -> tuple[str, ...]:
        """The split schemes the store was built with (``tables/splits.parquet`` has a column for each)."""
        return self.manifest.split_schemes

    @property
    def arrays(self) -> dict[str, ArrayInfo]:
        """Feature arrays by name: shape, dtype, chunks, shards, checksum, the feature's parameters."""
        return dict(self.manifest.arrays)

    @property
    def source(self) -> str | None:
        """Where the store's audio came from (``pipe build --source``, an absolute folder or a URL without
        credentials); None for a store built before muzarr recorded it, or one that cannot be printed on one line."""
        source = self.manifest.source
        return source if source and source.isprintable() else None

    def config(self):
        from pipeline.config import BuildConfig

        return BuildConfig.from_dict(dict(self.manifest.config), where=f"{self.url} manifest")

    def feature(self, name: str):
        """The :class:`~pipeline.features.base.Feature` that wrote array ``name``."""
        from pipeline.features import feature_from_dict, load_all

        load_all()
        return feature_from_dict(self.array_info(name).feature, where=f"{self.url} manifest")

    def array_info(self, name: str) -> ArrayInfo:
        """What the manifest says of feature array ``name``; an array the store does not hold is an error."""
        if name not in self.manifest.arrays:
            raise MuzarrError(f"store {self.url} has no array {name!r}; arrays: {', '.join(self.manifest.arrays)}")
        return self.manifest.arrays[name]

    def array(self, name: str) -> zarr.Array:
        """The raw Zarr array (for chunk-aware readers); prefer :meth:`read` elsewhere.

        Only its first :attr:`n_clips` rows belong to the store: while a build grows the
        store, the array can already be longer.
        """
        self.array_info(name)
        return self._open_array(name)

    def node(self, name: str):
        """``self.group[name]``, its ``zarr.json`` first checked to be of a size muzarr writes."""
        check_metadata_size(self.location, f"{name}/zarr.json")
        return self.group[name]

    def _open_array(self, name: str) -> zarr.Array:
        try:
            array = self.node(name)
        except (KeyError, ValueError, zarr.errors.BaseZarrError) as err:
            raise MuzarrError(f"store {self.url}: array {name!r} cannot be opened ({type(err).__name__}): run `pipe verify`") from None
        if not isinstance(array, zarr.Array):
            raise MuzarrError(f"store {self.url}: {name!r} is a group, not an array")
        problems = array_problems(array)
        if problems:
            raise MuzarrError(f"store {self.url}: refusing to read array {name!r}: {'; '.join(problems)}")
        opened = {
            "shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks),
            "shards": list(array.shards) if array.shards else None,
        }
        where = f"{self.url}: malformed store: {name}/zarr.json"
        # During a grow an array is longer than n_clips until the manifest follows: never shorter.
        info = None if name == "status" else self.manifest.arrays[name]
        wanted = {"shape": [self.n_clips], "dtype": "int8"} if info is None else info.to_dict()
        timed = info is not None and info.extents is not None
        if timed:
            opened["extents"] = info.extents
        check_layout(name, opened, n_clips=array.shape[0], where=where)
        grows, fixed = (-1, slice(0, -1)) if timed else (0, slice(1, None))
        fits = (
            len(opened["shape"]) == len(wanted["shape"]) and opened["shape"][grows] >= wanted["shape"][grows]
            and opened["shape"][fixed] == list(wanted["shape"][fixed]) and opened["dtype"] == wanted["dtype"]
            and (name == "status" or (opened["chunks"], opened["shards"]) == (wanted["chunks"], wanted["shards"]))
        )
        if not fits:
            described = ", ".join(f"{key} {wanted.get(key)}" for key in opened if key in wanted)
            raise MuzarrError(
                f"{where} has shape {opened['shape']}, dtype {opened['dtype']}, chunks {opened['chunks']}, "
                f"shards {opened['shards']}; the manifest has {described}: {FRESH_COPY}"
            )
        return array

    def _table_rows(self, name: str) -> int:
        return self.n_clips * len(self.arrays) if name == "checksums" else self.n_clips

    def check_tables(self) -> None:
        """Every table there is holds the rows the manifest implies (footers only: no data read)."""
        fs, root = self.location.fs, self.location.root
        for name in TABLES:
            try:
                check_table_size(fs, f"{root}/tables/{name}.parquet", self._table_rows(name),
                                 where=f"{self.url}: malformed store: tables/{name}.parquet")  # fmt: skip
            except FileNotFoundError:
                continue  # a missing table is shown (and verified) in its place
            except (OSError, ValueError) as err:
                raise MuzarrError(
                    f"store {self.url}: tables/{name}.parquet cannot be read ({type(err).__name__}): run `pipe verify`"
                ) from None

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise MuzarrError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        rows = self._table_rows(name)
        try:
            return read_table(self.location, name, rows=rows)
        except FileNotFoundError:
            raise MuzarrError(f"store {self.url} is missing tables/{name}.parquet: run `pipe verify`") from None
        except (OSError, ValueError) as err:
            raise MuzarrError(f"store {self.url}: tables/{name}.parquet cannot be read ({type(err).__name__}): run `pipe verify`") from None

    @cached_property
    def status(self) -> np.ndarray:
        """int8 status per clip (0 pending, 1 ok, 2 failed)."""
        # n_clips is the manifest's word: the clips table (a byte or more per row) confirms it before it is allocated.
        self.clips  # noqa: B018
        array = self._open_array("status")
        with zarr_reads(self.url, "status"):
            return array[: self.n_clips]

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

    def stored_digests(self, name: str) -> np.ndarray:
        """The content digest of every clip of array ``name`` (``tables/checksums.parquet``), by row.

        The digests must combine to the manifest's checksum of the array; a table that does
        not hold one digest per clip, or whose digests disagree with the manifest, is damage.
        Digests use the manifest's ``digest`` algorithm (see :func:`clip_digests`).
        """
        info = self.array_info(name)
        table = self.table("checksums")
        where = f"store {self.url}: tables/checksums.parquet"
        if not {"array", "row", "digest"} <= set(table.columns):
            raise MuzarrError(f"{where} lacks the array, row and digest columns: run `pipe verify {self.url}`")
        rows = table[table["array"] == name].sort_values("row")
        digests = rows["digest"].astype(str).to_numpy(dtype=object)
        if rows["row"].tolist() != list(range(self.n_clips)) or combine_digests(digests) != info.checksum:
            raise MuzarrError(
                f"{where}: the digests of {name} do not match the manifest's checksum: run `pipe verify {self.url}`"
            )
        return digests

    @property
    def max_keys(self) -> int:
        """The most keys this store can have: per batch (at most one per clip) a shard per array, a status
        chunk and a marker; plus metadata and tables. A longer key list was not written by muzarr."""
        shards = sum(info.shape[-1] // info.shards[-1] for info in self.arrays.values() if info.extents is not None)
        return (self.n_clips + 2) * (len(self.arrays) + 2) + shards + 16

    @property
    def is_tracks(self) -> bool:
        """A store of whole tracks (clip mode ``track``): its time arrays concatenate them."""
        return any(info.extents is not None for info in self.arrays.values())

    def extents(self, name: str) -> np.ndarray:
        """int64 ``(n_clips, 2)``: every clip's ``[start, length]`` along the last axis of time array ``name``.

        Read shard by shard, no file more than its chunks can take, each chunk against its crc32c and the
        rows against their digests; the extents must lie inside the array and not overlap. Anything else is
        one :class:`MuzarrError` naming the damage and ``pipe verify``.
        """
        cached = self.__dict__.setdefault("_extents", {})
        if name in cached:
            return cached[name]
        info = self.array_info(name)
        if info.extents is None:
            raise MuzarrError(f"store {self.url}: array {name!r} has one row per clip, not extents")
        extents = self._read_rows(info.extents)
        total = self._open_array(name).shape[-1]
        where = f"store {self.url}: {info.extents}"
        if extents.ndim != 2 or extents.shape[1] != 2:
            raise MuzarrError(f"{where} has shape {extents.shape}, not one [start, length] per clip: run `pipe verify`")
        bad = np.flatnonzero((extents[:, 0] < 0) | (extents[:, 1] < 0) | (extents[:, 0] > total - extents[:, 1]))
        if len(bad):
            raise MuzarrError(f"{where} row {bad[0]} {extents[bad[0]].tolist()} lies outside {name}: run `pipe verify`")
        used = np.flatnonzero(extents[:, 1] > 0)
        order = used[np.argsort(extents[used, 0], kind="stable")]
        overlap = np.flatnonzero(extents[order[1:], 0] < extents[order[:-1]].sum(axis=1))
        if len(overlap):
            a, b = order[overlap[0]], order[overlap[0] + 1]
            raise MuzarrError(f"{where}: rows {a} and {b} overlap ({extents[a].tolist()}, {extents[b].tolist()}): run `pipe verify`")
        extents.flags.writeable = False
        cached[name] = extents
        return extents

    def _read_rows(self, name: str) -> np.ndarray:
        """Every row of a small per-clip array (the extents), whatever the clips' status: each shard file read
        whole but never more than it can hold, every chunk checked, the rows against their digests."""
        array = self._open_array(name)
        fmt = ShardFormat.of(array)
        where = f"store {self.url}: {name}"
        if fmt is None or fmt.shard_shape[1:] != tuple(array.shape[1:]):
            raise MuzarrError(f"{where}: not in the layout muzarr writes ({array.shards}, {array.chunks}): {FRESH_COPY}")
        fs, root, per = self.location.fs, self.location.root, fmt.shard_shape[0]
        out = np.empty((self.n_clips, *array.shape[1:]), dtype=fmt.dtype)
        for k in range(-(-self.n_clips // per)):
            key = shard_path(array, k)
            try:
                blob = fs.cat_file(f"{root}/{key}", start=0, end=fmt.max_bytes + 1)
            except FileNotFoundError:
                raise MuzarrError(f"store {self.url}: shard {key} is missing: run `pipe verify {self.url}`") from None
            except OSError as err:
                raise MuzarrError(f"store {self.url}: {key} cannot be read ({type(err).__name__}): run `pipe verify {self.url}`") from None
            if len(blob) > fmt.max_bytes:
                raise MuzarrError(
                    f"store {self.url}: {key} holds more than the {fmt.max_bytes} bytes its chunks can take (a damaged "
                    f"file): run `pipe verify {self.url}`"
                )
            try:
                data = fmt.decode(blob, where=f"store {self.url}: {key}")
            except MuzarrError as err:
                raise MuzarrError(f"{err}: run `pipe verify {self.url}`") from None
            out[k * per : (k + 1) * per] = data[: min(per, self.n_clips - k * per)]
        wrong = np.flatnonzero(np.array(clip_digests(out, algorithm=self.digest_algorithm), dtype=object) != self.stored_digests(name))
        if len(wrong):
            raise MuzarrError(
                f"store {self.url}: row {wrong[0]} of {name} differs from its digest in tables/checksums.parquet (damaged "
                f"bytes): run `pipe verify {self.url}`"
            )
        return out

    def array_failures(self, name: str) -> dict[int, RowFailure]:
        """Rows of stored (``ok``) clips that array ``name`` holds no data for: the clip failed this
        feature only (its clip id, stage and message, by row). Such a row holds the fill value."""
        return {x.row: x for x in self.array_info(name).failures}

    def check_stored(self, name: str, rows: np.ndarray) -> None:
        """Refuse ``rows`` that are not ``ok``, or that failed array ``name`` (:meth:`array_failures`)."""
        self._check_ok(rows)
        failed = self.array_failures(name)
        bad = [int(r) for r in np.atleast_1d(rows) if int(r) in failed]
        if bad:
            x = failed[bad[0]]
            raise MuzarrError(
                f"clip {x.clip_id!r} (row {bad[0]}) of {self.url} failed {name} at {x.stage} ({x.message}): "
                f"that array has no data for it (`pipe info {self.url}` lists such clips)"
            )

    def track(self, name: str, row: int) -> np.ndarray:
        """The whole track of clip ``row`` in time array ``name`` (``[..., length]``); failed or pending is an error."""
        self.check_stored(name, np.atleast_1d(row))
        start, length = (int(v) for v in self.extents(name)[row])
        array = self._open_array(name)
        with zarr_reads(self.url, name):
            return array[..., start : start + length]

    @property
    def digest_algorithm(self) -> str:
        """The per-clip digest of this store (stores from before the manifest named it used blake2b-128)."""
        return self.manifest.digest_algorithm

    def read(self, name: str, clips: int | slice | Iterable[int]) -> np.ndarray:
        """Data of array ``name`` for the given clip rows; a failed or pending clip is an error."""
        array = self.array(name)
        if self.array_info(name).extents is not None:
            raise MuzarrError(
                f"array {name!r} of {self.url} holds whole tracks of different lengths: read one with Store.track(name, row)"
            )
        rows = np.arange(self.n_clips)[clips] if isinstance(clips, slice) else np.atleast_1d(np.asarray(clips))
        self.check_stored(name, rows)
        with zarr_reads(self.url, name):
            if isinstance(clips, (int, np.integer)):
                return array[int(clips)]
            return array.get_orthogonal_selection((rows,)) if len(rows) else np.empty((0, *array.shape[1:]), array.dtype)


    def _check_ok(self, rows: np.ndarray) -> None:
        status = self.status[rows]
        if (status != STATUS_OK).any():
            bad = rows[status != STATUS_OK][0]
            raise MuzarrError(
                f"clip {self.clips['clip_id'].iloc[bad]!r} (row {bad}) of {self.url} is "
                f"{STATUS_NAMES[int(self.status[bad])]}: it has no data to read"
            )


# Top-level entries that only muzarr writes next to a store's zarr.json.
OWN_ENTRIES = ("_muzarr", "tables", "status")


def manifest_damage(loc: Location) -> str | None:
    """Why the ``zarr.json`` of a folder holding muzarr's own entries is not a store's manifest.

    None when it is one, when there is no ``zarr.json``, or when nothing says the folder is muzarr's.
    """
    fs, root = loc.fs, loc.root
    try:
        if (fs.size(f"{root}/zarr.json") or 0) > MAX_JSON_BYTES:
            return f"larger than the {MAX_JSON_BYTES >> 20} MiB of any manifest muzarr writes"
        raw = fs.cat_file(f"{root}/zarr.json")
        # the writer's lock alone says nothing: a build takes it before it looks at the folder
        if not any(fs.exists(f"{root}/{entry}") for entry in OWN_ENTRIES if entry != "_muzarr") and not (
            fs.exists(f"{root}/_muzarr") and any(p != f"{root}/{LOCK}" for p in fs.find(f"{root}/_muzarr"))
        ):
            return None
    except (OSError, ValueError):  # missing, or unreachable: nothing says it is damaged
        return None
    if not raw.strip():
        return "the file is empty"
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return f"not UTF-8 text: bad byte at offset {err.start}"
    except ValueError as err:
        return f"not JSON: {getattr(err, 'msg', err)} at byte {getattr(err, 'pos', '?')}"
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        return "not Zarr v3 group metadata"
    attributes = meta.get("attributes")
    if not isinstance(attributes, dict) or not isinstance(attributes.get("muzarr"), dict):
        return "it holds no muzarr manifest"
    return None


def open_store(url: str | Location, *, storage_options: dict | None = None) -> Store:
    """Open a muzarr store for reading (local path or any fsspec URL: ``s3://``, ``https://``...)."""
    return Store(url, storage_options=storage_options)
