"""Writers of dataset metadata files in their exact real formats, for the recipe tests.

The real ``annotations_final.csv`` (MTAT) and ``tracks.csv`` (FMA) are not in the fixtures;
these helpers write files in the same format, with contents made from the real fixture
tables where they exist (MTAT clip index, top-50 ground truth) and seeded random elsewhere.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# The 188 tag columns of annotations_final.csv, in the file's column order.
MTAT_TAG_COLUMNS = (
    "no voice", "singer", "duet", "plucking", "hard rock", "world", "bongos", "harpsichord", "female singing",
    "clasical", "sitar", "chorus", "female opera", "male vocal", "vocals", "clarinet", "heavy", "silence",
    "beats", "men", "woodwind", "funky", "no strings", "chimes", "foreign", "no piano", "horns", "classical",
    "female", "no voices", "soft rock", "eerie", "spacey", "jazz", "guitar", "quiet", "no beat", "banjo",
    "electric", "solo", "violins", "folk", "female voice", "wind", "happy", "ambient", "new age", "synth",
    "funk", "no singing", "middle eastern", "trumpet", "percussion", "drum", "airy", "voice", "repetitive",
    "birds", "space", "strings", "bass", "harpsicord", "medieval", "male voice", "girl", "keyboard",
    "acoustic", "loud", "classic", "string", "drums", "electronic", "not classical", "chanting", "no violin",
    "not rock", "no guitar", "organ", "no vocal", "talking", "choral", "weird", "opera", "soprano", "fast",
    "acoustic guitar", "electric guitar", "male singer", "man singing", "classical guitar", "country",
    "violin", "electro", "reggae", "tribal", "dark", "male opera", "no vocals", "irish", "electronica",
    "horn", "operatic", "arabic", "lol", "low", "instrumental", "trance", "chant", "strange", "drone",
    "synthesizer", "heavy metal", "modern", "disco", "bells", "man", "deep", "fast beat", "industrial",
    "hard", "harp", "no flute", "jungle", "pop", "lute", "female vocal", "oboe", "mellow", "orchestral",
    "viola", "light", "echo", "piano", "celtic", "male vocals", "orchestra", "eastern", "old", "flutes",
    "punk", "spanish", "sad", "sax", "slow", "male", "blues", "vocal", "indian", "no singer", "scary",
    "india", "woman", "woman singing", "rock", "dance", "piano solo", "guitars", "no drums", "jazzy",
    "singing", "cello", "calm", "female vocals", "voices", "different", "techno", "clapping", "house",
    "monks", "flute", "not opera", "not english", "oriental", "beat", "upbeat", "soft", "noise", "choir",
    "female singer", "rap", "metal", "hip hop", "quick", "water", "baroque", "women", "fiddle", "english",
)

# Top-50 tags in frequency order (minzwon/sota-music-tagging-models split/mtat/tags.npy).
MTAT_TOP50 = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals",
    "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft",
    "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal",
    "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral",
)

MTAT_BROKEN = ("35644", "55753", "57881")


def write_annotations_final(path: Path, rows: Sequence[tuple[str, Sequence[int], str]], tag_names: Sequence[str],
                            *, newline: str = "\n") -> Path:
    """Write ``rows`` of ``(clip_id, tag values, mp3_path)`` as MTAT's ``annotations_final.csv``.

    Tab-separated, every field double-quoted, header ``"clip_id"``, the tag names,
    ``"mp3_path"``; tag values ``"0"``/``"1"``.
    """
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator=newline)
        writer.writerow(["clip_id", *tag_names, "mp3_path"])
        for clip_id, values, mp3_path in rows:
            writer.writerow([str(clip_id), *(str(int(v)) for v in values), mp3_path])
    return path


def read_mtat_fixture(mtat_dir: Path) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """The real clip index (clip_id, path) and top-50 ground truth of the valid/test clips."""
    index = pd.read_csv(mtat_dir / "metadata" / "index_MAGNA.tsv", sep="\t", header=None, names=["clip_id", "path"])
    truth: dict[int, np.ndarray] = {}
    for name in ("val_gt_mtt.tsv", "test_gt_mtt.tsv"):
        table = pd.read_csv(mtat_dir / "metadata" / name, sep="\t", header=None, names=["clip_id", "labels"])
        for clip_id, labels in zip(table["clip_id"], table["labels"]):
            truth[int(clip_id)] = np.array(labels.strip("[]").split(","), dtype=float).astype(np.uint8)
    return index, truth


def synthesise_mtat_tags(index: pd.DataFrame, truth: Mapping[int, np.ndarray], *, seed: int = 0,
                         tagged_train: int = 15_244) -> np.ndarray:
    """A full-size ``[25863, 188]`` tag matrix in ``MTAT_TAG_COLUMNS`` order.

    Valid/test clips carry their real top-50 labels. In the train folders (0-b), the three
    broken clips plus ``tagged_train`` other seeded clips get at least one top-50 tag, the
    rest none; top-50 totals are 5000, 4910, ..., 590 so that the frequency order is exactly
    :data:`MTAT_TOP50`; the other 138 tags get 1-499 random clips each.
    """
    rng = np.random.default_rng(seed)
    n = len(index)
    tags = np.zeros((n, len(MTAT_TAG_COLUMNS)), dtype=np.uint8)
    top = np.array([MTAT_TAG_COLUMNS.index(t) for t in MTAT_TOP50])
    ids = index["clip_id"].to_numpy()
    for row, clip_id in enumerate(ids):
        if int(clip_id) in truth:
            tags[row, top] = truth[int(clip_id)]
    is_train = index["path"].str[0].isin(list("0123456789ab")).to_numpy()
    broken = np.flatnonzero(np.isin(ids.astype(str), MTAT_BROKEN))
    others = np.setdiff1d(np.flatnonzero(is_train), broken)
    tagged = np.concatenate([broken, rng.choice(others, tagged_train, replace=False)])
    need = (5000 - 90 * np.arange(50)) - tags[:, top].sum(axis=0, dtype=np.int64)
    slots = rng.permutation(np.repeat(np.arange(50), need))
    tags[tagged, top[slots[: len(tagged)]]] = 1
    for k in range(50):
        remaining = int(need[k] - tags[tagged, top[k]].sum())
        free = tagged[tags[tagged, top[k]] == 0]
        tags[rng.choice(free, remaining, replace=False), top[k]] = 1
    for column in sorted(set(range(len(MTAT_TAG_COLUMNS))) - set(top.tolist())):
        tags[rng.choice(n, int(rng.integers(1, 500)), replace=False), column] = 1
    return tags


# The 52 columns of FMA's fma_metadata/tracks.csv, as (group, field).
FMA_TRACKS_COLUMNS = (
    [("album", f) for f in ("comments", "date_created", "date_released", "engineer", "favorites", "id",
                            "information", "listens", "producer", "tags", "title", "tracks", "type")]
    + [("artist", f) for f in ("active_year_begin", "active_year_end", "associated_labels", "bio", "comments",
                               "date_created", "favorites", "id", "latitude", "location", "longitude", "members",
                               "name", "related_projects", "tags", "website", "wikipedia_page")]
    + [("set", "split"), ("set", "subset")]
    + [("track", f) for f in ("bit_rate", "comments", "composer", "date_created", "date_recorded", "duration",
                              "favorites", "genre_top", "genres", "genres_all", "information", "interest",
                              "language_code", "license", "listens", "lyricist", "number", "publisher", "tags",
                              "title")]
)


def write_tracks_csv(path: Path, tracks: Mapping[int, Mapping[tuple[str, str], object]]) -> Path:
    """Write FMA's ``tracks.csv``: a (group, field) two-row header, then a ``track_id`` row.

    ``tracks`` maps track id to the values of some of :data:`FMA_TRACKS_COLUMNS`; the others
    stay empty, as in the real file where a field is unknown.
    """
    columns = pd.MultiIndex.from_tuples(FMA_TRACKS_COLUMNS)
    table = pd.DataFrame([[values.get(c) for c in FMA_TRACKS_COLUMNS] for values in tracks.values()],
                         index=pd.Index(list(tracks), name="track_id"), columns=columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)
    return path


def fma_track(genre_top: str | None, split: str, subset: str, title: str, **fields) -> dict:
    """One tracks.csv row: genre, split and subset plus a few realistic descriptive fields."""
    values = {("track", "genre_top"): genre_top, ("set", "split"): split, ("set", "subset"): subset,
              ("track", "title"): title, ("track", "duration"): 30, ("track", "bit_rate"): 320000,
              ("track", "license"): "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International"}
    values.update({tuple(k.split("__")): v for k, v in fields.items()})
    return values
