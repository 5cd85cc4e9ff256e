"""GTZAN (Tzanetakis & Cook 2002): 1000 clips of 30 s, 10 genres x 100.

Accepted layouts (the first that holds genre folders wins)::

    root/genres_original/<genre>/<genre>.000NN.wav     Kaggle copy
    root/Data/genres_original/<genre>/...              Kaggle copy, unzipped with its top folder
    root/genres/<genre>/<genre>.000NN.au               original marsyas tarball
    root/<genre>/...                                   root is the genres folder itself

Split schemes: ``random`` (stratified by genre, seeded) and, when ``filtered_dir`` is given,
``filtered`` (the fault-filtered split of Kereliuk, Sturm & Larsen 2015: 443/197/290).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.datasets._common import (
    AUDIO_EXTENSIONS,
    check_split_sizes,
    list_folder,
    make_splits,
    require_dir,
    require_readable,
    stratified_split,
    unreadable_hint,
)
from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
LAYOUTS = ("genres_original", "Data/genres_original", "genres", ".")
FILTERED_FILES = {"train": "train_filtered.txt", "valid": "valid_filtered.txt", "test": "test_filtered.txt"}

_EXPECTED = ("the 10 genre folders (blues, classical, ..., rock) as genres_original/<genre>/<genre>.000NN.wav "
             "(Kaggle) or genres/<genre>/<genre>.000NN.au (original)")


def find_genres_dir(root: Path) -> Path:
    """The folder whose sub-folders are the genres, searched in :data:`LAYOUTS` order."""
    for layout in LAYOUTS:
        candidate = root / layout
        if candidate.is_dir() and any((candidate / genre).is_dir() for genre in GENRES):
            return candidate.resolve()
    found = sorted(p.name for p in root.iterdir())[:10]
    raise MuzarrError(f"no GTZAN genre folders in {root} (it holds {found or 'nothing'}): expected {_EXPECTED}")


def read_filtered_split(filtered_dir: str | os.PathLike) -> dict[str, str]:
    """``"<genre>/<stem>"`` -> train/valid/test from the three fault-filtered lists.

    Each line is a path such as ``blues/blues.00029.wav``; the extension is ignored so the
    lists also match the ``.au`` files of the original release.
    """
    folder = Path(filtered_dir).expanduser()
    assignment: dict[str, str] = {}
    for split, name in FILTERED_FILES.items():
        path = folder / name
        if not path.is_file():
            raise MuzarrError(f"no {name} in {folder}: filtered_dir must hold {', '.join(FILTERED_FILES.values())} "
                              "(one '<genre>/<genre>.000NN.wav' per line)")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            entry = line.strip()
            if not entry:
                continue
            parts = PurePosixPath(entry.replace("\\", "/")).parts
            if len(parts) < 2 or parts[-2] not in GENRES:
                raise MuzarrError(f"{path} line {number}: {entry!r} is not '<genre>/<file>' with a GTZAN genre")
            key = f"{parts[-2]}/{PurePosixPath(parts[-1]).stem}"
            if key in assignment:
                raise MuzarrError(f"{path} line {number}: {entry!r} is already in the {assignment[key]} list")
            assignment[key] = split
    return assignment


def index_gtzan(
    root: str | os.PathLike,
    *,
    split_seed: int = 0,
    split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
    filtered_dir: str | os.PathLike | None = None,
) -> DatasetIndex:
    """Index GTZAN as a 10-class genre dataset.

    Parameters
    ----------
    root : path-like
        GTZAN folder in one of the layouts of this module's docstring.
    split_seed : int
        Seed of the ``random`` scheme.
    split_sizes : (float, float, float)
        Train, valid, test fractions of the ``random`` scheme, applied per genre.
    filtered_dir : path-like, optional
        Folder with ``train_filtered.txt``, ``valid_filtered.txt``, ``test_filtered.txt``;
        adds the ``filtered`` scheme (clips not listed get None).

    Returns
    -------
    DatasetIndex
        ``clip_id`` is the file stem (``blues.00000``), ``path`` is relative to ``root``
        (``genres_original/blues/blues.00000.wav``). ``classes`` is always the canonical
        10-genre list, even for a partial folder. Every audio file is kept, the broken
        ``jazz.00054.wav`` of the Kaggle copy included (it fails at decode).
    """
    root = require_dir(root, expected=_EXPECTED)
    check_split_sizes(split_sizes)
    genres_dir = require_readable(find_genres_dir(root))
    rows = []
    unreadable: list[dict] = []
    for genre in GENRES:
        folder = genres_dir / genre
        if not folder.is_dir():
            continue
        for name in list_folder(folder, root=root, unreadable=unreadable):
            if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS) or not (folder / name).is_file():
                continue
            rows.append((PurePosixPath(name).stem, (folder / name).relative_to(root).as_posix(), genre))
    if not rows:
        raise MuzarrError(f"the genre folders in {genres_dir} hold no audio files{unreadable_hint(unreadable)}: expected {_EXPECTED}")
    clips = pd.DataFrame(rows, columns=["clip_id", "path", "genre"], dtype=object)
    duplicated = clips["clip_id"].duplicated(keep=False)
    if duplicated.any():
        raise MuzarrError(f"GTZAN clips {sorted(clips['path'][duplicated])[:4]} share a name: keep one format "
                          "per clip (e.g. only the .wav files)")
    labels = np.array([GENRES.index(g) for g in clips["genre"]], dtype=np.int16)
    schemes = {"random": stratified_split(labels, split_sizes=split_sizes, seed=split_seed)}
    info: dict = {
        "layout": genres_dir.relative_to(root).as_posix() if genres_dir != root else ".",
        "clips_per_genre": {g: int((clips["genre"] == g).sum()) for g in GENRES},
        "ignored_folders": sorted(p.name for p in genres_dir.iterdir() if p.is_dir() and p.name not in GENRES),
        **({"unreadable_folders": unreadable} if unreadable else {}),
    }
    if filtered_dir is not None:
        assignment = read_filtered_split(filtered_dir)
        keys = clips["genre"] + "/" + clips["clip_id"]
        schemes["filtered"] = [assignment.get(k) for k in keys]
        info["filtered_listed_not_found"] = len(set(assignment) - set(keys))
    return DatasetIndex(
        root=str(root),
        clips=clips,
        task="multiclass",
        classes=GENRES,
        labels=labels,
        splits=make_splits(schemes, len(clips)),
        info=info,
    )
