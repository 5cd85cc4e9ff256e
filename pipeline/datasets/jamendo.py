"""MTG-Jamendo (Bogdanov et al., ML4MD @ ICML 2019): 55,609 full tracks of 30 s to 69 min, 195 tags.

Source layout (``pipe download jamendo``)::

    root/00/ ... root/99/            the raw_30s audio archives unpacked: <PATH> is 15/215.mp3
    <data>/autotagging[_<subset>].tsv
    <data>/splits/split-<k>/autotagging[_<subset>]-{train,validation,test}.tsv   k = 0..4
    <data>/tags/top50.txt

``<data>`` is the ``data/`` folder of the mtg-jamendo-dataset repository: ``metadata=<dir>``
(that folder or the repository holding it), else the first of ``root/data``,
``root/mtg-jamendo-dataset/data`` and ``root/mtg-jamendo-dataset-<commit>/data`` (a GitHub
archive, which ``pipe download jamendo`` unpacks) that exists.

Every TSV has the header ``TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS`` and one tag per
column from the sixth on (``genre---rock``, ``mood/theme---calm``); tag names are kept as written.
Subsets: ``all`` (``autotagging``, 195 tags), ``top50`` (``autotagging_top50tags``), ``genre``,
``instrument``, ``moodtheme`` (one category's tags). Labels come from the subset's own file when it
is there, else from its split files; each official split found becomes a split scheme ``split-<k>``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from pipeline.datasets._common import count_missing, make_splits, multi_hot, require_dir, safe_relative_path
from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex

SUBSETS = {
    "all": "autotagging",
    "top50": "autotagging_top50tags",
    "genre": "autotagging_genre",
    "instrument": "autotagging_instrument",
    "moodtheme": "autotagging_moodtheme",
}
CATEGORIES = {"genre": "genre---", "instrument": "instrument---", "moodtheme": "mood/theme---"}
TAG_LISTS = {"top50": "tags/top50.txt"}
N_SPLITS = 5
PARTS = {"train": "train", "validation": "valid", "test": "test"}
HEADER = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS")
_IDS = (("TRACK_ID", "track_"), ("ARTIST_ID", "artist_"), ("ALBUM_ID", "album_"))
DATA_FOLDERS = ("data", "mtg-jamendo-dataset/data", "mtg-jamendo-dataset-*/data")

_EXPECTED = ("the raw_30s audio folders 00..99 (<PATH> = 15/215.mp3) and the data/ folder of the "
             "mtg-jamendo-dataset repository (autotagging*.tsv, splits/split-<k>/, tags/)")


def _hint(root: Path) -> str:
    return f"download with `pipe download jamendo --to {root}`"


def find_metadata(root: Path, metadata: str | os.PathLike | None) -> Path:
    """The repository's ``data/`` folder: ``metadata`` (or its ``data/``), else searched under ``root``."""
    if metadata is not None:
        folder = Path(metadata).expanduser()
        if not folder.is_dir():
            raise MuzarrError(f"metadata={str(metadata)!r} is not a folder: expected the data/ folder of the "
                              "mtg-jamendo-dataset repository (or the repository itself)")
        return (folder / "data" if (folder / "data" / "splits").is_dir() else folder).resolve()
    for pattern in DATA_FOLDERS:
        found = sorted(p for p in root.glob(pattern) if p.is_dir())
        if found:
            return found[-1]
    raise MuzarrError(f"no MTG-Jamendo metadata in {root}: expected one of {', '.join(DATA_FOLDERS)} there "
                      f"(the mtg-jamendo-dataset repository's data/ folder), or pass --set options.metadata=<dir>; "
                      f"{_hint(root)}")


def _link_target(path: Path) -> Path:
    """``path``, or the file it names when it is a git symlink checked out as text (autotagging.tsv)."""
    if path.stat().st_size < 256:
        text = path.read_bytes().strip()
        if text and b"\t" not in text and b"\n" not in text:
            target = path.parent / text.decode("utf-8", "replace")
            if target.is_file() and target != path:
                return target
    return path


def read_tsv(path: Path, *, root: Path, prefix: str | None = None) -> dict[str, dict]:
    """The tracks of one MTG-Jamendo TSV, in file order, keyed by TRACK_ID.

    Each value is ``{"artist_id", "album_id", "path", "duration_s", "tags", "where"}`` with
    ``tags`` a tuple of tag names as written and ``where`` ``"<file> line <n>"`` for messages.
    Every field is checked; ``prefix`` (``"genre---"``, ...) is the category all tags must have.
    """
    try:
        text = _link_target(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MuzarrError(f"{path}: not UTF-8 text (bad byte at offset {error.start}): expected an MTG-Jamendo "
                          "TSV file of the mtg-jamendo-dataset repository") from None
    except OSError as error:
        raise MuzarrError(f"cannot read {path}: {error.strerror or error}") from None
    lines = text.splitlines()
    header = tuple(lines[0].split("\t")) if lines else ()
    if header != HEADER:
        found = " ".join(header)
        raise MuzarrError(f"{path} line 1: header is {found!r}, expected the tab-separated "
                          f"{' '.join(HEADER)} of an MTG-Jamendo TSV file")
    tracks: dict[str, dict] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        where = f"{path} line {number}"
        fields = line.split("\t")
        if len(fields) < 6:
            raise MuzarrError(f"{where}: {len(fields)} tab-separated field(s), expected TRACK_ID, ARTIST_ID, "
                              "ALBUM_ID, PATH, DURATION and at least one tag")
        for (column, start), value in zip(_IDS, fields):
            if not (value.startswith(start) and value[len(start):].isdigit()):
                raise MuzarrError(f"{where}: {column} {value!r} is not {start}<digits>: is a field missing, "
                                  "or a tab turned into spaces?")
        track = fields[0]
        try:
            duration = float(fields[4])
        except ValueError:
            duration = math.nan
        if not (math.isfinite(duration) and duration > 0):
            raise MuzarrError(f"{where}: DURATION {fields[4]!r} of {track} is not a positive number of seconds")
        tags = tuple(fields[5:])
        for tag in tags:
            if "---" not in tag or tag.startswith("---") or tag.endswith("---"):
                raise MuzarrError(f"{where}: tag {tag!r} of {track} is not <category>---<name> "
                                  "(an empty tag is two tabs in a row or a trailing tab)")
            if prefix and not tag.startswith(prefix):
                raise MuzarrError(f"{where}: tag {tag!r} of {track} is not a {prefix} tag: "
                                  f"{path.name} does not belong to this subset")
        if track in tracks:
            raise MuzarrError(f"{where}: TRACK_ID {track} appears twice (first at {tracks[track]['where']})")
        tracks[track] = {
            "artist_id": fields[1],
            "album_id": fields[2],
            "path": safe_relative_path(root, fields[3], where=where),
            "duration_s": duration,
            "tags": tags,
            "where": where,
        }
    return tracks


def read_splits(data: Path, stem: str, *, root: Path, prefix: str | None) -> tuple[dict, dict[str, list[str]]]:
    """``{"split-<k>": {part: tracks}}`` of every official split file found, and per split the files not found."""
    splits: dict[str, dict[str, dict]] = {}
    absent: dict[str, list[str]] = {}
    for k in range(N_SPLITS):
        for part in PARTS:
            path = data / "splits" / f"split-{k}" / f"{stem}-{part}.tsv"
            if path.is_file():
                splits.setdefault(f"split-{k}", {})[part] = read_tsv(path, root=root, prefix=prefix)
            else:
                absent.setdefault(f"split-{k}", []).append(path.relative_to(data).as_posix())
    return splits, absent


def _read_tag_list(data: Path, subset: str) -> tuple[list[str] | None, Path | None]:
    relative = TAG_LISTS.get(subset)
    path = data / relative if relative else None
    if path is None or not path.is_file():
        return None, None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise MuzarrError(f"{path}: expected one distinct tag per line (e.g. genre---rock), found {len(names)} "
                          f"lines with {len(set(names))} distinct tags")
    return names, path


def index_jamendo(
    root: str | os.PathLike,
    *,
    subset: str = "top50",
    metadata: str | os.PathLike | None = None,
) -> DatasetIndex:
    """Index MTG-Jamendo as a multi-label dataset of whole tracks.

    Parameters
    ----------
    root : path-like
        Folder holding the audio as ``<PATH>`` of the TSV files (``15/215.mp3``).
    subset : {"top50", "all", "genre", "instrument", "moodtheme"}
        Which autotagging file and split files are read (see the module docstring).
    metadata : path-like, optional
        The repository's ``data/`` folder (or the repository); default: searched under ``root``.

    Returns
    -------
    DatasetIndex
        ``clip_id`` is the TRACK_ID (``track_0000215``), ``path`` the PATH; metadata columns
        ``artist_id``, ``album_id`` and ``duration_s`` (DURATION). Labels come from
        ``autotagging[_<subset>].tsv`` when it exists (tracks in no split file get None in every
        scheme), else from the split files. ``classes``: ``tags/top50.txt`` for top50 where it
        exists, else the sorted tags of the rows. Tracks whose audio file is absent are left out
        and counted in ``info["missing_audio"]``; ``info["missing_splits"]`` names the splits
        with no file, ``info["missing_split_files"]`` the absent files of the splits found.
    """
    if subset not in SUBSETS:
        raise MuzarrError(f"subset={subset!r} is not an MTG-Jamendo subset; choose one of {', '.join(SUBSETS)}")
    root = require_dir(root, expected=f"{_EXPECTED}; {_hint(Path(root))}")
    data = find_metadata(root, metadata)
    stem, prefix = SUBSETS[subset], CATEGORIES.get(subset)
    splits, absent = read_splits(data, stem, root=root, prefix=prefix)
    if not splits:
        raise MuzarrError(f"no split file {stem}-{{train,validation,test}}.tsv in {data}/splits/split-0 .. "
                          f"split-{N_SPLITS - 1}: expected the data/ folder of the mtg-jamendo-dataset repository "
                          f"(or pass --set options.metadata=<dir>); {_hint(root)}")
    base = data / f"{stem}.tsv"
    if base.is_file():
        tracks, labels_from = read_tsv(base, root=root, prefix=prefix), base
    else:
        tracks, labels_from = {}, None
        for parts in splits.values():
            for rows in parts.values():
                for track, row in rows.items():
                    tracks.setdefault(track, row)
    assignment: dict[str, dict[str, str]] = {}
    for scheme, parts in splits.items():
        seen = assignment.setdefault(scheme, {})
        for part, rows in parts.items():
            for track, row in rows.items():
                if track in seen:
                    raise MuzarrError(f"{row['where']}: {track} is in the {seen[track]} and the {PARTS[part]} part "
                                      f"of {scheme}: a track belongs to one part of a split")
                if track not in tracks:
                    raise MuzarrError(f"{row['where']}: {track} is not in {base}: the split files and the "
                                      "autotagging file come from different versions of the dataset")
                seen[track] = PARTS[part]

    tag_list, tag_file = _read_tag_list(data, subset)
    if tag_list is not None:
        known = set(tag_list)
        for row in tracks.values():
            outside = [t for t in row["tags"] if t not in known]
            if outside:
                raise MuzarrError(f"{row['where']}: tag {outside[0]!r} is not in {tag_file}")
    classes = tuple(tag_list or sorted({t for row in tracks.values() for t in row["tags"]}))

    listed = list(tracks)
    missing = set(count_missing(root, [tracks[t]["path"] for t in listed]))
    keep = [t for t in listed if tracks[t]["path"] not in missing]
    if not keep:
        example = tracks[listed[0]]["path"]
        raise MuzarrError(f"none of the {len(listed)} tracks listed in {labels_from or data / 'splits'} is in {root}: "
                          f"expected the audio as <root>/<PATH> (e.g. {root / example}); {_hint(root)}")
    clips = pd.DataFrame(
        {
            "clip_id": pd.Series(keep, dtype=object),
            "path": pd.Series([tracks[t]["path"] for t in keep], dtype=object),
            "artist_id": pd.Series([tracks[t]["artist_id"] for t in keep], dtype=object),
            "album_id": pd.Series([tracks[t]["album_id"] for t in keep], dtype=object),
            "duration_s": [tracks[t]["duration_s"] for t in keep],
        }
    )
    labels = multi_hot([tracks[t]["tags"] for t in keep], classes)
    schemes = {scheme: [seen.get(t) for t in keep] for scheme, seen in assignment.items()}
    missing_examples = [tracks[t]["path"] for t in listed if tracks[t]["path"] in missing][:5]
    return DatasetIndex(
        root=str(root),
        clips=clips,
        task="multilabel",
        classes=classes,
        labels=labels,
        splits=make_splits(schemes, len(clips)),
        info={
            "subset": subset,
            "metadata": str(data),
            "labels_from": str(labels_from.relative_to(data)) if labels_from else "split files",
            "tag_list": str(tag_file.relative_to(data)) if tag_file else "sorted tags of the rows",
            "tracks_listed": len(listed),
            "split_sizes": {s: {p: sum(v == p for v in values) for p in PARTS.values()} for s, values in schemes.items()},
            "missing_splits": [scheme for scheme in absent if scheme not in splits],
            "missing_split_files": [f for scheme, files in absent.items() if scheme in splits for f in files],
            "tag_counts": dict(zip(classes, (int(c) for c in labels.sum(axis=0)))),
            "missing_audio": len(missing),
            "missing_audio_examples": missing_examples,
        },
    )
