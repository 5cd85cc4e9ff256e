"""A user's own list of clips: a CSV manifest of paths and labels.

::

    path,label,split                path,tags,clip_id
    rock/a.mp3,rock,train           a.wav,guitar;slow,a
    jazz/b.wav,jazz,test            b.wav,,b

Columns: ``path`` (required; relative to the root, or absolute inside it), then either
``label`` (one class -> multiclass) or ``tags`` (``separator``-separated -> multilabel),
optional ``split`` (train/valid/test -> scheme ``given``) and ``clip_id``; any other column
is kept as metadata.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.datasets._common import (
    check_split_sizes,
    class_indices,
    clip_ids_from_paths,
    count_missing,
    make_splits,
    multi_hot,
    require_dir,
    safe_relative_path,
    stratified_split,
)
from pipeline.errors import MuzarrError
from pipeline.index import SPLIT_VALUES, DatasetIndex

_FORMAT = "a CSV with a 'path' column and a 'label' or 'tags' column (optional 'split', 'clip_id')"


def _first_duplicate(values: pd.Series) -> tuple[int, int] | None:
    """Positions of the first value seen twice, or None."""
    seen: dict[str, int] = {}
    for position, value in enumerate(values):
        if value in seen:
            return seen[value], position
        seen[value] = position
    return None


def _read_rows(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The manifest's rows as text cells, and the line each row starts on; a row with more or fewer
    fields than the header, or a column named twice, is one MuzarrError naming its line.

    Read with :mod:`csv` rather than pandas: pandas takes a row with one field too many as a row
    whose first field is its index (every later column shifted by one), fills missing trailing
    fields with empty cells, and renames a second ``label`` column ``label.1``, all silently."""
    try:
        # utf-8-sig: spreadsheet programs start their CSV exports with a byte-order mark
        text = path.read_bytes().decode("utf-8-sig")  # line ends kept as written: csv reads quoted ones
    except UnicodeDecodeError as error:
        raise MuzarrError(f"{path} is not UTF-8 text (bad byte at offset {error.start}): save it as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header: list[str] | None = None
    rows, lines = [], []
    try:
        start = 1
        for fields in reader:
            if fields in ([], [""]):  # a blank line
                start = reader.line_num + 1
                continue
            if header is None:
                header = [f.strip() for f in fields]
                twice = sorted({c for c in header if header.count(c) > 1})
                if twice:
                    raise MuzarrError(f"{path.name} line {start}: column {twice[0]!r} appears more than once in the "
                                      f"header {header}: keep one")  # fmt: skip
            elif len(fields) != len(header):
                more = len(fields) > len(header)
                fix = ("quote a value that holds a comma, or name the extra column in the header" if more
                       else "give every row one field per column, an empty one too (a.wav,,train)")  # fmt: skip
                raise MuzarrError(
                    f"{path.name} line {start}: {len(fields)} field{'s' * (len(fields) != 1)}, "
                    f"{'more' if more else 'fewer'} than the {len(header)} columns of the header ({', '.join(header)}): {fix}"
                )
            else:
                rows.append(fields)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as error:
        raise MuzarrError(f"{path.name} line {reader.line_num}: not readable as CSV ({error}): expected {_FORMAT}") from None
    if header is None:
        raise MuzarrError(f"{path} is not a readable CSV (it is empty): expected {_FORMAT}")
    return pd.DataFrame(rows, columns=header, dtype=object), lines


def index_csv(
    root: str | os.PathLike,
    *,
    manifest: str = "manifest.csv",
    separator: str = ";",
    split_seed: int = 0,
    split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> DatasetIndex:
    """Index the clips listed in a CSV manifest.

    Parameters
    ----------
    root : path-like
        Folder the clip paths are relative to.
    manifest : str
        Comma-separated manifest file, inside ``root`` or an absolute path.
    separator : str
        Separator between the tags of the ``tags`` column.
    split_seed : int
        Seed of the ``random`` scheme.
    split_sizes : (float, float, float)
        Train, valid, test fractions of the ``random`` scheme (stratified by label for a
        ``label`` manifest).

    Returns
    -------
    DatasetIndex
        Rows in manifest order. Split schemes ``random`` and, when the manifest has a
        ``split`` column, ``given`` (empty cells -> None). An empty ``label`` cell means
        unlabelled (-1); an empty ``tags`` cell an all-zero row. Files are not opened:
        ``info["missing_audio"]`` counts the listed paths that do not exist.
    """
    root = require_dir(root, expected=f"the clips and {manifest}")
    check_split_sizes(split_sizes)
    if not separator:
        raise MuzarrError("separator='' cannot split the tags column; use e.g. ';'")
    path = Path(manifest) if Path(manifest).is_absolute() else root / manifest
    if not path.is_file():
        raise MuzarrError(f"no manifest {manifest} in {root}: expected {_FORMAT}")
    table, lines = _read_rows(path)
    columns = list(table.columns)
    if "path" not in columns:
        raise MuzarrError(f"{path} has no 'path' column (columns: {columns}): expected {_FORMAT}")
    if ("label" in columns) == ("tags" in columns):
        which = "both 'label' and 'tags'" if "label" in columns else "neither 'label' nor 'tags'"
        raise MuzarrError(f"{path} has {which} (columns: {columns}): give 'label' for one class per clip "
                          f"or 'tags' ({separator!r}-separated) for several")
    if table.empty:
        raise MuzarrError(f"{path} has a header but no rows: expected one row per clip")

    def line(position: int) -> str:
        return f"{path.name} line {lines[position]}"

    paths = [safe_relative_path(root, raw, where=line(i)) for i, raw in enumerate(table["path"])]
    table["path"] = pd.Series(paths, dtype=object)
    duplicate = _first_duplicate(table["path"])
    if duplicate:
        first, again = duplicate
        raise MuzarrError(f"{line(again)}: path {paths[again]!r} is already listed on {line(first)}")
    if "clip_id" in columns:
        ids = [str(v).strip() for v in table["clip_id"]]
        empty = [i for i, v in enumerate(ids) if not v]
        if empty:
            raise MuzarrError(f"{line(empty[0])}: empty clip_id; fill it, or drop the clip_id column "
                              "to derive ids from paths")
    else:
        ids = clip_ids_from_paths(paths)
    duplicate = _first_duplicate(pd.Series(ids, dtype=object))
    if duplicate:
        first, again = duplicate
        raise MuzarrError(f"{line(again)}: clip_id {ids[again]!r} is already used on {line(first)}")
    table["clip_id"] = pd.Series(ids, dtype=object)

    if "label" in columns:
        names = [v.strip() or None for v in table["label"]]
        classes = tuple(sorted({n for n in names if n is not None}))
        task, labels = "multiclass", class_indices(names, classes)
        groups = labels
    else:
        rows = [[t.strip() for t in v.split(separator) if t.strip()] for v in table["tags"]]
        classes = tuple(sorted({t for r in rows for t in r}))
        task, labels = "multilabel", multi_hot(rows, classes)
        groups = np.zeros(len(rows), dtype=np.int16)
    if not classes:
        raise MuzarrError(f"{path}: every {'label' if task == 'multiclass' else 'tags'} cell is empty; "
                          "label at least one clip")

    schemes = {"random": stratified_split(groups, split_sizes=split_sizes, seed=split_seed)}
    if "split" in columns:
        given = [v.strip() or None for v in table["split"]]
        bad = [i for i, v in enumerate(given) if v is not None and v not in SPLIT_VALUES]
        if bad:
            raise MuzarrError(f"{line(bad[0])}: split {given[bad[0]]!r} is not one of {', '.join(SPLIT_VALUES)} "
                              "(or empty)")
        schemes["given"] = given
    metadata = [c for c in columns if c not in ("clip_id", "path", "label", "tags", "split")]
    clips = table[["clip_id", "path", *metadata]].reset_index(drop=True)
    missing = count_missing(root, paths)
    return DatasetIndex(
        root=str(root),
        clips=clips,
        task=task,
        classes=classes,
        labels=labels,
        splits=make_splits(schemes, len(clips)),
        info={"manifest": str(path), "missing_audio": len(missing), "missing_audio_examples": missing[:5]},
    )
