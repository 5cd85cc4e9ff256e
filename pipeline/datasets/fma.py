"""Free Music Archive (Defferrard et al., ISMIR 2017): genre recognition on fma_small/medium/large.

Source layout (``pipe download fma_small``)::

    root/fma_metadata/tracks.csv             two-row header: (group, field)
    root/fma_<subset>/<id[:3]>/<id:06d>.mp3  e.g. fma_small/000/000010.mp3

Labels are ``('track', 'genre_top')``; the ``official`` split scheme is ``('set', 'split')``
(training/validation/test); the subsets nest: small is in medium is in large (= all tracks).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.datasets._common import (
    class_indices,
    list_folder,
    make_splits,
    require_dir,
    require_readable,
    unreadable_hint,
)
from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex

SUBSETS = {
    "small": ("small",),
    "medium": ("small", "medium"),
    "large": ("small", "medium", "large"),
    "full": ("small", "medium", "large"),
}
SPLITS = {"training": "train", "validation": "valid", "test": "test"}
COLUMNS = (("set", "subset"), ("set", "split"), ("track", "genre_top"))


def _hint(root: Path, subset: str) -> str:
    return f"download with `pipe download fma_{subset} --to {root}`"


def read_tracks(path: Path) -> pd.DataFrame:
    """The ``COLUMNS`` of ``tracks.csv`` (two-row header), indexed by integer track id.

    Only the three needed columns are parsed: the real file is ~100k rows x 52 columns
    with multi-line text fields. Equivalent to ``pd.read_csv(path, header=[0, 1],
    index_col=0)[list(COLUMNS)]``.
    """
    expected = "expected FMA's tracks.csv with a two-row header such as ('set', 'subset'), ('track', 'genre_top')"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            groups, fields, names = next(reader), next(reader), next(reader, [])
    except (StopIteration, UnicodeDecodeError, csv.Error):
        raise MuzarrError(f"{path} is not a readable FMA tracks.csv: {expected}") from None
    header = list(zip(groups, fields))
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise MuzarrError(f"{path} has no column(s) {missing}: {expected}")
    # pandas writes the index name ("track_id") on a third header line
    skip = 3 if names and names[0] == "track_id" and not any(names[1:]) else 2
    positions = [header.index(c) for c in COLUMNS]
    try:
        table = pd.read_csv(path, header=None, skiprows=skip, usecols=[0, *positions], dtype=object,
                            keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise MuzarrError(f"{path} is not a readable FMA tracks.csv ({error}): {expected}") from None
    try:
        index = pd.Index(table[0].astype(np.int64), name="track_id")
    except (TypeError, ValueError):
        raise MuzarrError(f"{path}: the first column must hold integer track ids "
                          f"(found {table[0].head(3).tolist()})") from None
    columns = {c: [v if v != "" else None for v in table[p]] for c, p in zip(COLUMNS, positions, strict=True)}
    return pd.DataFrame(columns, index=index, dtype=object)


def _present_files(audio_dir: Path, root: Path) -> tuple[set[str], list[dict]]:
    """``"<id[:3]>/<file>"`` of every file in the audio folder's 3-digit sub-folders (names only),
    and the sub-folders that cannot be listed (as ``info["unreadable_folders"]`` records them)."""
    present: set[str] = set()
    unreadable: list[dict] = []
    for name in list_folder(require_readable(audio_dir), root=root, unreadable=unreadable):
        if (audio_dir / name).is_dir():
            present.update(f"{name}/{file}" for file in list_folder(audio_dir / name, root=root, unreadable=unreadable))
    return present, unreadable


def index_fma(
    root: str | os.PathLike,
    *,
    subset: str = "small",
    metadata: str | os.PathLike | None = None,
) -> DatasetIndex:
    """Index one FMA subset as a multi-class genre dataset.

    Parameters
    ----------
    root : path-like
        Folder holding ``fma_<subset>/`` (and usually ``fma_metadata/``), or the
        ``fma_<subset>`` folder itself.
    subset : {"small", "medium", "large", "full"}
        Tracks whose ``('set', 'subset')`` is this subset or a smaller one.
    metadata : path-like, optional
        Path of ``tracks.csv``; default ``fma_metadata/tracks.csv`` in ``root`` or beside
        the audio folder.

    Returns
    -------
    DatasetIndex
        ``clip_id`` is the 6-digit track id (``"000010"``), ``path`` is relative to ``root``;
        metadata columns ``track_id`` and ``genre``. ``classes`` are the genres of the subset
        in ``tracks.csv``, sorted, so a partial download keeps the same classes. Tracks
        whose audio file is absent are left out and counted in ``info["missing_audio"]``.
    """
    if subset not in SUBSETS:
        raise MuzarrError(f"subset={subset!r} is not an FMA subset; choose one of {', '.join(SUBSETS)}")
    folder = f"fma_{subset}"
    root = require_dir(root, expected=f"{folder}/ and fma_metadata/tracks.csv; {_hint(Path(root), subset)}")
    if (root / folder).is_dir():
        audio_dir = root / folder
    elif root.name == folder:
        audio_dir = root
    else:
        raise MuzarrError(f"no {folder} folder in {root}: expected {folder}/<id[:3]>/<id:06d>.mp3 "
                          f"(e.g. {folder}/000/000010.mp3) beside fma_metadata/; {_hint(root, subset)}")
    if metadata is None:
        candidates = [root / "fma_metadata" / "tracks.csv", audio_dir.parent / "fma_metadata" / "tracks.csv"]
        tracks_csv = next((c for c in candidates if c.is_file()), None)
        if tracks_csv is None:
            raise MuzarrError(f"no fma_metadata/tracks.csv in {root}: unzip fma_metadata.zip beside {folder}/ "
                              f"or pass metadata=<path of tracks.csv>; {_hint(root, subset)}")
    else:
        tracks_csv = Path(metadata).expanduser()
        if not tracks_csv.is_file():
            raise MuzarrError(f"metadata={str(metadata)!r} is not a file: expected the path of FMA's tracks.csv")
    tracks = read_tracks(tracks_csv)

    selected = tracks[tracks[("set", "subset")].isin(SUBSETS[subset])]
    if selected.empty:
        found = sorted(tracks[("set", "subset")].dropna().astype(str).unique())
        raise MuzarrError(f"{tracks_csv} lists no track of subset {subset!r} (subsets found: {found})")
    split_values = selected[("set", "split")]
    unknown = sorted(set(split_values.dropna().astype(str)) - set(SPLITS))
    if unknown:
        raise MuzarrError(f"{tracks_csv}: ('set', 'split') has values {unknown}; expected training/validation/test")
    genres = np.array([g if isinstance(g, str) and g else None for g in selected[("track", "genre_top")]], dtype=object)
    classes = tuple(sorted({g for g in genres if isinstance(g, str)}))

    ids = [f"{track_id:06d}" for track_id in selected.index]
    relative_dir = audio_dir.relative_to(root)
    in_folder = [f"{i[:3]}/{i}.mp3" for i in ids]
    present, unreadable = _present_files(audio_dir, root)
    found = np.array([p in present for p in in_folder], dtype=bool)
    # a track in a folder that cannot be listed is not missing: that folder is a failure of its own
    locked = {Path(u["path"]).name for u in unreadable}
    missing = [i for i, ok in zip(ids, found) if not ok and i[:3] not in locked]
    if not found.any():
        raise MuzarrError(f"none of the {len(ids)} fma_{subset} tracks listed in {tracks_csv.name} is in "
                          f"{audio_dir}{unreadable_hint(unreadable)}: expected {folder}/<id[:3]>/<id:06d>.mp3 (e.g. {in_folder[0]}); "
                          f"{_hint(root, subset)}")

    keep = np.flatnonzero(found)
    clips = pd.DataFrame(
        {
            "clip_id": pd.Series([ids[i] for i in keep], dtype=object),
            "path": pd.Series([(relative_dir / in_folder[i]).as_posix() for i in keep], dtype=object),
            "track_id": selected.index.to_numpy()[keep],
            "genre": pd.Series(genres[keep], dtype=object),
        }
    )
    official = [SPLITS.get(v) if isinstance(v, str) else None for v in split_values.to_numpy()[keep]]
    return DatasetIndex(
        root=str(root),
        clips=clips,
        task="multiclass",
        classes=classes,
        labels=class_indices(list(clips["genre"]), classes),
        splits=make_splits({"official": official}, len(clips)),
        info={
            "subset": subset,
            "tracks_csv": str(tracks_csv),
            "tracks_in_subset": len(ids),
            "missing_audio": len(missing),
            "missing_audio_examples": missing[:5],
            **({"unreadable_folders": unreadable} if unreadable else {}),
        },
    )
