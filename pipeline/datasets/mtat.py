"""MagnaTagATune (Law et al., ISMIR 2009): 25,863 clips of 29.1 s with 188 binary tags.

Source layout (``pipe download mtat``)::

    root/annotations_final.csv       tab-separated, every field double-quoted
    root/0/ ... root/f/              the MP3 clips, <folder>/<file>.mp3

Split schemes:

- ``dieleman`` (Dieleman & Schrauwen 2014): folders 0-b train, c valid, d-f test
  (18,709 / 1,825 / 5,329 clips; 18,706 train once the three zero-byte clips fail to decode).
- ``clean`` (Lee et al.; Won et al. 2020): the same folders, keeping only clips with at least
  one of the top-50 tags (15,244 / 1,529 / 4,332 after the broken clips).
- ``random``: a seeded random subset of ``random_split`` clips (seed 000's 7000/1500/1500).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.datasets._common import count_missing, make_splits, require_dir
from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex

FOLDERS = tuple("0123456789abcdef")
DIELEMAN = {**{f: "train" for f in "0123456789ab"}, "c": "valid", **{f: "test" for f in "def"}}
CLEAN_TAGS = 50

_EXPECTED = "the MagnaTagATune annotations (tab-separated, quoted) beside the folders 0..f"


def _hint(root: Path) -> str:
    return f"download with `pipe download mtat --to {root}`"


def read_annotations(path: Path) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Read ``annotations_final.csv``.

    Returns
    -------
    meta : pandas.DataFrame
        Columns ``clip_id`` (str) and ``mp3_path`` (str), one row per clip in file order.
    tag_names : list of str
        The tag columns in file order (188 in the real file).
    tags : numpy.ndarray [shape=(n_clips, n_tags), dtype=uint8]
    """
    try:
        # Tag columns parse as integers (fast); anything else is found and reported below.
        table = pd.read_csv(path, sep="\t", quotechar='"', dtype={"clip_id": str, "mp3_path": str},
                            keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MuzarrError(f"{path} is not a readable MagnaTagATune annotations file ({error}); "
                          f"expected {_EXPECTED}") from None
    columns = list(table.columns)
    if len(columns) < 3 or columns[0] != "clip_id" or columns[-1] != "mp3_path":
        raise MuzarrError(f"{path} has columns {columns[:3]}...{columns[-1:]}: expected a tab-separated header "
                          '"clip_id", the tag columns, then "mp3_path" (the official annotations_final.csv)')
    tag_names = columns[1:-1]
    for name in tag_names:
        column = table[name]
        numeric = pd.to_numeric(column, errors="coerce") if not pd.api.types.is_integer_dtype(column) else column
        bad = ~numeric.isin((0, 1)).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise MuzarrError(f"{path} line {row + 2}: tag {name!r} of clip_id {table['clip_id'].iloc[row]!r} "
                              f"is {str(column.iloc[row])!r}, expected \"0\" or \"1\"")
    tags = table[tag_names].to_numpy(dtype=np.uint8)
    meta = table[["clip_id", "mp3_path"]].astype(object).reset_index(drop=True)
    return meta, tag_names, tags


def top_tags(tags: np.ndarray, tag_names: list[str], n: int) -> np.ndarray:
    """Column positions of the ``n`` most frequent tags, most frequent first.

    Ties are broken by column order in the annotations file (the earlier column wins), so
    the choice is the same on every machine.
    """
    counts = tags.sum(axis=0, dtype=np.int64)
    return np.argsort(-counts, kind="stable")[:n]


def _folders(meta: pd.DataFrame, path: Path) -> np.ndarray:
    folder = meta["mp3_path"].str.split("/", n=1).str[0]
    bad = ~folder.isin(FOLDERS) | ~meta["mp3_path"].str.contains("/", regex=False)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise MuzarrError(f"{path} line {row + 2}: mp3_path {meta['mp3_path'].iloc[row]!r} of clip_id "
                          f"{meta['clip_id'].iloc[row]!r} is not under one of the folders 0..f")
    return folder.to_numpy(dtype=object)


def _random_subset(n: int, sizes: tuple[int, int, int], seed: int) -> tuple[np.ndarray, dict]:
    """Seeded random subset: the first ``sizes[0]`` of a permutation train, then valid, then test."""
    if len(sizes) != 3 or any(not isinstance(s, (int, np.integer)) or s < 0 for s in sizes):
        raise MuzarrError(f"random_split={sizes!r} must be three non-negative clip counts (train, valid, test)")
    requested = [int(s) for s in sizes]
    used = list(requested)
    note = {}
    if sum(requested) > n:
        used = [int(np.floor(s * n / sum(requested))) for s in requested]
        note = {"random_split_scaled": f"random_split {tuple(requested)} asks for {sum(requested)} clips but the "
                                       f"dataset has {n}: scaled down proportionally to {tuple(used)}"}
    order = np.random.default_rng(seed).permutation(n)
    out = np.full(n, None, dtype=object)
    start = 0
    for name, count in zip(("train", "valid", "test"), used):
        out[order[start : start + count]] = name
        start += count
    return out, {"random_split": used, **note}


def index_mtat(
    root: str | os.PathLike,
    *,
    tags: int = 50,
    random_split: tuple[int, int, int] = (7000, 1500, 1500),
    seed: int = 0,
    annotations: str = "annotations_final.csv",
) -> DatasetIndex:
    """Index MagnaTagATune as a multi-label dataset over its ``tags`` most frequent tags.

    Parameters
    ----------
    root : path-like
        Folder holding ``annotations_final.csv`` and the audio folders ``0`` .. ``f``.
    tags : int
        Number of tags kept, the most frequent first (ties: earlier column first). The
        ``clean`` scheme always filters on the top 50, whatever ``tags`` is.
    random_split : (int, int, int)
        Train, valid, test clip counts of the ``random`` scheme; scaled down proportionally
        (and said so in ``info``) when the dataset is smaller than their sum.
    seed : int
        Seed of the ``random`` scheme.
    annotations : str
        Annotations file name inside ``root`` (or an absolute path).

    Returns
    -------
    DatasetIndex
        ``clip_id`` is the MTAT clip id as a string, ``path`` the ``mp3_path``. Every
        annotated clip is kept, the three zero-byte clips included (they fail at decode);
        ``info["missing_audio"]`` counts clips whose file is absent.
    """
    root = require_dir(root, expected=f"{_EXPECTED}; {_hint(Path(root))}")
    path = Path(annotations) if Path(annotations).is_absolute() else root / annotations
    if not path.is_file():
        raise MuzarrError(f"no {annotations} in {root}: expected {_EXPECTED}; {_hint(root)}")
    if not any((root / folder).is_dir() for folder in FOLDERS):
        nested = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "0").is_dir() and (p / "f").is_dir()]
        found = f" (they seem to be in {nested[0]}: move them up)" if nested else " (unzip mp3.zip there)"
        raise MuzarrError(f"no audio folders 0..f in {root}: expected the MagnaTagATune MP3 folders "
                          f"beside {path.name}{found}; {_hint(root)}")
    meta, tag_names, all_tags = read_annotations(path)
    n = len(meta)
    if n == 0:
        raise MuzarrError(f"{path} has a header but no clips: expected 25,863 rows; {_hint(root)}")
    if not isinstance(tags, (int, np.integer)) or not 1 <= tags <= len(tag_names):
        raise MuzarrError(f"tags={tags!r} must be an integer from 1 to {len(tag_names)} (the tags in {path.name})")
    duplicated = meta["clip_id"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise MuzarrError(f"{path} line {row + 2}: clip_id {meta['clip_id'].iloc[row]!r} appears twice")

    chosen = top_tags(all_tags, tag_names, tags)
    clean_tags = top_tags(all_tags, tag_names, min(CLEAN_TAGS, len(tag_names)))
    folder = _folders(meta, path)
    dieleman = np.array([DIELEMAN[f] for f in folder], dtype=object)
    clean = np.where(all_tags[:, clean_tags].any(axis=1), dieleman, None)
    random, random_info = _random_subset(n, tuple(random_split), seed)

    clips = pd.DataFrame({"clip_id": meta["clip_id"], "path": meta["mp3_path"]}, dtype=object)
    missing = count_missing(root, clips["path"])
    counts = all_tags.sum(axis=0, dtype=np.int64)
    info = {
        "n_tags_available": len(tag_names),
        "tag_counts": {tag_names[i]: int(counts[i]) for i in chosen},
        "tie_break": "equal tag counts keep the annotations file's column order",
        "missing_audio": len(missing),
        "missing_audio_examples": missing[:5],
        **random_info,
    }
    return DatasetIndex(
        root=str(root),
        clips=clips,
        task="multilabel",
        classes=tuple(tag_names[i] for i in chosen),
        labels=np.ascontiguousarray(all_tags[:, chosen]),
        splits=make_splits({"dieleman": dieleman, "clean": clean, "random": random}, n),
        info=info,
    )
