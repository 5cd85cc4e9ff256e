"""The dataset index: what every recipe returns, before any audio is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.errors import MuzarrError

Task = Literal["multilabel", "multiclass"]
TASKS = ("multilabel", "multiclass")
SPLIT_VALUES = ("train", "valid", "test")


@dataclass(frozen=True)
class DatasetIndex:
    """One row per clip, in the order the clips are stored.

    Parameters
    ----------
    root : str
        Directory the clip paths are relative to.
    clips : pandas.DataFrame
        Columns ``clip_id`` (str, unique) and ``path`` (str, relative to ``root``, POSIX
        separators). Extra columns (e.g. ``duration_s``, ``genre``) are kept as metadata.
    task : {"multilabel", "multiclass"}
    classes : tuple of str
        Tag names (multilabel) or class names (multiclass), in label-column order.
    labels : numpy.ndarray
        multilabel: ``uint8 [shape=(n_clips, n_classes)]`` multi-hot rows.
        multiclass: ``int16 [shape=(n_clips,)]`` class index, ``-1`` where unlabelled.
    splits : pandas.DataFrame
        One column per split scheme (e.g. ``dieleman``, ``clean``, ``random``); values are
        ``"train"``, ``"valid"``, ``"test"`` or ``None`` (clip not in that scheme). Same row
        order as ``clips``.
    info : dict
        JSON-serialisable facts about the source worth keeping in the manifest (e.g. the
        number of tags available before the top-N cut, files listed but missing).
    """

    root: str
    clips: pd.DataFrame
    task: Task
    classes: tuple[str, ...]
    labels: np.ndarray
    splits: pd.DataFrame
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.clips)
        for column in ("clip_id", "path"):
            if column not in self.clips.columns:
                raise MuzarrError(f"dataset index has no {column!r} column (columns: {list(self.clips.columns)})")
        if self.task not in TASKS:
            raise MuzarrError(f"task={self.task!r} must be one of {TASKS}")
        duplicated = self.clips["clip_id"].astype(str).duplicated()
        if duplicated.any():
            first = self.clips["clip_id"][duplicated].iloc[0]
            raise MuzarrError(f"dataset index has duplicate clip_id {first!r}: clip ids must be unique")
        expected = (n, len(self.classes)) if self.task == "multilabel" else (n,)
        if self.labels.shape != expected:
            raise MuzarrError(f"labels have shape {self.labels.shape}, expected {expected} for a {self.task} index")
        if len(self.splits) != n:
            raise MuzarrError(f"splits have {len(self.splits)} rows for {n} clips")
        for scheme in self.splits.columns:
            bad = set(self.splits[scheme].dropna().unique()) - set(SPLIT_VALUES)
            if bad:
                raise MuzarrError(f"split scheme {scheme!r} has values {sorted(bad)}; allowed: {SPLIT_VALUES} or empty")

    def __len__(self) -> int:
        return len(self.clips)

    def audio_paths(self) -> list[str]:
        """The file each clip is read from: its ``path`` under ``root``."""
        root = Path(self.root)
        return [str(root / p) for p in self.clips["path"]]

    def labels_table(self) -> pd.DataFrame:
        """Labels as the table stored in ``tables/labels.parquet``.

        multilabel: ``clip_id`` and one uint8 column per tag; multiclass: ``clip_id``,
        ``label`` (class name or null) and ``label_index`` (int16, -1 where unlabelled).
        """
        ids = self.clips["clip_id"].astype(str).to_numpy()
        if self.task == "multilabel":
            table = pd.DataFrame(self.labels.astype(np.uint8), columns=list(self.classes))
            table.insert(0, "clip_id", ids)
            return table
        index = self.labels.astype(np.int16)
        label = pd.Series([self.classes[i] if i >= 0 else None for i in index], dtype=object)
        return pd.DataFrame({"clip_id": ids, "label": label, "label_index": index})

    def splits_table(self) -> pd.DataFrame:
        """Splits as the table stored in ``tables/splits.parquet``: ``clip_id`` + one column per scheme."""
        table = self.splits.reset_index(drop=True).astype(object).where(self.splits.notna().to_numpy(), None)
        table.insert(0, "clip_id", self.clips["clip_id"].astype(str).to_numpy())
        return table
