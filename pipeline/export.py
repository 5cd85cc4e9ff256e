"""Tabular features out of a store as the tables people know (``pipe export``)."""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from pipeline.errors import MuzarrError
from pipeline.store.reader import Store

FORMATS = ("csv", "parquet")


def feature_table(store: Store, features: str) -> pd.DataFrame:
    """``filename, length, <columns>, label`` for every stored (sub-)clip of ``tabular/<features>``.

    The layout of GTZAN's Kaggle tables: ``filename`` is the file's name (``blues.00000.wav``;
    sub-clip ``k`` of a split store becomes ``blues.00000.k.wav`` as in ``features_3_sec.csv``),
    ``length`` the number of samples the features were computed over, ``label`` the class
    (multiclass) or the tags joined by ``;`` (multilabel). Failed clips, and clips that failed
    this set only, are left out.
    """
    name = features if features.startswith("tabular/") else f"tabular/{features}"
    if name not in store.arrays:
        tabular = [n.removeprefix("tabular/") for n in store.arrays if n.startswith("tabular/")]
        raise MuzarrError(
            f"store {store.url} has no tabular set {features!r}"
            + (f"; it has: {', '.join(tabular)}" if tabular else "; add one with `pipe build ... --tabular gtzan57`")
        )
    array = store.array(name)
    columns = list(array.attrs.get("columns") or [f"f{i}" for i in range(array.shape[-1])])
    rows = np.setdiff1d(np.flatnonzero(store.ok), list(store.array_failures(name)))  # stored in this array
    values = store.read(name, rows) if len(rows) else np.empty((0, *array.shape[1:]), np.float32)
    feature = store.feature(name)
    length = store.config().clip.n_samples(feature.sample_rate)
    paths = store.clips["path"].to_numpy()[rows]
    labels = _label_text(store)[rows]
    if values.ndim == 3:  # sub-clips: one row per segment
        k = values.shape[1]
        names = [_segment_name(p, j) for p in paths for j in range(k)]
        labels = np.repeat(labels, k)
        values = values.reshape(-1, values.shape[-1])
    else:
        names = [PurePosixPath(p).name for p in paths]
    table = pd.DataFrame(values.astype(np.float64), columns=columns)
    table.insert(0, "filename", names)
    table.insert(1, "length", length)
    table["label"] = labels
    return table


def _segment_name(path: str, k: int) -> str:
    name = PurePosixPath(path)
    return f"{name.stem}.{k}{name.suffix}"


def _label_text(store: Store) -> np.ndarray:
    labels = store.labels()
    if store.task == "multiclass":
        return labels["label"].to_numpy(dtype=object)
    tags = store.classes
    matrix = labels[tags].to_numpy()
    return np.array([";".join(t for t, on in zip(tags, row) if on) for row in matrix], dtype=object)


def export_table(store: Store, features: str, *, out: str, fmt: str | None = None) -> pd.DataFrame:
    """Write :func:`feature_table` to ``out`` as CSV or Parquet (by ``fmt`` or the file suffix)."""
    fmt = fmt or PurePosixPath(out).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise MuzarrError(f"export format {fmt!r} must be one of {', '.join(FORMATS)} (or name the file .csv/.parquet)")
    table = feature_table(store, features)
    if fmt == "csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)
    return table
