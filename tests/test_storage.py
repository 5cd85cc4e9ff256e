"""Completion markers: which ones a build may trust, and what it keeps of them."""

from __future__ import annotations

import copy

import pytest

from pipeline.store.io import STATUS_FAILED, STATUS_OK, clips_digest
from pipeline.store.marker import Marker, Note

IDS = ["a", "b", "c"]
DIGEST = "0123456789abcdef0123456789abcdef"


def marker(**changes):
    base = {
        "batch": 2, "start": 6, "stop": 9, "clips": clips_digest(IDS),
        "status": [STATUS_OK, STATUS_FAILED, STATUS_OK],
        "failures": [{"clip_id": "b", "path": "b.mp3", "stage": "decode", "message": "not audio"}],
        "digests": {"waveform": [DIGEST] * 3, "logmel/x": [DIGEST] * 3},
        "notes": [
            {"clip_id": "a", "array": "waveform", "message": "3 sample(s) beyond ±1 ..."},
            {"clip_id": "c", "array": "logmel/x", "message": "..."},
        ],
    }
    return {**copy.deepcopy(base), **changes}


def check(raw, names=("waveform", "logmel/x")):
    return Marker.from_dict(raw, batch=2, start=6, clip_ids=IDS, names=names)


def test_a_whole_marker_is_kept_for_the_arrays_asked_for():
    kept = check(marker(), names=("waveform",))
    assert kept.digests == {"waveform": (DIGEST,) * 3}
    assert kept.notes == (Note.from_dict(marker()["notes"][0]),)  # notes go with the arrays they are about
    assert [x.to_dict() for x in check(marker()).notes] == marker()["notes"]


def test_markers_from_before_notes_have_none():
    raw = marker()
    del raw["notes"]
    assert check(raw).notes == ()


@pytest.mark.parametrize(
    "changes",
    [
        {"batch": 3},
        {"clips": clips_digest(["a", "b", "x"])},
        {"status": [STATUS_OK, STATUS_OK]},
        {"failures": []},  # one clip failed: its failure must be there
        {"failures": [{"clip_id": "b", "path": "b.mp3", "stage": "decode"}]},
        {"digests": None},
        {"notes": {"clip_id": "a"}},
        {"notes": [{"clip_id": "a", "array": "waveform", "message": 3}]},
        {"notes": ["clipped"]},
    ],
)
def test_a_torn_or_foreign_marker_is_not_trusted(changes):
    assert check(marker()) is not None
    assert check(marker(**changes)) is None
