"""The build: a dataset index and a configuration in, a complete store out, on Dask.

The index is cut into batches of ``batch_clips`` clips; batch ``b`` owns shard ``b`` of
every array, so tasks never write the same shard. A task (:func:`pipeline.batch.run_batch`)
decodes, resamples and computes every feature of its clips, writes its shards and the status
of its clips, and then writes a completion marker. The driver only collects markers and writes the tables and
the manifest, so a killed build restarts where it stopped and ends with the same bytes.

Resuming and growing are the same thing: the driver brings the store's arrays to the
requested layout (:func:`pipeline.store.ensure_arrays`) and asks each batch's marker what
is already done. A marker counts only for its own rows and clips (a digest of the clip
ids) and only for the arrays it lists, so

* a killed build reruns exactly the batches without a valid marker;
* added feature variants are computed for every batch, and only those arrays are written;
* added clips (a larger index whose first rows are the store's clips) run the new batches
  and the one batch whose shard was partial (its rows changed, so its marker no longer
  counts), nothing else.

Until the last step the manifest is left as it was: readers of a complete store keep
seeing its old arrays and clip count while it grows. Any other change of configuration is
refused unless ``overwrite``.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import preflight
from pipeline.batch import run_batch
from pipeline.cluster import as_they_finish, check_scheduler_address, close_client, deferred_interrupt, make_client
from pipeline.config import TASK_AUTO, BuildConfig, build_command, clip_settings, expected_type, recorded_source
from pipeline.datasets import get_recipe
from pipeline.errors import MuzarrError, printable, write_errors, write_failure
from pipeline.index import DatasetIndex
from pipeline.repair import undo_damage
from pipeline.store.io import (
    KEYS,
    LOCK,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_OK,
    TARGET,
    check_contained,
    check_marker,
    check_metadata_size,
    clips_digest,
    folder_listing,
    list_keys,
    read_json,
    read_manifest,
    read_markers,
    read_table,
    remove_key,
    remove_temporaries,
    write_json,
    write_manifest,
    write_table,
)
from pipeline.store.layout import DIGEST, SCHEMA_VERSION, combine_digests, ensure_arrays, failure_text, plan_layout
from pipeline.store.location import Location, is_local, location
from pipeline.store.lock import writer_lock
from pipeline.store.reader import damaged_manifest, manifest_damage, old_layout, open_store
from pipeline.tracks import MAX_REPLANS, TrackPlan, plan_tracks, remove_left_regions, save_plan

VERSIONED = ("muzarr", "numpy", "scipy", "soundfile", "soxr", "librosa", "zarr", "numcodecs", "av", "dask")
# Recipe options that only choose how many clips the index holds: changing one grows the
# store (when the new index starts with the store's clips) instead of being refused.
GROWABLE_OPTIONS = frozenset({"n_clips"})


@dataclass
class BuildReport:
    """What a build did: counts, failures and timing."""

    url: str
    n_clips: int
    n_ok: int
    n_failed: int
    failures: list[dict[str, Any]]
    batches_run: int
    batches_reused: int
    seconds: float
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, dict] = field(default_factory=dict)  # per array: clips whose storage lost something
    unreadable_folders: list[dict] = field(default_factory=list)  # source folders the index could not list

    @property
    def array_failures(self) -> list[dict[str, Any]]:
        """Stored clips that failed one array: ``{"array", "row", "clip_id", "stage", "message"}``."""
        return [{"array": name, **x} for name, info in self.arrays.items() for x in info.get("failures", [])]

    @property
    def exit_code(self) -> int:
        """0: every clip stored in every array; 1: the store is complete but some clips (or source folders,
        or a clip in one array) failed."""
        return 0 if self.n_failed == 0 and not self.unreadable_folders and not self.array_failures else 1


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    import soundfile

    versions["libsndfile"] = soundfile.__libsndfile_version__
    return versions


@dataclass(frozen=True)
class _Target:
    """What the build must end with: a configuration, an index and the arrays they imply."""

    config: BuildConfig
    index: DatasetIndex
    layouts: list
    plan: TrackPlan | None = None  # a track store's regions
    source: str | None = None  # where the audio came from, as the manifest records it (recorded_source)

    @property
    def n(self) -> int:
        return len(self.index)

    @property
    def names(self) -> list[str]:
        return [layout.name for layout in self.layouts]

    @property
    def n_batches(self) -> int:
        return -(-self.n // self.config.batch_clips)

    def rows(self, batch: int) -> range:
        size = self.config.batch_clips
        return range(batch * size, min(self.n, (batch + 1) * size))

    @cached_property
    def clip_ids(self) -> list[str]:
        return self.index.clips["clip_id"].astype(str).tolist()

    def check(self, batch: int, raw) -> dict | None:
        """The marker of ``batch`` if it can be trusted for this target (see :func:`check_marker`)."""
        rows = self.rows(batch)
        ids = self.clip_ids[rows.start : rows.stop]
        marker = check_marker(raw, batch=batch, start=rows.start, stop=rows.stop, clips=clips_digest(ids), names=self.names)
        if marker is None:
            return None
        failed = [ids[i] for i, s in enumerate(marker["status"]) if s == STATUS_FAILED]
        if [f["clip_id"] for f in marker["failures"]] != failed:
            return None
        if self.plan is not None:
            # a batch is done where its tracks are: in the regions this plan gives it, at recorded lengths
            regions, seconds = marker.get("regions"), marker.get("seconds")
            wanted = self.plan.batch_regions(batch)
            if not isinstance(regions, dict) or any(regions.get(n) != r for n, r in wanted.items() if n in marker["digests"]):
                return None
            if not (isinstance(seconds, list) and len(seconds) == len(rows) and all(_seconds(v) for v in seconds)):
                return None
        return marker


def _seconds(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf"))


def _manifest(
    config: BuildConfig, index: DatasetIndex, layouts, *, state: str, source: str | None, extra: dict | None = None
) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "state": state,
        "digest": DIGEST,
        "config": config.to_dict(),
        # outside "config": the same audio in another folder is the same store, byte for byte
        **({"source": source} if source else {}),
        "task": index.task,
        "classes": list(index.classes),
        "n_clips": len(index),
        "n_subclips": config.clip.n_subclips,
        "versions": library_versions(),
        "index_info": index.info,
        "arrays": {layout.name: layout.to_dict() for layout in layouts},
        **(extra or {}),
    }


def _prepare_store(
    loc: Location, target: _Target, *, overwrite: bool, repair: bool = False, echo: Callable[[str], None] | None = None
) -> dict[int, dict]:
    """Create the store, or bring an existing one to ``target``; returns the valid markers.

    Order matters for a kill at any point: ``_muzarr/target.json`` first (it marks the
    folder as ours), then the arrays, then (new stores only) the manifest in state
    ``building``. A folder with the first but no manifest is a creation that was killed:
    no batch ran in it, so it is simply made again. Clearing a folder keeps that file to
    the last, so a kill while clearing leaves a folder still known to be ours.
    """
    config = target.config
    mark = {"config": config.to_dict(), "n_clips": target.n}
    manifest = read_manifest(loc)
    if manifest is not None and not overwrite:
        _check_schema(loc, manifest)
        _check_growable(loc, manifest, target)
        if repair:
            undo_damage(loc, batch_clips=config.batch_clips, n_batches=target.n_batches, echo=echo)
    elif _exists_nonempty(loc):
        if manifest is None and not _is_ours(loc):
            damage = manifest_damage(loc)
            if damage is None:
                # --overwrite replaces a store, never a folder of someone's files
                raise MuzarrError(
                    f"{loc} exists and is not a muzarr store (it holds {folder_listing(loc.fs, loc.root)}): "
                    "choose another --out, or a new folder"
                )
            if not overwrite:
                rebuild = build_command(config, out=loc.url, source=target.source, extra=("--overwrite",))
                raise damaged_manifest(loc.url, damage, rebuild=rebuild)
        write_json(loc, TARGET, mark)
        _remove(loc, keep=TARGET)
        manifest = None
    write_json(loc, TARGET, mark)
    created = ensure_arrays(loc, target.layouts, target.n, config.batch_clips)
    if manifest is None:
        write_manifest(
            loc, _manifest(config, target.index, target.layouts, state="building", source=target.source)
        )
    if "status" in created:
        return {}  # no status to stand on: every batch runs again
    markers = {}
    for batch, raw in read_markers(loc, range(target.n_batches)).items():
        marker = target.check(batch, raw)
        if marker is not None:
            marker["digests"] = {n: d for n, d in marker["digests"].items() if n not in created}
            if marker["digests"]:
                markers[batch] = marker
    return markers


def _check_schema(loc: Location | str, manifest: dict) -> None:
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > SCHEMA_VERSION:
        raise MuzarrError(
            f"{loc} was written with store schema version {version!r}; this muzarr writes {SCHEMA_VERSION}: "
            "upgrade muzarr, or pass --overwrite to rebuild it"
        )
    if version < SCHEMA_VERSION:
        raise old_layout(str(loc), manifest)


def _check_growable(loc: Location, manifest: dict, target: _Target) -> None:
    """Refuse (with the difference) unless ``target`` equals the store or only adds features or clips."""
    open_store(loc)  # its sizes agree with each other and its files
    old = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    new = target.config.to_dict()
    lines = []
    for key in sorted((set(old) | set(new)) - {"features", "options"}):
        a, b = old.get(key), new.get(key)
        if key == "clip" and isinstance(a, dict):  # what a track store does not use cannot differ
            a, b = clip_settings(a), clip_settings(b)
        if a != b:
            lines.append(_config_diff({key: a}, {key: b}))
    lines.extend(_feature_diff(old.get("features"), new["features"]))
    old_options, new_options = old.get("options") or {}, new["options"]
    changed = {k for k in set(old_options) | set(new_options) if old_options.get(k) != new_options.get(k)}
    if changed - GROWABLE_OPTIONS:
        lines.append(
            _config_diff({"options": {k: old_options.get(k) for k in changed}}, {"options": {k: new_options.get(k) for k in changed}})
        )
    if lines:
        raise MuzarrError(
            f"{loc} already holds a store built with a different configuration:\n" + "\n".join(lines) + "\n"
            "choose another --out, or pass --overwrite to rebuild it (only added features and added clips "
            "are built into an existing store)"
        )
    n_old = manifest.get("n_clips")
    if not isinstance(n_old, int) or target.n < n_old:
        raise MuzarrError(
            f"{loc} holds {n_old} clips but the source now gives {target.n}: a store only grows; "
            "pass --overwrite to rebuild it"
        )
    if manifest.get("state") == "complete" and (target.n > n_old or changed):
        try:
            stored = read_table(loc, "clips", rows=n_old)[["clip_id", "path"]]
        except (FileNotFoundError, KeyError, OSError, ValueError):
            raise MuzarrError(f"{loc}: tables/clips.parquet is missing or unreadable: run `pipe verify`") from None
        fresh = target.index.clips[["clip_id", "path"]].head(len(stored)).astype(str).reset_index(drop=True)
        stored = stored.astype(str).reset_index(drop=True)
        differ = np.flatnonzero((stored.to_numpy() != fresh.to_numpy()).any(axis=1)) if len(stored) == len(fresh) else [0]
        if len(stored) != n_old or len(differ):
            row = int(differ[0]) if len(differ) else 0
            raise MuzarrError(
                f"{loc}: the source's clips do not start with the store's (row {row}: store has "
                f"{tuple(stored.iloc[row]) if row < len(stored) else None}, source has "
                f"{tuple(fresh.iloc[row]) if row < len(fresh) else None}): new clips can only be added after the "
                "existing ones; pass --overwrite to rebuild"
            )


def _feature_diff(old: Any, new: list[dict]) -> list[str]:
    """Lines for every stored feature this build would drop or change (added ones are fine)."""
    from pipeline.features.base import feature_from_dict

    lines = []
    old = old if isinstance(old, list) else []
    for spec in old:
        if spec in new:
            continue
        try:
            name = feature_from_dict(spec).name
        except MuzarrError:
            name = repr(spec)
        # The closest feature of the same kind this build asks for shows what was changed.
        candidates = [s for s in new if s not in old and isinstance(spec, dict) and s.get("kind") == spec.get("kind")]
        closest = min(candidates, key=lambda s: sum(s.get(k) != spec.get(k) for k in set(s) | set(spec)), default=None)
        if closest is None:
            lines.append(f"  feature {name}: in the store, not asked for by this build")
        else:
            changed = feature_from_dict(closest).name
            lines.append(f"  feature {name}: changed by this build" + ("" if changed == name else f" to {changed}") + ":")
            lines.append(_config_diff(spec, closest, prefix="    "))
    return lines


def _config_diff(old: dict, new: dict, prefix: str = "") -> str:
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _config_diff(a, b, f"{prefix}{key}.")
            lines.extend([inner] if inner else [])
        elif a != b:
            lines.append(f"  {prefix}{key}: store has {a!r}, this build asks for {b!r}")
    return "\n".join(lines)


def _exists_nonempty(loc: Location) -> bool:
    fs, path = loc.fs, loc.root
    if not fs.exists(path):
        return False
    return not fs.isdir(path) or any(p != f"{path}/{LOCK}" for p in fs.find(path))  # our own lock is not content


def _is_ours(loc: Location) -> bool:
    """A folder muzarr started and did not finish making: it has our mark, or nothing but ``_muzarr/``."""
    if read_json(loc, TARGET) is not None:
        return True
    fs, path = loc.fs, loc.root
    if not fs.isdir(path):
        return False
    return all(p[len(path) + 1 :].startswith("_muzarr/") for p in fs.find(path))


def _store_entries(files: list[str], path: str) -> set[str]:
    """Top-level names of the folder that muzarr writes: ``zarr.json``, ``_muzarr/``, ``tables/``,
    ``status`` and every feature's array or group (``waveform``, ``logmel/``, ``tabular/``: by
    name, since a clearing cut short leaves chunks without their ``zarr.json``), plus any other
    Zarr node. Anything else is someone else's. ``files`` are the folder's, as ``fs.find`` lists them."""
    from pipeline.features import load_all

    entries = {"zarr.json", "_muzarr", "tables", "status"} | {cls.group or cls.kind for cls in load_all().values()}
    for p in files:
        relative = p[len(path) + 1 :]
        if relative.endswith("/zarr.json"):
            entries.add(relative.split("/", 1)[0])
    return entries


def _remove(loc: Location, *, keep: str | None = None) -> None:
    """Delete what muzarr wrote at the store (other files stay); ``keep`` (a key) goes last, so a
    kill here leaves it behind."""
    fs, path = loc.fs, loc.root
    if not fs.exists(path):
        return
    if not fs.isdir(path):
        fs.rm_file(path)
        return
    kept = f"{path}/{keep}" if keep else None
    files = fs.find(path)
    ours = _store_entries(files, path)
    others = [p for p in files if p not in (kept, f"{path}/{LOCK}") and p[len(path) + 1 :].split("/", 1)[0] in ours]
    if others:
        fs.rm(others)
    if kept is None and not fs.find(path):
        fs.rm(path, recursive=True)
    elif is_local(fs):
        for folder, _, _ in sorted(os.walk(path), reverse=True):  # deepest first: empty folders left behind
            top = os.path.relpath(folder, path).split(os.sep, 1)[0]
            if folder != path and top in ours and not os.listdir(folder):
                os.rmdir(folder)


def _finalize(loc: Location, target: _Target, markers: dict[int, dict]) -> dict[str, Any]:
    """Write the tables, the key list and then the final manifest, from a valid marker per batch.

    Refuses to finish from anything less: a batch without a marker vouching for every array
    means the build is not done, whatever the chunks on disk say.
    """
    config, index, layouts = target.config, target.index, target.layouts
    missing = [b for b in range(target.n_batches) if b not in markers or set(target.names) - set(markers[b]["digests"])]
    if missing:
        raise MuzarrError(
            f"{loc}: batch(es) {missing[:10]} have no valid completion marker; run the same command again to finish"
        )
    ordered = [markers[b] for b in range(target.n_batches)]
    status = np.concatenate([np.asarray(m["status"], dtype=np.int8) for m in ordered])
    failures = [f for m in ordered for f in m["failures"]]
    by_id = {f["clip_id"]: f for f in failures}
    clips = index.clips.copy()
    clips["clip_id"] = clips["clip_id"].astype(str)
    clips.insert(2, "status", [STATUS_NAMES[int(s)] for s in status])
    clips.insert(3, "stage", [by_id.get(c, {}).get("stage") for c in clips["clip_id"]])
    clips.insert(4, "error", [by_id.get(c, {}).get("message") for c in clips["clip_id"]])
    # A clip that failed one feature only is stored in the others: its error names the array it is missing from.
    lost = [x for m in ordered for x in m.get("array_failures", [])]
    missing: dict[str, list[str]] = {}
    for x in lost:
        missing.setdefault(x["clip_id"], []).append(f"failed {failure_text(x)}")
    clips["error"] = [
        error if error is not None else ("; ".join(missing[c]) if c in missing else None)
        for c, error in zip(clips["clip_id"], clips["error"])
    ]
    notes = [x for m in ordered for x in m.get("notes", [])]
    noted: dict[str, list[str]] = {}
    for x in notes:
        noted.setdefault(x["clip_id"], []).append(f"{x['array']}: {x['message']}")
    clips.insert(5, "note", ["; ".join(noted[c]) if c in noted else None for c in clips["clip_id"]])
    if target.plan is not None:  # a track's length as decoded (its file's header may have said otherwise)
        clips.insert(6, "seconds", np.array([np.nan if v is None else v for m in ordered for v in m["seconds"]], dtype=np.float64))

    checksum_rows = []
    arrays = {}
    row_of = {c: i for i, c in enumerate(clips["clip_id"])}
    for layout in layouts:
        digests = [d for m in ordered for d in m["digests"][layout.name]]
        arrays[layout.name] = {**layout.to_dict(), "checksum": combine_digests(digests), "feature": layout.attrs["feature"]}
        failed_here = [
            {"row": row_of[x["clip_id"]], "clip_id": x["clip_id"], "stage": x["stage"], "message": x["message"]}
            for x in lost if x["array"] == layout.name
        ]
        if failed_here:  # rows of stored clips this array holds no data for (Store.array_failures)
            arrays[layout.name]["failures"] = failed_here
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
    manifest = _manifest(
        config, index, layouts, state="complete", source=target.source,
        extra={
            "arrays": arrays,
            "counts": {"ok": int(ok.sum()), "failed": int((status == STATUS_FAILED).sum())},
            "failures": failures,
            "notes": _note_summary(notes),
            "split_counts": split_counts,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    if target.plan is not None:
        remove_left_regions(loc, target.plan)
    _write_key_list(loc)
    # The manifest is the commit point: readers see the new arrays and clips from here on.
    write_manifest(loc, manifest)
    remove_key(loc, TARGET)
    return manifest


def _note_summary(notes: list[dict], *, examples: int = 5) -> dict[str, dict]:
    """Per array: how many clips have a storage note, and the first few (all are in the clips table)."""
    summary: dict[str, dict] = {}
    for x in notes:
        entry = summary.setdefault(x["array"], {"clips": 0, "examples": []})
        entry["clips"] += 1
        if len(entry["examples"]) < examples:
            entry["examples"].append({"clip_id": x["clip_id"], "message": x["message"]})
    return summary


def _write_key_list(loc: Location) -> None:
    """Record every key of the store, so that it can be copied from where listing is impossible (HTTP)."""
    remove_temporaries(loc)
    keys = list_keys(loc)
    keys = {k: (None if k == "zarr.json" else size) for k, size in keys.items() if k not in (KEYS, TARGET, LOCK)}
    keys["zarr.json"] = None  # rewritten with the final manifest right after this list
    write_json(loc, KEYS, {"keys": dict(sorted(keys.items()))})


def build_index(config: BuildConfig, source: str) -> DatasetIndex:
    """Run the dataset's recipe and check the configured split schemes are there."""
    import inspect

    recipe = get_recipe(config.recipe)
    accepted = inspect.signature(recipe).parameters
    unknown = sorted(str(k) for k in config.options if k not in accepted or accepted[k].kind != inspect.Parameter.KEYWORD_ONLY)
    if unknown:
        known = sorted(k for k, p in accepted.items() if p.kind == inspect.Parameter.KEYWORD_ONLY)
        raise MuzarrError(f"recipe {config.recipe!r} has no option(s) {unknown}; its options: {known}")
    for name, value in config.options.items():
        default = accepted[name].default
        # a None default (an optional path) says nothing of the type: the recipe checks those itself
        expected = None if default in (None, inspect.Parameter.empty) else expected_type(value, default)
        if expected:
            raise MuzarrError(f"recipe {config.recipe!r}: option {name}={value!r} must be {expected}")
    try:
        index = recipe(source, **config.options)
    except (TypeError, ValueError) as error:
        raise MuzarrError(f"recipe {config.recipe!r} with options {config.options}: {type(error).__name__}: {error}") from None
    if config.task != TASK_AUTO and index.task != config.task:
        raise MuzarrError(f"recipe {config.recipe!r} gives a {index.task} index but the catalog says {config.task}")
    missing = [s for s in config.splits if s not in index.splits.columns]
    if missing:
        raise MuzarrError(
            f"split scheme(s) {missing} are not produced by recipe {config.recipe!r} with these options; "
            f"it produces: {list(index.splits.columns)}"
        )
    if len(index) == 0:
        raise MuzarrError(f"no clips found in {source} for dataset {config.dataset!r}")
    return index


def build(
    config: BuildConfig,
    *,
    source: str,
    out: str,
    index: DatasetIndex | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict | None = None,
    on_batch: Callable[[dict], None] | None = None,
    repair: bool = False,
    echo: Callable[[str], None] | None = None,
) -> BuildReport:
    """Build (or finish building) the store at ``out`` from the clips of ``source``.

    ``client`` is a caller-owned Dask client; otherwise one is made from ``workers`` /
    ``scheduler`` and closed at the end. ``strict`` stops at the first failed clip.
    ``repair`` first verifies the store and reruns exactly what is damaged (saying what
    through ``echo``).
    """
    import time

    started = time.perf_counter()
    loc = location(out, storage_options)
    out = loc.url
    loc.check_writable(verb="build")  # an http(s) URL, a path under a file: refused before the indexing
    recorded = recorded_source(source)
    if repair and overwrite:
        raise MuzarrError("--repair keeps the store's good batches, --overwrite rebuilds them all: choose one")
    if scheduler:
        check_scheduler_address(scheduler)  # before the store is touched
    # A link planted in the store would take reads, the lock and every write elsewhere: refused before any.
    check_contained(loc)
    existing = None
    if not overwrite:
        # A store this muzarr cannot write is refused before the (possibly long) indexing.
        try:
            existing = read_manifest(loc)
        except OSError as err:
            raise MuzarrError(f"cannot read {out}: {type(err).__name__}: {err}") from None
        if existing is not None:
            _check_schema(out, existing)
        elif repair:
            damage = manifest_damage(loc)
            if damage is not None:
                raise damaged_manifest(out, damage, rebuild=build_command(config, out=out, source=recorded, extra=("--overwrite",)))
            raise MuzarrError(f"--repair: there is no store at {out} to repair: build it without --repair")
    index = index if index is not None else build_index(config, source)
    tracked = config.clip.mode == "track"  # a track store's layout needs every file's length: probed under the lock
    target = None if tracked else _Target(config, index, plan_layout(config, len(index)), source=recorded)
    unreadable = index.info.get("unreadable_folders") or []
    if strict and unreadable:
        raise MuzarrError(f"--strict: folder {printable(unreadable[0]['path'])}/ of {source} failed at index: "
                          f"{printable(unreadable[0]['message'])}")  # fmt: skip
    root = Path(index.root)
    abs_paths = [str(root / p) for p in index.clips["path"]]
    # Features that cannot work and layouts nobody can hold are refused before anything is written.
    added = preflight.added_features(config, existing)
    preflight.check_parameters(added)
    memory = preflight.worker_memory(client=client, workers=workers, scheduler=scheduler)
    if target is not None:
        preflight.check_sizes(config, target.layouts, n_clips=target.n, memory=memory)
    owned = ExitStack()  # a cluster started for the first-clip check runs the batches too
    if added and client is None:
        client = make_client(workers=workers, scheduler=scheduler)
        owned.callback(close_client, client)
    try:
        if memory[0] is None and client is not None and target is not None:  # another scheduler's workers, now known
            memory = preflight.worker_memory(client=client)
            preflight.check_sizes(config, target.layouts, n_clips=target.n, memory=memory)
        preflight.first_clip_on(client, config, added, clip_ids=index.clips["clip_id"].astype(str).tolist(), paths=abs_paths)
    except BaseException:
        owned.close()
        raise
    # Everything that writes holds the store's lock; a full or read-only destination is one line.
    # Ctrl-C is raised between batch results (see pipeline.cluster.as_they_finish), not inside a Dask call.
    with owned, write_errors(out), writer_lock(loc), deferred_interrupt() as interrupted, ExitStack() as cleanup:
        plan = None
        if tracked:
            if client is None:
                client = make_client(workers=workers, scheduler=scheduler)
                cleanup.callback(close_client, client)
            plan, target = _plan_tracks(
                loc, config, index, abs_paths, client, overwrite=overwrite, repair=repair, source=recorded
            )
            preflight.check_sizes(config, target.layouts, n_clips=target.n, memory=memory)
        markers = _prepare_store(loc, target, overwrite=overwrite, repair=repair, echo=echo)
        relative = index.clips["path"].astype(str).tolist()
        if plan is not None:
            save_plan(loc, plan, target.clip_ids, relative)
        ids = target.clip_ids
        work = {}  # batch -> (arrays to compute or None for all, marker to build on or None)
        for b in range(target.n_batches):
            marker = markers.get(b)
            todo = [name for name in target.names if marker is None or name not in marker["digests"]]
            if todo:
                work[b] = (None if marker is None else todo, marker)
        reused = target.n_batches - len(work)
        config_dict = config.to_dict()

        own_client = client is None and bool(work)
        done_clips = target.n - sum(len(target.rows(b)) for b in work)
        bar = _progress_bar(total=target.n, initial=done_clips, enabled=progress, label=config.dataset)
        try:
            client = make_client(workers=workers, scheduler=scheduler) if own_client else client
            batches, rounds = list(work), 0
            while batches:
                jobs = {}
                for b in batches:
                    rows = list(target.rows(b))
                    jobs[b] = client.submit(
                        run_batch, loc, b, config_dict, rows, [ids[r] for r in rows], [abs_paths[r] for r in rows],
                        *work[b], track=plan.batch(b) if plan else None,
                        key=f"muzarr-batch-{b}-{rounds}-{os.getpid()}", pure=False,
                    )
                done, overflowing = _collect(jobs, interrupted, out=out, bar=bar, on_batch=on_batch, strict=strict)
                markers.update(done)
                batches = sorted(overflowing)
                if batches:
                    rounds += 1
                    if rounds > MAX_REPLANS:
                        raise MuzarrError(
                            f"batch(es) {batches} of {out}: their files decode to other lengths every time they are read "
                            f"({MAX_REPLANS} tries): are they being written while the build runs? Run the same command "
                            "again when they are complete"
                        )
                    plan = plan.replanned(overflowing)
                    target = _Target(config, index, plan_layout(config, len(index), tracks=plan), plan, target.source)
                    ensure_arrays(loc, target.layouts, target.n, config.batch_clips)  # grown before the plan says so
                    save_plan(loc, plan, ids, relative)
                    if echo:
                        echo(
                            f"{len(batches)} batch(es) decoded longer than their files' headers said: placed again, "
                            "at the end of the time arrays"
                        )
        finally:
            bar.close()
            if own_client and client is not None:
                close_client(client)
        manifest = _finalize(loc, target, markers)
    return BuildReport(
        url=out,
        n_clips=target.n,
        n_ok=manifest["counts"]["ok"],
        n_failed=manifest["counts"]["failed"],
        failures=manifest["failures"],
        batches_run=len(work),
        batches_reused=reused,
        seconds=time.perf_counter() - started,
        arrays=manifest["arrays"],
        notes=manifest["notes"],
        unreadable_folders=unreadable,
    )


def _collect(jobs: dict, interrupted, *, out: str, bar, on_batch, strict: bool) -> tuple[dict[int, dict], dict[int, list]]:
    """The markers of the batch tasks ``jobs`` (batch -> future) as they finish, and what each batch whose
    tracks did not fit its regions decoded (batch -> per clip ``[frames, rate]`` or the error)."""
    from dask.distributed import as_completed

    batch_of = {future: b for b, future in jobs.items()}
    markers, overflowing = {}, {}
    if not jobs:
        return markers, overflowing
    for future in as_they_finish(as_completed(list(batch_of)), interrupted):
        try:
            marker = future.result()
        except MuzarrError:
            raise
        except Exception as error:  # noqa: BLE001 - a task that died (worker lost, disk full)
            raise write_failure(error, out) or MuzarrError(
                f"batch {batch_of[future]} of {out} failed: {type(error).__name__}: {error}; "
                "run the same command again to resume"
            ) from None
        if "overflow" in marker:
            overflowing[batch_of[future]] = marker["overflow"]
            continue
        # What the task returned is what it wrote: trust it over a re-read of the marker.
        markers[batch_of[future]] = marker
        bar.update(len(marker["status"]))
        if on_batch:
            on_batch(marker)
        if strict and (marker["failures"] or marker.get("array_failures")):
            for other in batch_of:
                other.cancel()
            first = (marker["failures"] or marker["array_failures"])[0]
            raise MuzarrError(
                f"--strict: clip {printable(first['clip_id'])} ({printable(first['path'])}) failed at "
                f"{first['stage']}: {printable(first['message'])}"
            )
    return markers, overflowing


def _plan_tracks(
    loc: Location, config: BuildConfig, index: DatasetIndex, paths: list[str], client, *, overwrite: bool, repair: bool,
    source: str | None,
):
    """A track store's plan (every file probed, or its earlier probe reused; all probed again for a repair)
    and the target it implies."""
    ids = index.clips["clip_id"].astype(str).tolist()
    relative = index.clips["path"].astype(str).tolist()
    lengths = {}
    if not overwrite:
        for layout in plan_layout(config, len(index), tracks=None):
            if layout.extents:
                lengths[layout.name] = _stored_length(loc, layout.name)
    # probed by path: a probe kept in the store names the files relative to the source
    plan = plan_tracks(
        loc, config, ids, relative, client, reuse=not overwrite, open_path=dict(zip(relative, paths)),
        lengths=lengths, reprobe=repair,
    )
    return plan, _Target(config, index, plan_layout(config, len(index), tracks=plan), plan, source)


def _stored_length(loc: Location, name: str) -> int:
    """The time length of track array ``name`` in the store now (0 when it cannot be opened)."""
    import zarr

    try:
        check_metadata_size(loc, f"{name}/zarr.json")
        array = loc.open_group(mode="r")[name]
    except (KeyError, ValueError, TypeError, OSError, MuzarrError, zarr.errors.BaseZarrError):
        return 0
    return int(array.shape[-1]) if isinstance(array, zarr.Array) and array.ndim else 0


def _progress_bar(*, total: int, initial: int, enabled: bool, label: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="clip", desc=f"building {label}", disable=not enabled,
        dynamic_ncols=True, smoothing=0.1,
    )
