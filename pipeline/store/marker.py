"""The completion marker of a build batch (:class:`Marker`) and the records of clips it carries (failures,
notes), each read and validated in one place.

A marker travels from a batch's task (written last, atomically, in the store) to the driver, which
finishes the store from one valid marker per batch. A store is untrusted input: :meth:`Marker.from_dict`
is the only way in, and a marker it does not trust is ``None`` ("that batch is not done").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.store.io import DECODE_NOTE, STATUS_FAILED, STATUS_OK, clips_digest


def is_int(value: Any) -> bool:
    """An integer, not a bool (JSON's ``true`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def has_strings(value: Any, keys: tuple[str, ...]) -> bool:
    """``value`` is a mapping with a string under every key of ``keys``."""
    return isinstance(value, dict) and all(isinstance(value.get(k), str) for k in keys)


@dataclass(frozen=True)
class ClipFailure:
    """A clip no array holds: its file could not be decoded or its clip policy refused it."""

    clip_id: str
    path: str
    stage: str  # "decode", "clip" or an array name
    message: str

    @classmethod
    def from_dict(cls, data: Any) -> ClipFailure | None:
        if not has_strings(data, ("clip_id", "path", "stage", "message")):
            return None
        return cls(data["clip_id"], data["path"], data["stage"], data["message"])

    def to_dict(self) -> dict[str, str]:
        return {"clip_id": self.clip_id, "path": self.path, "stage": self.stage, "message": self.message}

    def of_array(self, array: str) -> ArrayFailure:
        """This failure as the failure of one array only: the clip stays stored in the others."""
        return ArrayFailure(self.clip_id, self.path, self.stage, self.message, array)


@dataclass(frozen=True)
class ArrayFailure:
    """A stored clip that failed one array only: that array holds its fill value there, the others the clip."""

    clip_id: str
    path: str
    stage: str  # the array's name, or "decode" when a grow could not read the clip again
    message: str
    array: str

    @classmethod
    def from_dict(cls, data: Any) -> ArrayFailure | None:
        if not has_strings(data, ("clip_id", "path", "stage", "message", "array")):
            return None
        return cls(data["clip_id"], data["path"], data["stage"], data["message"], data["array"])

    def to_dict(self) -> dict[str, str]:
        return {"clip_id": self.clip_id, "path": self.path, "stage": self.stage, "message": self.message, "array": self.array}

    def text(self) -> str:
        return failure_text(self.array, self.stage, self.message)


def failure_text(array: str, stage: str, message: str) -> str:
    """One line for a stored clip that failed one array."""
    at = "" if stage == array else f" at {stage}"
    return f"{array}{at}: {message}"


@dataclass(frozen=True)
class Note:
    """What storing lost of a stored clip in ``array`` (int16 clipping), or how its file decoded
    (``array`` :data:`~pipeline.store.io.DECODE_NOTE`: every array holds what was decoded)."""

    clip_id: str
    array: str
    message: str

    @classmethod
    def from_dict(cls, data: Any) -> Note | None:
        if not has_strings(data, ("clip_id", "array", "message")):
            return None
        return cls(data["clip_id"], data["array"], data["message"])

    def to_dict(self) -> dict[str, str]:
        return {"clip_id": self.clip_id, "array": self.array, "message": self.message}


def records_of(value: Any, kind) -> tuple | None:
    """``value`` (a list) as records of ``kind``; None if it is not a list or one entry is not such a record."""
    if not isinstance(value, list):
        return None
    records = tuple(kind.from_dict(x) for x in value)
    return None if any(r is None for r in records) else records


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _seconds(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf)


@dataclass(frozen=True)
class Marker:
    """``_muzarr/batches/<batch>.json``: batch ``batch`` (rows ``start:stop``) is done for every array it
    has ``digests`` of. Written last, atomically, by the batch's task: its presence vouches for every
    shard it lists.

    ``status`` is each clip's (1 ok, 2 failed), ``failures`` the clips no array holds, ``array_failures``
    the stored clips one array lacks, ``digests`` every clip's content digest per array, ``notes`` what
    storing lost or how a file decoded. A track store's marker also has ``regions`` (where its tracks
    went in each time array, ``(start, size)``) and ``seconds`` (each track's decoded length; None for a
    failed one).
    """

    batch: int
    start: int
    stop: int
    clips: str  # digest of the batch's clip ids (io.clips_digest)
    status: tuple[int, ...]
    failures: tuple[ClipFailure, ...] = ()
    array_failures: tuple[ArrayFailure, ...] = ()
    digests: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()
    regions: Mapping[str, tuple[int, int]] | None = None
    seconds: tuple[float | None, ...] | None = None

    @classmethod
    def from_dict(
        cls, data: Any, *, batch: int, start: int, clip_ids: list[str], names: Iterable[str],
        regions: Mapping[str, tuple[int, int]] | None = None,
    ) -> Marker | None:
        """The marker ``data`` (parsed JSON) reduced to the arrays of ``names`` it vouches for, or None if it
        cannot be trusted for batch ``batch`` of these clips (rows ``start:start + len(clip_ids)``).

        A marker counts only if it is for this batch, these rows and these clips, every field has the shape
        a finished batch writes, and it names exactly the clips its status says failed; in a track store
        (``regions``: the regions this build's plan gives the batch) only where its tracks are in those
        regions, each at a recorded length. Anything else (a torn write, a marker of an older layout or
        plan, a hand-edited file) means "not done".
        """
        stop = start + len(clip_ids)
        n = stop - start
        if not isinstance(data, dict):
            return None
        clips = clips_digest(clip_ids)
        # Markers written before the clip-id digest existed have no "clips": their rows must do.
        if (data.get("batch"), data.get("start"), data.get("stop"), data.get("clips", clips)) != (batch, start, stop, clips):
            return None
        status = data.get("status")
        if not (isinstance(status, list) and len(status) == n and all(s in (STATUS_OK, STATUS_FAILED) for s in status)):
            return None
        failures = records_of(data.get("failures"), ClipFailure)
        notes = records_of(data.get("notes", []), Note)  # markers written before notes existed have none
        lost = records_of(data.get("array_failures", []), ArrayFailure)  # nor failures of one array only
        digests = data.get("digests")
        if not isinstance(digests, dict) or failures is None or notes is None or lost is None:
            return None
        failed = [clip_ids[i] for i, s in enumerate(status) if s == STATUS_FAILED]
        if [f.clip_id for f in failures] != failed:
            return None
        kept = {}
        for name in names:
            values = digests.get(name)
            if isinstance(values, list) and len(values) == n and all(_is_digest(v) for v in values):
                kept[name] = tuple(values)
        marker = cls(
            batch=batch, start=start, stop=stop, clips=clips, status=tuple(status), failures=failures,
            array_failures=tuple(x for x in lost if x.array in kept), digests=kept,
            notes=tuple(x for x in notes if x.array in kept or x.array == DECODE_NOTE),
        )
        if regions is None:
            return marker
        # a batch is done where its tracks are: in the regions this plan gives it, at recorded lengths
        placed, seconds = data.get("regions"), data.get("seconds")
        if not isinstance(placed, dict) or any(placed.get(n) != list(r) for n, r in regions.items() if n in kept):
            return None
        if not (isinstance(seconds, list) and len(seconds) == n and all(_seconds(v) for v in seconds)):
            return None
        return replace(marker, regions={n: tuple(r) for n, r in regions.items() if n in kept}, seconds=tuple(seconds))

    def to_dict(self) -> dict[str, Any]:
        data = {
            "batch": self.batch,
            "start": self.start,
            "stop": self.stop,
            "clips": self.clips,
            "status": list(self.status),
            "failures": [x.to_dict() for x in self.failures],
            "array_failures": [x.to_dict() for x in self.array_failures],
            "digests": {name: list(values) for name, values in self.digests.items()},
            "notes": [x.to_dict() for x in self.notes],
        }
        if self.regions is not None:
            data["regions"] = {name: list(region) for name, region in self.regions.items()}
            data["seconds"] = list(self.seconds or ())
        return data

    def without(self, names: Iterable[str]) -> Marker:
        """This marker vouching for none of the arrays ``names`` (arrays created anew since it was written)."""
        dropped = set(names)
        return replace(self, digests={n: d for n, d in self.digests.items() if n not in dropped})
