"""The last step of a build: from one valid marker per batch, the tables, the key list and then the
manifest, which is the commit point (readers see the new arrays and clips from there on)."""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pandas as pd

from pipeline.errors import MuzarrError
from pipeline.store.io import (
    KEYS,
    LOCK,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_OK,
    TARGET,
    list_keys,
    remove_key,
    remove_temporaries,
    write_json,
    write_table,
)
from pipeline.store.layout import combine_digests
from pipeline.store.location import Location
from pipeline.store.manifest import STATE_COMPLETE, ArrayInfo, Counts, Manifest, NoteSummary, RowFailure
from pipeline.store.marker import Marker
from pipeline.target import BuildTarget
from pipeline.tracks import remove_left_regions


def finalize(loc: Location, target: BuildTarget, markers: dict[int, Marker]) -> Manifest:
    """Write the tables, the key list and then the final manifest, from a valid marker per batch.

    Refuses to finish from anything less: a batch without a marker vouching for every array
    means the build is not done, whatever the chunks on disk say.
    """
    index = target.index
    missing = [b for b in range(target.n_batches) if b not in markers or set(target.names) - set(markers[b].digests)]
    if missing:
        raise MuzarrError(
            f"{loc}: batch(es) {missing[:10]} have no valid completion marker; run the same command again to finish"
        )
    ordered = [markers[b] for b in range(target.n_batches)]
    status = np.concatenate([np.asarray(m.status, dtype=np.int8) for m in ordered])
    failures = tuple(f for m in ordered for f in m.failures)
    clips = _clips_table(target, ordered, status)
    lost = [x for m in ordered for x in m.array_failures]
    checksum_rows = []
    arrays = {}
    row_of = {c: i for i, c in enumerate(clips["clip_id"])}
    for layout in target.layouts:
        digests = [d for m in ordered for d in m.digests[layout.name]]
        # rows of stored clips this array holds no data for (Store.array_failures)
        failed_here = tuple(RowFailure(row_of[x.clip_id], x.clip_id, x.stage, x.message) for x in lost if x.array == layout.name)
        arrays[layout.name] = ArrayInfo.of(
            layout, checksum=combine_digests(digests), feature=layout.attrs["feature"], failures=failed_here
        )
        checksum_rows.append(pd.DataFrame({"array": layout.name, "row": np.arange(len(digests)), "digest": digests}))

    splits = index.splits_table()
    for name, table in (
        ("labels", index.labels_table()),
        ("splits", splits),
        ("clips", clips),
        ("checksums", pd.concat(checksum_rows, ignore_index=True)),
    ):
        write_table(loc, name, table)

    ok = status == STATUS_OK
    split_counts = {
        scheme: {part: int(((splits[scheme] == part).to_numpy() & ok).sum()) for part in ("train", "valid", "test")}
        for scheme in index.splits.columns
    }
    manifest = target.manifest(
        state=STATE_COMPLETE, arrays=arrays, counts=Counts(int(ok.sum()), int((status == STATUS_FAILED).sum())),
        failures=failures, notes=NoteSummary.of(x for m in ordered for x in m.notes), split_counts=split_counts,
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if target.plan is not None:
        remove_left_regions(loc, target.plan)
    _write_key_list(loc)
    # The manifest is the commit point: readers see the new arrays and clips from here on.
    manifest.write(loc)
    remove_key(loc, TARGET)
    return manifest


def _clips_table(target: BuildTarget, ordered: list[Marker], status: np.ndarray) -> pd.DataFrame:
    """``tables/clips.parquet``: the index's clips with their status, why one failed (a failure of one
    array names that array), what storing noted, and a track's decoded length in seconds."""
    by_id = {f.clip_id: f for m in ordered for f in m.failures}
    clips = target.index.clips.copy()
    clips["clip_id"] = clips["clip_id"].astype(str)
    clips.insert(2, "status", [STATUS_NAMES[int(s)] for s in status])
    clips.insert(3, "stage", [by_id[c].stage if c in by_id else None for c in clips["clip_id"]])
    clips.insert(4, "error", [by_id[c].message if c in by_id else None for c in clips["clip_id"]])
    # A clip that failed one feature only is stored in the others: its error names the array it is missing from.
    missing: dict[str, list[str]] = {}
    for x in (x for m in ordered for x in m.array_failures):
        missing.setdefault(x.clip_id, []).append(f"failed {x.text()}")
    clips["error"] = [
        error if error is not None else ("; ".join(missing[c]) if c in missing else None)
        for c, error in zip(clips["clip_id"], clips["error"])
    ]
    noted: dict[str, list[str]] = {}
    for x in (x for m in ordered for x in m.notes):
        noted.setdefault(x.clip_id, []).append(f"{x.array}: {x.message}")
    clips.insert(5, "note", ["; ".join(noted[c]) if c in noted else None for c in clips["clip_id"]])
    if target.plan is not None:  # a track's length as decoded (its file's header may have said otherwise)
        clips.insert(6, "seconds", np.array([np.nan if v is None else v for m in ordered for v in m.seconds], dtype=np.float64))
    return clips


def _write_key_list(loc: Location) -> None:
    """Record every key of the store, so that it can be copied from where listing is impossible (HTTP)."""
    remove_temporaries(loc)
    keys = list_keys(loc)
    keys = {k: (None if k == "zarr.json" else size) for k, size in keys.items() if k not in (KEYS, TARGET, LOCK)}
    keys["zarr.json"] = None  # rewritten with the final manifest right after this list
    write_json(loc, KEYS, {"keys": dict(sorted(keys.items()))})
