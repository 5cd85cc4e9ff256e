"""The manifest of a store (:class:`Manifest`, with an :class:`ArrayInfo` per array): how it was made and
what it holds, read and validated in one place, and the errors for a store that must be rebuilt.

A store is untrusted input: :meth:`Manifest.from_dict` is the only way in, and it refuses what muzarr
would not have written in one :class:`MuzarrError`. :meth:`Manifest.to_dict` gives back exactly the JSON
muzarr writes, key for key and in its order: a store is the same bytes whatever version of this code
wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import MuzarrError
from pipeline.store.io import FRESH_COPY, check_key, write_manifest
from pipeline.store.layout import SCHEMA_VERSION, ArrayLayout, check_layout
from pipeline.store.location import Location
from pipeline.store.marker import ClipFailure, Note, has_strings, is_int, records_of

#: what each older store layout was, for the line that refuses it
OLD_LAYOUTS = {1: "whole-clip chunks"}
STATE_COMPLETE = "complete"
STATE_BUILDING = "building"


@dataclass(frozen=True)
class RowFailure:
    """Row ``row``, a stored clip, has no data in its array: the clip failed that feature only."""

    row: int
    clip_id: str
    stage: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "clip_id": self.clip_id, "stage": self.stage, "message": self.message}


@dataclass(frozen=True)
class ArrayInfo:
    """One feature array as the manifest describes it: its layout, the checksum of its clip digests, the
    feature that computed it (``{"kind": ..., <parameters>}``) and the rows of stored clips it lacks.
    ``extents`` names a track store's array of every clip's ``[start, length]`` in this one."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    extents: str | None = None
    checksum: str | None = None  # only once the build has finished
    feature: Mapping[str, Any] | None = None  # only once the build has finished
    failures: tuple[RowFailure, ...] = ()

    @property
    def kind(self) -> str | None:
        """The feature's kind (``waveform``, ``logmel``, ...); None in a manifest of a build under way."""
        return self.feature.get("kind") if self.feature is not None else None

    @classmethod
    def of(cls, layout: ArrayLayout, **finished) -> ArrayInfo:
        """The entry of an array planned as ``layout``; a finished build's checksum, feature and failures as ``finished``."""
        return cls(layout.name, layout.shape, layout.dtype, layout.chunks, layout.shards, layout.extents, **finished)

    @classmethod
    def from_dict(cls, name: str, data: Any, *, n_clips: int, url: str) -> ArrayInfo:
        where = f"{url}: malformed manifest"
        check_key(name, where=f"{where}: array name")
        if name == "status" or name.startswith(("tables/", "_muzarr/")) or not isinstance(data, dict):
            raise MuzarrError(f"{where}: array entry {name!r} is not a feature array description")
        if "extents" in data:
            check_key(data["extents"], where=f"{where}: array {name!r} extents")
        check_layout(name, data, n_clips=n_clips, where=f"{url}: malformed store: the manifest")
        failures = data.get("failures", [])
        if not isinstance(failures, list) or not all(
            has_strings(x, ("clip_id", "stage", "message")) and is_int(x.get("row")) and 0 <= x["row"] < n_clips
            for x in failures
        ):
            raise MuzarrError(f"{where}: array {name!r} 'failures' must list rows of its clips with clip_id, stage and message")
        checksum, feature = data.get("checksum"), data.get("feature")
        if not (checksum is None or isinstance(checksum, str)) or not (feature is None or isinstance(feature, dict)):
            raise MuzarrError(f"{where}: array {name!r} must have a checksum (a string) and a feature (a mapping)")
        shards = data.get("shards")  # check_layout lets a missing one through as "not sharded"
        return cls(
            name=name, shape=tuple(data["shape"]), dtype=data["dtype"], chunks=tuple(data["chunks"]),
            shards=None if shards is None else tuple(shards), extents=data.get("extents"), checksum=checksum,
            feature=feature,
            failures=tuple(RowFailure(x["row"], x["clip_id"], x["stage"], x["message"]) for x in failures),
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks),
            "shards": None if self.shards is None else list(self.shards),
        }
        if self.extents is not None:
            data["extents"] = self.extents
        if self.checksum is not None:
            data["checksum"] = self.checksum
        if self.feature is not None:
            data["feature"] = dict(self.feature)
        if self.failures:
            data["failures"] = [x.to_dict() for x in self.failures]
        return data


@dataclass(frozen=True)
class NoteSummary:
    """How many stored clips have a note on one array (``Note.array``), and the first few."""

    clips: int
    examples: tuple[Note, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"clips": self.clips, "examples": [{"clip_id": x.clip_id, "message": x.message} for x in self.examples]}

    @classmethod
    def of(cls, notes: Iterable[Note], *, examples: int = 5) -> dict[str, NoteSummary]:
        """Per array: how many clips have a note, and the first ``examples`` (all are in the clips table)."""
        summary: dict[str, list[Note]] = {}
        for note in notes:
            summary.setdefault(note.array, []).append(note)
        return {array: cls(len(listed), tuple(listed[:examples])) for array, listed in summary.items()}


@dataclass(frozen=True)
class Counts:
    """Stored and failed clips of a finished store."""

    ok: int
    failed: int

    def to_dict(self) -> dict[str, int]:
        return {"ok": self.ok, "failed": self.failed}


@dataclass(frozen=True)
class Manifest:
    """The group attribute ``muzarr`` of a store: how it was made and what it holds.

    ``config`` is the build configuration as :meth:`pipeline.config.BuildConfig.to_dict` writes it
    (validated into one by :meth:`pipeline.store.Store.config`); ``source`` where its audio came from;
    ``index_info`` what the dataset's recipe noticed. A store whose build is under way (``state``
    ``building``) has no ``counts``, ``failures``, ``notes``, ``split_counts`` or ``finished`` yet, and its
    arrays no checksums.
    """

    schema_version: int
    state: str | None
    config: Mapping[str, Any]
    task: str
    classes: tuple[str, ...]
    n_clips: int
    arrays: Mapping[str, ArrayInfo]
    n_subclips: int | None = None
    digest: str | None = None  # the per-clip digest (stores from before it was named: blake2b_128)
    source: str | None = None
    versions: Mapping[str, Any] | None = None
    index_info: Mapping[str, Any] | None = None
    counts: Counts | None = None
    failures: tuple[ClipFailure, ...] | None = None
    notes: Mapping[str, NoteSummary] | None = None
    split_counts: Mapping[str, Mapping[str, int]] | None = None
    finished: str | None = None

    @property
    def complete(self) -> bool:
        return self.state == STATE_COMPLETE

    @property
    def dataset(self) -> str:
        return self.config["dataset"]

    @property
    def split_schemes(self) -> tuple[str, ...]:
        """The split schemes the build was asked for (``tables/splits.parquet`` has a column for each)."""
        return tuple(self.config["splits"])

    @property
    def batch_clips(self) -> int | None:
        """Clips per build batch (per shard); None in a manifest that does not say."""
        return self.config.get("batch_clips")

    @property
    def digest_algorithm(self) -> str:
        return self.digest or "blake2b_128"

    @classmethod
    def from_dict(cls, data: dict, *, url: str) -> Manifest:
        """The manifest of the store at ``url`` (``data``: the group's ``muzarr`` attribute), with the fields
        every reader relies on of the types it relies on; a store of another layout is refused."""
        check_version(data, url)
        where = f"{url}: malformed manifest"
        for key, kind in {"config": dict, "task": str, "classes": list, "n_clips": int, "arrays": dict}.items():
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise MuzarrError(f"{where}: {key!r} must be a {kind.__name__}, got {type(value).__name__}")
        n_clips = data["n_clips"]
        if n_clips < 0:
            raise MuzarrError(f"{where}: n_clips={n_clips} is negative")
        for key in ("source", "state", "digest", "finished"):
            if not isinstance(data.get(key, ""), str):
                raise MuzarrError(f"{where}: {key!r} must be a string, got {type(data[key]).__name__}")
        config = data["config"]
        if not isinstance(config.get("dataset"), str) or not (
            isinstance(config.get("splits"), list) and all(isinstance(s, str) for s in config["splits"])
        ):
            raise MuzarrError(f"{where}: 'config' must name its dataset and list its split schemes")
        batch_clips = config.get("batch_clips", 1)
        if not is_int(batch_clips) or batch_clips < 1:
            raise MuzarrError(f"{where}: config batch_clips={batch_clips!r} must be a positive integer")
        sub = data.get("n_subclips")
        if sub is not None and (not is_int(sub) or sub < 1):
            raise MuzarrError(f"{where}: n_subclips={sub!r} must be null or a positive integer")
        arrays = {name: ArrayInfo.from_dict(name, info, n_clips=n_clips, url=url) for name, info in data["arrays"].items()}
        for info in arrays.values():
            if info.extents is not None and info.extents not in arrays:
                raise MuzarrError(f"{where}: array {info.name!r} names extents {info.extents!r}, which the manifest does not hold")
            if sub is not None and (len(info.shape) < 3 or info.shape[1] != sub):
                raise MuzarrError(
                    f"{url}: malformed store: the manifest's array {info.name!r} has shape {list(info.shape)}, not {sub} "
                    f"sub-clips per clip as its n_subclips says: {FRESH_COPY}"
                )
        if not all(isinstance(c, str) for c in data["classes"]):
            raise MuzarrError(f"{where}: 'classes' must be a list of strings")
        return cls(
            schema_version=data["schema_version"], state=data.get("state"), config=config, task=data["task"],
            classes=tuple(data["classes"]), n_clips=n_clips, arrays=arrays, n_subclips=sub, digest=data.get("digest"),
            source=data.get("source"), versions=_mapping(data, "versions", where), index_info=_mapping(data, "index_info", where),
            counts=_counts(data.get("counts"), where), failures=_failures(data.get("failures"), where),
            notes=_notes(data.get("notes"), where), split_counts=_split_counts(data.get("split_counts"), where),
            finished=data.get("finished"),
        )

    def write(self, loc: Location) -> None:
        """Make this the manifest of the store at ``loc``: one atomic write of the group's ``zarr.json``."""
        write_manifest(loc, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The manifest as muzarr writes it, in the order it writes it (the group's ``zarr.json`` is not sorted)."""
        data: dict[str, Any] = {"schema_version": self.schema_version}
        if self.state is not None:
            data["state"] = self.state
        if self.digest is not None:
            data["digest"] = self.digest
        data["config"] = self.config
        if self.source is not None:
            # outside "config": the same audio in another folder is the same store, byte for byte
            data["source"] = self.source
        data.update(task=self.task, classes=list(self.classes), n_clips=self.n_clips, n_subclips=self.n_subclips)
        if self.versions is not None:
            data["versions"] = self.versions
        if self.index_info is not None:
            data["index_info"] = self.index_info
        data["arrays"] = {name: info.to_dict() for name, info in self.arrays.items()}
        if self.counts is not None:
            data["counts"] = self.counts.to_dict()
        if self.failures is not None:
            data["failures"] = [x.to_dict() for x in self.failures]
        if self.notes is not None:
            data["notes"] = {array: summary.to_dict() for array, summary in self.notes.items()}
        if self.split_counts is not None:
            data["split_counts"] = self.split_counts
        if self.finished is not None:
            data["finished"] = self.finished
        return data


def _mapping(data: dict, key: str, where: str) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise MuzarrError(f"{where}: {key!r} must be a mapping, got {type(value).__name__}")
    return value


def _counts(value: Any, where: str) -> Counts | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and set(value) == {"ok", "failed"} and all(is_int(v) and v >= 0 for v in value.values())):
        raise MuzarrError(f"{where}: 'counts' must be {{'ok': N, 'failed': N}}, got {value!r:.80}")
    return Counts(value["ok"], value["failed"])


def _failures(value: Any, where: str) -> tuple[ClipFailure, ...] | None:
    if value is None:
        return None
    records = records_of(value, ClipFailure)
    if records is None:
        raise MuzarrError(f"{where}: 'failures' must list failed clips with clip_id, path, stage and message")
    return records


def _notes(value: Any, where: str) -> dict[str, NoteSummary] | None:
    if value is None:
        return None
    summary = {}
    for array, entry in value.items() if isinstance(value, dict) else [(None, None)]:
        examples = entry.get("examples") if isinstance(entry, dict) else None
        if not (
            isinstance(array, str) and isinstance(entry, dict) and is_int(entry.get("clips")) and isinstance(examples, list)
            and all(has_strings(x, ("clip_id", "message")) for x in examples)
        ):
            raise MuzarrError(f"{where}: 'notes' must give, per array, a count of clips and examples with clip_id and message")
        summary[array] = NoteSummary(entry["clips"], tuple(Note(x["clip_id"], array, x["message"]) for x in examples))
    return summary


def _split_counts(value: Any, where: str) -> dict[str, dict[str, int]] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(parts, dict) and all(isinstance(p, str) and is_int(n) for p, n in parts.items()) for parts in value.values()
    ):
        raise MuzarrError(f"{where}: 'split_counts' must give, per split scheme, a count of clips per part")
    return value


class RebuildNeeded(MuzarrError):
    """A store that cannot be read as it is and must be rebuilt (a layout this muzarr does not read, a
    damaged manifest): ``problem`` says what and where, ``remedy`` what to do, up to the command that
    rebuilds it. The store knows the configuration it was built with (``config``, as the manifest holds
    it; None when nothing says) and where its audio came from (``source``): whoever prints the error
    writes the command from them (:func:`pipeline.commands.explain`)."""

    def __init__(self, problem: str, *, remedy: str, url: str, config: Mapping | None = None, source: str | None = None) -> None:
        self.problem, self.remedy, self.url, self.config, self.source = problem, remedy, url, config, source
        super().__init__(f"{problem}: {remedy}the build command that made it, with --overwrite")

    def with_command(self, command: str) -> str:
        """The message ending with ``command``, the one that rebuilds the store."""
        return f"{self.problem}: {self.remedy}{command}"


def check_version(data: dict, url: str) -> None:
    """Refuse a manifest of another store layout than this muzarr reads (:data:`SCHEMA_VERSION`)."""
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > SCHEMA_VERSION:
        raise MuzarrError(
            f"{url} was written with store schema version {version!r}; this muzarr reads up to {SCHEMA_VERSION}: upgrade muzarr"
        )
    if version < SCHEMA_VERSION:
        raise old_layout(url, data)


def old_layout(url: str, data: dict) -> RebuildNeeded:
    """The one error for a store of an older layout (``data``: its manifest): what it is, and what rebuilds it."""
    version = data.get("schema_version")
    config = data.get("config") if isinstance(data.get("config"), dict) else None
    source = data.get("source") if isinstance(data.get("source"), str) else None
    what = f" ({OLD_LAYOUTS[version]})" if version in OLD_LAYOUTS else ""
    return RebuildNeeded(
        f"{url} was written by muzarr's store layout {version}{what}; this muzarr reads layout {SCHEMA_VERSION}",
        remedy="rebuild it with: ", url=url, config=config, source=source,
    )


def damaged_manifest(url: str, reason: str, *, config: Mapping | None = None, source: str | None = None) -> RebuildNeeded:
    """The one error for a store whose manifest is damaged (``reason``); ``config``: what rebuilds it, if known."""
    return RebuildNeeded(
        f"{url.rstrip('/')}/zarr.json, the store's manifest, is damaged ({reason})",
        remedy="the store cannot be read; restore zarr.json from a copy of the store, or rebuild it: ",
        url=url, config=config, source=source,
    )
