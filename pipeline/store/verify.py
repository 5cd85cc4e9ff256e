"""``pipe verify``: check every byte of a store against its own checksums and tables.

Every clip of every array is read chunk by chunk and its digest compared with
``tables/checksums.parquet``; the per-array checksums, shapes, dtypes and chunking are
compared with the manifest; the tables are checked against each other and against the
status array. Damage is reported where it is: which clip (id and row), chunk, shard file
or table. A chunk that cannot be decoded is damage, never a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import zarr

from pipeline.errors import MuzarrError, printable
from pipeline.store.codecs import zarr_reads
from pipeline.store.io import (
    KEYS,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_PENDING,
    list_keys,
    read_json,
    read_table,
    store_keys,
)
from pipeline.store.layout import CLIP_DIGESTS, TABLES, array_problems, clip_digests, combine_digests, plan_layout
from pipeline.store.location import Location
from pipeline.store.reader import Store, open_store


@dataclass(frozen=True)
class Damage:
    """One problem found: ``kind`` is clip, chunk, shard, array, table or store."""

    kind: str
    where: str
    message: str
    array: str | None = None
    rows: tuple[int, int] | None = None  # [start, stop) of the clips concerned

    def line(self) -> str:
        # clip ids come from the store (a user's CSV): a newline in one must not break the report's lines
        return f"damaged {self.kind:<6} {printable(self.where)}: {printable(self.message)}"


@dataclass
class VerifyReport:
    """The damage found in a store, and how much was checked."""

    url: str
    damage: list[Damage] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    repair_note: str | None = None  # what a repair cannot know (the recorded source folder is gone)

    @property
    def ok(self) -> bool:
        return not self.damage

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        c = self.checked
        scope = (
            f"{c.get('arrays', 0)} arrays x {c.get('clips', 0)} clips ({c.get('chunks', 0)} chunks, "
            f"{c.get('shards', 0)} shard files), status, {c.get('tables', 0)} tables checked"
        )
        if self.ok:
            return f"{self.url}: clean: {scope}"
        kinds: dict[str, int] = {}
        for d in self.damage:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        detail = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in kinds.items())
        return f"{self.url}: DAMAGED: {len(self.damage)} problems ({detail}); {scope}"

    def lines(self, *, repair: str | None = None) -> list[str]:
        """What ``pipe verify`` prints: the damage, the summary and (``repair``: the command that repairs the
        store, :func:`pipeline.commands.repair_command`) how to repair it."""
        repair = [f"repair: {repair}"] if repair and not self.ok else []
        if repair and self.repair_note:
            repair.append(f"note: {self.repair_note}")
        return [d.line() for d in self.damage] + [self.summary()] + repair


def verify_store(url: str | Location | Store, *, storage_options: dict | None = None) -> VerifyReport:
    """Check the store at ``url`` (or the store opened); a store that cannot be opened at all raises
    :class:`MuzarrError`."""
    store = url if isinstance(url, Store) else open_store(url, storage_options=storage_options)
    report = VerifyReport(url=store.url, repair_note=_missing_source(store))
    try:
        # The configuration loads every feature module (scipy): before any chunk is read, since under an
        # address-space cap there is no room left for it afterwards (the shape checks need it).
        store.config()
    except MuzarrError:
        pass  # a configuration this muzarr does not validate: the checks that need it say so
    found = report.damage.append
    if not store.complete:
        found(Damage("store", "manifest", f"state is {store.manifest.state!r}, not complete: finish it with `pipe build`"))
    n = store.n_clips
    tables = _check_tables(store, found)
    report.checked["tables"] = len(TABLES)
    ids = _clip_ids(tables)
    if ids is None:
        # Nothing but the manifest vouches for n_clips: reading the contents would allocate from it.
        found(Damage("store", "manifest", f"n_clips {n} is confirmed by no table (clips, labels, splits): contents not checked"))
    status = _check_status(store, tables, ids, found) if ids is not None else None
    expected = _expected_digests(store, tables.get("checksums"), found) if ids is not None else {}
    report.checked.update(arrays=len(store.arrays), clips=n if ids is not None else 0, chunks=0, shards=0)
    for name in store.arrays:
        _check_array(store, name, expected.get(name), ids, report)
    if store.complete:
        _check_key_list(store, found)
    if status is not None:
        counts = store.manifest.counts
        actual = {"ok": int((status == STATUS_OK).sum()), "failed": int((status == 2).sum())}
        if counts is not None and counts.to_dict() != actual:
            found(Damage("store", "manifest", f"counts {counts.to_dict()} disagree with the status array {actual}"))
    return report


def _check_key_list(store: Store, found, *, shown: int = 20) -> None:
    """``_muzarr/keys.json`` (what copies take) lists plain keys, each a file of the store of its listed size."""
    if read_json(store.location, KEYS) is None:
        found(Damage("store", "key list", f"{KEYS} is missing or not JSON: `pipe build` writes it when it finishes"))
        return
    try:
        listed = store_keys(store.location, limit=store.max_keys)
    except MuzarrError as err:
        found(Damage("store", "key list", str(err)))
        return
    if store.location.is_http:
        return  # nothing to list the files with; the arrays and tables were checked by name
    files = list_keys(store.location)
    wrong = [
        (key, size, files.get(key)) for key, size in listed.items()
        if key not in ("zarr.json", KEYS) and (key not in files or (size is not None and files[key] != size))
    ]
    for key, size, actual in wrong[:shown]:
        held = "no such file" if actual is None else f"{actual} bytes"
        found(Damage("store", "key list", f"{key} is listed with {size} bytes, the store holds {held}"))
    if len(wrong) > shown:
        found(Damage("store", "key list", f"... and {len(wrong) - shown} more listed keys that disagree with the files"))


def _missing_source(store: Store) -> str | None:
    """A line saying the folder the store was built from is gone (a repair rereads its audio); None when it
    is there, is a URL, or is made again by its recipe (the demo's synthetic clips)."""
    source = store.source
    info = store.manifest.index_info or {}
    if source is None or "://" in source or info.get("synthetic") or os.path.exists(source):
        return None
    return (f"the store's source folder {source} no longer exists: give --source the folder that holds "
            "its audio now")


def _clip_ids(tables: dict[str, pd.DataFrame]) -> list[str] | None:
    """The clip ids of the first table that has them (tables are only kept with a row per clip)."""
    for name in ("clips", "labels", "splits"):
        table = tables.get(name)
        if table is not None and "clip_id" in table.columns:
            return table["clip_id"].astype(str).tolist()
    return None


def _check_tables(store: Store, found) -> dict[str, pd.DataFrame]:
    """Read every table; check row counts and that they list the same clips in the same order."""
    tables = {}
    n = store.n_clips
    for name in TABLES:
        # Row counts are checked in the file's footer before any data is read.
        rows = n * len(store.arrays) if name == "checksums" else n
        try:
            tables[name] = read_table(store.location, name, rows=rows)
        except FileNotFoundError:
            found(Damage("table", name, f"tables/{name}.parquet is missing"))
        except MuzarrError as err:
            found(Damage("table", name, str(err).split(": malformed store: ", 1)[-1]))
        except Exception as err:  # noqa: BLE001 - a damaged Parquet file is damage to report
            found(Damage("table", name, f"tables/{name}.parquet cannot be read ({_why(err)})"))
    reference = None
    for name in ("clips", "labels", "splits"):
        table = tables.get(name)
        if table is None:
            continue
        if "clip_id" not in table.columns:
            found(Damage("table", name, "has no clip_id column"))
            tables.pop(name)
            continue
        ids = table["clip_id"].astype(str).tolist()
        if reference is None:
            reference = (name, ids)
        elif ids != reference[1]:
            row = next(i for i, (a, b) in enumerate(zip(ids, reference[1])) if a != b)
            found(Damage("table", name, f"row {row} is clip {ids[row]!r} but {reference[0]} has {reference[1][row]!r}"))
    labels = tables.get("labels")
    if labels is not None and store.task == "multilabel":
        missing = [c for c in store.classes if c not in labels.columns]
        if missing:
            found(Damage("table", "labels", f"has no column for class(es) {missing[:5]}"))
    elif labels is not None and "label_index" not in labels.columns:
        found(Damage("table", "labels", "has no label_index column"))
    splits = tables.get("splits")
    if splits is not None:
        schemes = store.split_schemes
        missing = [s for s in schemes if s not in splits.columns]
        if missing:
            found(Damage("table", "splits", f"has no column for split scheme(s) {missing}"))
    return tables


def _check_status(store: Store, tables, ids: list[str], found) -> np.ndarray | None:
    """The status array decodes, has no pending clip in a complete store, and agrees with clips.parquet."""
    array = None
    try:
        array = store._open_array("status")  # refuses a non-numeric dtype, a codec not allowed, an absurd chunk
        if array.shape != (store.n_clips,):
            found(Damage("array", "status", f"shape {array.shape}, the manifest has {store.n_clips} clips", "status"))
            return None
        with zarr_reads(store.url, "status", explain=False):
            status = array[:]
    except Exception as err:  # noqa: BLE001 - any decoding failure is damage to report
        whole = f"cannot be read ({_why(err)})"
        step = array.chunks[0] if isinstance(array, zarr.Array) and ids is not None else 0
        for start in range(0, store.n_clips, step) if step else ():  # which chunks: each read alone
            try:
                with zarr_reads(store.url, "status", explain=False):
                    array[start : start + step]
            except Exception as chunk_err:  # noqa: BLE001
                found(Damage("chunk", f"status chunk {start // step}", f"cannot be decoded ({_why(chunk_err)}; "
                             f"{_rows(ids, start, min(start + step, store.n_clips))})", "status", (start, start + step)))  # fmt: skip
                whole = None
        if whole:
            found(Damage("array", "status", whole, "status"))
        return None
    if store.complete:
        for row in np.flatnonzero(status == STATUS_PENDING)[:50]:
            found(Damage("clip", f"{ids[row]} (row {row})", "status is pending in a complete store", "status", (row, row + 1)))
    clips = tables.get("clips")
    if clips is not None and "status" in clips.columns and len(clips) == len(status):
        names = np.array([STATUS_NAMES.get(int(s), str(s)) for s in status], dtype=object)
        for row in np.flatnonzero(clips["status"].astype(str).to_numpy() != names)[:50]:
            found(Damage(
                "clip", f"{ids[row]} (row {row})",
                f"clips.parquet says {clips['status'].iloc[row]!r}, the status array says {names[row]!r}", "status", (row, row + 1),
            ))
    return status


def _expected_digests(store: Store, checksums: pd.DataFrame | None, found) -> dict[str, list[str]]:
    """Per array, the clip digests of the checksums table (where it agrees with the manifest)."""
    expected = {}
    if checksums is None:
        return expected
    if not {"array", "row", "digest"} <= set(checksums.columns):
        found(Damage("table", "checksums", "lacks the array, row and digest columns"))
        return expected
    n = store.n_clips
    for name, info in store.arrays.items():
        rows = checksums[checksums["array"] == name].sort_values("row")
        if rows["row"].tolist() != list(range(n)):
            found(Damage("table", "checksums", f"does not hold one digest per clip for {name} ({len(rows)} rows for {n} clips)"))
            continue
        digests = rows["digest"].astype(str).tolist()
        if combine_digests(digests) != info.checksum:
            found(Damage("table", "checksums", f"digests of {name} do not combine to the manifest's checksum"))
            continue
        expected[name] = digests
    return expected


def _check_array(store: Store, name: str, expected: list[str] | None, ids: list[str] | None, report: VerifyReport) -> None:
    """The array's metadata against the manifest, then (with ``ids``, the confirmed clips) every chunk."""
    found = report.damage.append
    array, problems = array_damage(store, name)
    algorithm = store.digest_algorithm
    if algorithm not in CLIP_DIGESTS:
        problems.append(f"the manifest's clip digest {algorithm!r} is unknown (known: {', '.join(CLIP_DIGESTS)})")
    n = store.n_clips
    if problems:
        found(Damage("array", name, "; ".join(problems), name))
        return
    if ids is None:
        return
    if store.arrays[name].extents is not None:
        _check_track_array(store, name, array, expected, ids, report)
        return
    fs, root = store.location.fs, store.location.root
    per_shard, per_chunk = array.shards[0], array.chunks[0]
    actual_digests: list[str | None] = [None] * n
    for shard in range(-(-n // per_shard)):
        start, stop = shard * per_shard, min(n, (shard + 1) * per_shard)
        key = f"{name}/{array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))}"
        report.checked["shards"] += 1
        try:
            exists = fs.exists(f"{root}/{key}")
        except Exception as err:  # noqa: BLE001
            exists, why = False, _why(err)
        else:
            why = "the file is missing"
        if not exists:
            found(Damage("shard", f"{name} shard {shard}", f"{why} ({key}; {_rows(ids, start, stop)})", name, (start, stop)))
            continue
        for chunk_start in range(start, stop, per_chunk):
            chunk_stop = min(stop, chunk_start + per_chunk)
            report.checked["chunks"] += 1
            try:
                data = array[chunk_start:chunk_stop]
            except Exception as err:  # noqa: BLE001 - a damaged chunk or shard index fails to decode
                found(Damage(
                    "chunk", f"{name} chunk {chunk_start // per_chunk}",
                    f"cannot be decoded ({_why(err)}; {_rows(ids, chunk_start, chunk_stop)})", name, (chunk_start, chunk_stop),
                ))
                continue
            actual_digests[chunk_start:chunk_stop] = clip_digests(data, algorithm=algorithm)
    if expected is not None:
        for row, (have, want) in enumerate(zip(actual_digests, expected)):
            if have is not None and have != want:
                found(Damage("clip", f"{ids[row]} (row {row}) in {name}", "content differs from its digest in tables/checksums.parquet", name, (row, row + 1)))
    elif None not in actual_digests and combine_digests(actual_digests) != store.arrays[name].checksum:
        found(Damage("array", name, "content differs from the manifest's checksum (no per-clip digests to say where)", name))


def _check_track_array(store: Store, name: str, array: zarr.Array, expected: list[str] | None, ids: list[str], report) -> None:
    """A track store's time array, batch by batch: every shard file of the batch's region (from
    ``_muzarr/tracks.json``), every clip's extent inside that region and clear of the others, its content
    against its digest, and zeros in the rest of the region.

    The extents are read through their own array (checked on its own, by its digests): extents that
    cannot be read leave this array unchecked beyond its shard files.
    """
    from pipeline.tracks import stored_regions

    found = report.damage.append
    n, shard, chunk, total = store.n_clips, array.shards[-1], array.chunks[-1], array.shape[-1]
    batch_clips = store.manifest.batch_clips
    n_batches = -(-n // batch_clips)
    regions = stored_regions(store.location, name, shard=shard, length=total, n_batches=n_batches)
    if regions is None:
        found(Damage(
            "store", "tracks", f"_muzarr/tracks.json is missing or does not give whole-shard regions of {name} inside "
            "the array for every batch: a repair plans them again",
        ))
        regions = [(k * shard, shard) for k in range(total // shard)] if n_batches else []  # every shard, below
    fs, root = store.location.fs, store.location.root
    for k in sorted({k for s, z in regions for k in range(s // shard, (s + z) // shard)}):
        key = f"{name}/{array.metadata.encode_chunk_key((0,) * (array.ndim - 1) + (k,))}"
        report.checked["shards"] += 1
        try:
            exists, why_missing = fs.exists(f"{root}/{key}"), "the file is missing"
        except Exception as err:  # noqa: BLE001
            exists, why_missing = False, _why(err)
        if not exists:
            b = next((b for b, (s, z) in enumerate(regions) if s <= k * shard < s + z), None)
            rows = (b * batch_clips, min(n, (b + 1) * batch_clips)) if b is not None and b < n_batches else None
            found(Damage("shard", f"{name} shard {k}", f"{why_missing} ({key}" + (f"; {_rows(ids, *rows)})" if rows else ")"), name, rows))
    report.checked["chunks"] += -(-total // chunk)
    try:
        extents = store.extents(name)
    except Exception as err:  # noqa: BLE001 - damaged extents are reported where they are
        found(Damage("array", name, f"its extents cannot be read ({_why(err)}): its clips were not checked", name))
        return
    if len(regions) != n_batches:
        return  # no regions to hold the clips to: the shard files were checked
    algorithm = store.digest_algorithm
    for b, (lo, size) in enumerate(regions):
        rows = range(b * batch_clips, min(n, (b + 1) * batch_clips))
        end = lo
        for row in sorted(rows, key=lambda r: (int(extents[r, 0]), r)):
            start, length = (int(v) for v in extents[row])
            if length and (start < end or start + length > lo + size):
                why = "overlaps another track" if start < end else f"lies outside its batch's region [{lo}, {lo + size})"
                found(Damage("clip", f"{ids[row]} (row {row}) in {name}", f"its extent [{start}, {start + length}) {why}", name, (row, row + 1)))
                continue
            if not length:
                continue
            _check_zeros(array, name, end, start, ids, (rows.start, rows.stop), found)
            end = start + length
            try:
                data = array[..., start:end]
            except Exception as err:  # noqa: BLE001 - a damaged chunk or shard index fails to decode
                found(Damage("chunk", f"{name} [{start}, {end})", f"cannot be decoded ({_why(err)}; {_rows(ids, row, row + 1)})", name, (row, row + 1)))
                continue
            if expected is not None and clip_digests(data[None], algorithm=algorithm)[0] != expected[row]:
                found(Damage("clip", f"{ids[row]} (row {row}) in {name}", "content differs from its digest in tables/checksums.parquet", name, (row, row + 1)))
        _check_zeros(array, name, end, lo + size, ids, (rows.start, rows.stop), found)


def _check_zeros(array: zarr.Array, name: str, start: int, stop: int, ids: list[str], rows: tuple[int, int], found) -> None:
    if stop <= start:
        return
    try:
        nonzero = np.count_nonzero(array[..., start:stop])
    except Exception as err:  # noqa: BLE001
        found(Damage("chunk", f"{name} [{start}, {stop})", f"cannot be decoded ({_why(err)}; {_rows(ids, *rows)})", name, rows))
        return
    if nonzero:
        found(Damage("shard", f"{name} [{start}, {stop})", f"{nonzero} non-zero values in a batch's padding ({_rows(ids, *rows)})", name, rows))


def array_damage(store: Store, name: str) -> tuple[zarr.Array | None, list[str]]:
    """Feature array ``name`` and what is wrong with its metadata (it cannot be opened, a dtype or
    codec is not allowed, its shape, dtype, chunks or shards are not the manifest's); no data is read."""
    info = store.arrays[name]
    try:
        array = store.node(name)
    except KeyError:
        return None, [f"cannot be opened ({name}/zarr.json is missing)"]
    except Exception as err:  # noqa: BLE001 - unreadable metadata is damage to report
        return None, [f"cannot be opened ({_why(err)})"]
    if not isinstance(array, zarr.Array):
        return None, ["cannot be opened (it is a group, not an array)"]
    problems = array_problems(array)
    for key, actual, wanted in (
        ("shape", array.shape, info.shape), ("dtype", str(array.dtype), info.dtype), ("chunks", array.chunks, info.chunks),
        ("shards", array.shards, info.shards),
    ):
        if actual != wanted:
            problems.append(f"{key} {actual} differs from the manifest's {wanted}")
    implied = _implied_shapes(store).get(name)
    if implied is not None and not problems:
        timed = info.extents is not None
        fixed = slice(0, -1) if timed else slice(1, None)  # the axis that grows: time in a track store
        if tuple(array.shape[fixed]) != tuple(implied[fixed]):
            problems.append(
                f"shape {array.shape} is not what the store's own configuration gives ({', '.join(map(str, implied[fixed]))} "
                f"{'before the time axis' if timed else 'per clip'})"
            )
    return array, problems


def _implied_shapes(store: Store) -> dict[str, tuple[int, ...]]:
    """Each array's shape as the store's configuration plans it (time arrays of a track store: their other axes);
    empty when the configuration does not validate (reported elsewhere)."""
    cached = store.__dict__.get("_implied_shapes")
    if cached is None:
        try:
            cached = {layout.name: tuple(layout.shape) for layout in plan_layout(store.config(), store.n_clips)}
        except (MuzarrError, KeyError, TypeError, ValueError):
            cached = {}
        store.__dict__["_implied_shapes"] = cached
    return cached


def _rows(ids: list[str], start: int, stop: int) -> str:
    if stop - start == 1:
        return f"clip {ids[start]}, row {start}"
    return f"clips {ids[start]}..{ids[stop - 1]}, rows {start}-{stop - 1}"


def _why(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
