"""Any folder of audio files: the class of a clip is the first folder under the root.

::

    root/<class>/<file>            class = <class>
    root/<class>/<any>/<depth>     class = <class> (files at any depth)
    root/<file>                    unlabelled (label -1)
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import pandas as pd

from pipeline.datasets._common import (
    AUDIO_EXTENSIONS,
    check_split_sizes,
    class_indices,
    clip_ids_from_paths,
    list_audio_files,
    make_splits,
    require_dir,
    stratified_split,
    unreadable_hint,
)
from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex


def index_folder(
    root: str | os.PathLike,
    *,
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    split_seed: int = 0,
    split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> DatasetIndex:
    """Index a folder tree of audio files as a multi-class dataset.

    Parameters
    ----------
    root : path-like
        Folder to walk (symbolic links followed).
    extensions : tuple of str
        File extensions taken as audio, matched case-insensitively on the name only: a
        text file named ``x.wav`` is listed and fails at decode. Hidden files and folders
        (``.name``) are skipped and counted in ``info["skipped_hidden"]``.
    split_seed : int
        Seed of the ``random`` scheme.
    split_sizes : (float, float, float)
        Train, valid, test fractions of the ``random`` scheme, applied per class
        (unlabelled files form a group of their own).

    Returns
    -------
    DatasetIndex
        ``path`` is relative to ``root``; ``clip_id`` is the path without its extension
        (the full path where two files differ only by extension); ``classes`` are the
        first-level folder names holding audio, sorted; files directly in ``root`` get
        label ``-1``. Metadata column ``label_name`` (None where unlabelled).
    """
    expected = "audio files in class folders, root/<class>/<file>"
    root = require_dir(root, expected=expected)
    check_split_sizes(split_sizes)
    if not extensions:
        raise MuzarrError("extensions=() lists no audio extension; e.g. ('.wav', '.mp3')")
    paths, n_hidden, unreadable = list_audio_files(root, extensions=extensions)
    if not paths:
        raise MuzarrError(f"no audio files under {root}{unreadable_hint(unreadable)}: expected {expected} with an extension in "
                          f"{', '.join(extensions)} (case-insensitive)")
    names = [PurePosixPath(p).parts[0] if len(PurePosixPath(p).parts) > 1 else None for p in paths]
    classes = tuple(sorted({n for n in names if n is not None}))
    labels = class_indices(names, classes)
    clips = pd.DataFrame(
        {
            "clip_id": pd.Series(clip_ids_from_paths(paths), dtype=object),
            "path": pd.Series(paths, dtype=object),
            "label_name": pd.Series(names, dtype=object),
        }
    )
    return DatasetIndex(
        root=str(root),
        clips=clips,
        task="multiclass",
        classes=classes,
        labels=labels,
        splits=make_splits({"random": stratified_split(labels, split_sizes=split_sizes, seed=split_seed)}, len(paths)),
        info={"unlabelled": int((labels < 0).sum()), "skipped_hidden": n_hidden, "extensions": list(extensions),
              **({"unreadable_folders": unreadable} if unreadable else {})},
    )
