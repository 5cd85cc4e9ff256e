"""Helpers the dataset recipes share: folder checks, file listing, path safety, seeded splits."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.errors import MuzarrError

AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav", ".mp3", ".flac", ".ogg", ".au", ".aiff", ".aif", ".m4a", ".aac", ".opus",
)


def require_dir(root: str | os.PathLike, *, expected: str) -> Path:
    """``root`` as an absolute :class:`~pathlib.Path`, or a MuzarrError saying what belongs there.

    Parameters
    ----------
    root : path-like
        Source folder given by the user.
    expected : str
        What the folder should hold, e.g. ``"the MagnaTagATune folders 0..f and
        annotations_final.csv"``; used in the error message.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise MuzarrError(f"dataset folder {path} does not exist: expected {expected}")
    if not path.is_dir():
        raise MuzarrError(f"dataset root {path} is a file, not a folder: expected {expected}")
    return require_readable(path.resolve())


def require_readable(folder: Path) -> Path:
    """``folder`` if it can be listed and entered, else a MuzarrError: without it there is no dataset."""
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
        os.stat(folder / ".")  # entering it needs the search (x) permission too
    except OSError as error:
        raise MuzarrError(f"cannot read dataset folder {folder}: {_reason(error)}: make it readable "
                          "(e.g. chmod u+rx) or choose another source folder") from None
    return folder


def _reason(error: OSError) -> str:
    return f"{type(error).__name__}: {error.strerror or error}"


def unreadable_folder(root: Path, folder: str | os.PathLike, error: OSError) -> dict:
    """How the index's ``info["unreadable_folders"]`` records a folder under ``root`` that could not be listed."""
    return {"path": Path(os.path.relpath(folder, root)).as_posix(), "message": _reason(error)}


def unreadable_hint(unreadable: list[dict]) -> str:
    """`` (<folder>/ cannot be read: <reason>)`` for a message saying no clips were found, or nothing."""
    return f" ({unreadable[0]['path']}/ cannot be read: {unreadable[0]['message']})" if unreadable else ""


def list_folder(folder: Path, *, root: Path, unreadable: list[dict]) -> list[str]:
    """The names in ``folder``, sorted; one that cannot be listed gives none and is added to ``unreadable``."""
    try:
        return sorted(os.listdir(folder))
    except OSError as error:
        unreadable.append(unreadable_folder(root, folder, error))
        return []


def check_split_sizes(split_sizes: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, valid, test)`` fractions: three non-negative numbers summing to 1."""
    sizes = tuple(split_sizes)
    if len(sizes) != 3 or any(not isinstance(s, (int, float)) or s < 0 for s in sizes):
        raise MuzarrError(f"split_sizes={split_sizes!r} must be three non-negative fractions (train, valid, test)")
    if abs(sum(sizes) - 1.0) > 1e-6:
        raise MuzarrError(f"split_sizes={split_sizes!r} must sum to 1 (they sum to {sum(sizes):g})")
    return float(sizes[0]), float(sizes[1]), float(sizes[2])


def _allocate(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Largest-remainder allocation of ``n`` items to three parts; ties go to the earlier part."""
    exact = [n * f for f in fractions]
    counts = [int(np.floor(x)) for x in exact]
    order = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def stratified_split(groups: Sequence, *, split_sizes: Sequence[float], seed: int) -> np.ndarray:
    """Seeded train/valid/test assignment that keeps each group's proportions.

    Each group (class label; ``-1`` for unlabelled clips is a group of its own) is shuffled
    with one ``numpy.random.default_rng(seed)`` generator, visiting groups in sorted order,
    and cut by largest remainder: 100 clips at (0.8, 0.1, 0.1) give exactly 80/10/10, a group
    of 1 goes to train.

    Parameters
    ----------
    groups : sequence [shape=(n,)]
        Group key of each clip.
    split_sizes : (float, float, float)
        Train, valid and test fractions, summing to 1.
    seed : int

    Returns
    -------
    numpy.ndarray [shape=(n,), dtype=object]
        ``"train"``, ``"valid"`` or ``"test"`` per clip.
    """
    fractions = check_split_sizes(split_sizes)
    keys = pd.Series(list(groups), dtype=object)
    out = np.empty(len(keys), dtype=object)
    rng = np.random.default_rng(seed)
    for _, members in sorted(keys.groupby(keys, sort=False, dropna=False).indices.items(), key=lambda kv: str(kv[0])):
        members = rng.permutation(np.asarray(members))
        n_train, n_valid, _ = _allocate(len(members), fractions)
        out[members[:n_train]] = "train"
        out[members[n_train : n_train + n_valid]] = "valid"
        out[members[n_train + n_valid :]] = "test"
    return out


def make_splits(schemes: Mapping[str, Iterable], n: int) -> pd.DataFrame:
    """One object column per split scheme (values train/valid/test/None), ``n`` rows."""
    columns = {}
    for name, values in schemes.items():
        column = np.empty(n, dtype=object)
        column[:] = list(values)
        columns[name] = column
    return pd.DataFrame(columns, index=pd.RangeIndex(n), dtype=object)


def safe_relative_path(root: Path, raw: str, *, where: str) -> str:
    """``raw`` (relative to ``root`` or absolute inside it) as a relative POSIX path.

    Raises a MuzarrError naming ``where`` (e.g. ``"manifest.csv line 7"``) when the path is
    empty, escapes ``root`` through ``..``, or is absolute and outside ``root``.
    """
    text = str(raw).strip()
    if not text:
        raise MuzarrError(f"{where}: empty path")
    candidate = Path(text)
    if candidate.is_absolute():
        base = os.path.realpath(root)
        normal = os.path.normpath(candidate)
        # The root may have been reached through a symlink: also try the real folder of the
        # file (not of the file itself, which may be a link to audio elsewhere).
        for option in (normal, os.path.join(os.path.realpath(os.path.dirname(normal)), os.path.basename(normal))):
            if option != base and os.path.commonpath([base, option]) == base:
                return PurePosixPath(Path(option).relative_to(base)).as_posix()
        raise MuzarrError(f"{where}: absolute path {text!r} is outside the dataset root {root}; "
                          "give paths relative to the root or inside it")
    parts = []
    for part in PurePosixPath(text.replace("\\", "/")).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise MuzarrError(f"{where}: path {text!r} escapes the dataset root {root} through '..'; "
                                  "every clip must live inside the root")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise MuzarrError(f"{where}: path {text!r} names the dataset root itself, not a file")
    return "/".join(parts)


def list_audio_files(
    root: Path, *, extensions: Sequence[str] = AUDIO_EXTENSIONS
) -> tuple[list[str], int, list[dict]]:
    """Relative POSIX paths of every file under ``root`` whose extension is in ``extensions``.

    The match is case-insensitive and looks at the name only (a text file named ``.wav`` is
    listed; it fails when decoded). Hidden files and folders (name starting with ``.``, e.g.
    macOS ``._x.wav`` resource forks) are skipped. Symbolic links are followed, each real
    folder once. Sorted by path.

    Returns
    -------
    paths : list of str
    n_hidden : int
        How many hidden files with an audio extension were skipped.
    unreadable : list of dict
        ``{"path", "message"}`` of each folder that could not be listed (its files are not
        in ``paths``): a failure of the build, like a file that cannot be decoded.
    """
    wanted = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    paths: list[str] = []
    n_hidden = 0
    seen: set[str] = set()
    unreadable: list[dict] = []

    def record(error: OSError) -> None:
        unreadable.append(unreadable_folder(root, error.filename, error))

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=record):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = Path(folder).relative_to(root)
        for name in files:
            if not name.lower().endswith(wanted):
                continue
            if name.startswith("."):
                n_hidden += 1
                continue
            paths.append((relative / name).as_posix())
    return sorted(paths), n_hidden, sorted(unreadable, key=lambda u: u["path"])


def clip_ids_from_paths(paths: Sequence[str]) -> list[str]:
    """Clip ids: the relative path without its extension (``rock/song.mp3`` -> ``rock/song``).

    Where two files differ only by extension (``a.wav`` and ``a.mp3``), both keep their full
    path as id so that ids stay unique and readable.
    """
    stems = [str(PurePosixPath(p).with_suffix("")) if PurePosixPath(p).suffix else p for p in paths]
    counts = pd.Series(stems, dtype=object).value_counts()
    clashing = set(counts.index[counts > 1])
    return [p if s in clashing else s for p, s in zip(paths, stems)]


def count_missing(root: Path, paths: Iterable[str]) -> list[str]:
    """Paths (relative to ``root``) that do not exist on disk; existence only, content unread.

    A file in a folder that cannot be entered is not missing: it fails at decode, with the reason.
    """
    return [p for p in paths if not _exists(os.path.join(root, p))]


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return True


def multi_hot(rows: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """uint8 ``[shape=(len(rows), len(classes))]`` multi-hot matrix of tag-name lists."""
    position = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    for r, names in enumerate(rows):
        for name in names:
            labels[r, position[name]] = 1
    return labels


def class_indices(values: Sequence, classes: Sequence[str]) -> np.ndarray:
    """int16 class index of each value (``-1`` for None/NaN/empty)."""
    position = {name: i for i, name in enumerate(classes)}
    out = np.full(len(values), -1, dtype=np.int16)
    for i, value in enumerate(values):
        if isinstance(value, str) and value in position:
            out[i] = position[value]
    return out
