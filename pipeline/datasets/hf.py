"""A Hugging Face ``datasets`` dataset with an ``Audio`` column: a hub name, a ``save_to_disk`` folder or Parquet files.

::

    pipe build hf --source my_dataset/              save_to_disk folder (a Dataset or a DatasetDict)
    pipe build hf --source data/                    Parquet files: train-00000-of-00002.parquet, test.parquet, ...
    pipe build hf --set options.name=user/dataset   the hub (where the network reaches)

The audio is never decoded by ``datasets`` (from 4.0 on it needs torchcodec and FFmpeg's shared
libraries even to read a WAV): the column is cast to ``Audio(decode=False)`` and read as its stored
``{"bytes", "path"}``. Embedded bytes are written once, at index time, to a cache folder of files
named by their content digest (``options.cache_dir``); rows that only hold a path are read from that
path. muzarr's own decoders then read both, on the Dask workers, like any file: a row whose audio does
not decode is a recorded failure of the build.

Why a cache of files rather than reading bytes out of the Arrow/Parquet files in the workers: the
workers, the first-clip check and the track planner all take a path, and stay unchanged; the index
streams the dataset a batch of rows at a time (memory bounded by a batch, whatever the dataset's
size); a file is written under a temporary name and renamed, and one that is already there with the
same digest is kept, so an interrupted or repeated index (a resumed or repaired build) writes only
what is missing. The cost is one copy of the embedded audio on disk.

Labels: a ``ClassLabel`` column is multiclass (its names are the classes, -1 unlabelled), a list of
``ClassLabel`` is multilabel, and a list of 0/1 values of the same length in every row (multi-hot,
named with ``options.label``) is multilabel with ``options.classes`` as names. Split schemes: ``hf``
(the dataset's own splits: train, validation/valid/dev -> valid, test; other names are in no part)
and ``random`` (seeded, stratified by class).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from pipeline.datasets._common import AUDIO_EXTENSIONS, check_split_sizes, make_splits, stratified_split
from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex

#: the dataset's split names that mean a muzarr part; any other split's clips are stored in no part of ``hf``
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "validation": "valid", "valid": "valid", "val": "valid", "dev": "valid",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}  # fmt: skip
DEFAULT_CACHE = "~/.cache/muzarr/hf"
ROWS_PER_READ = 64  # rows of audio held at once while the index streams the dataset
# Columns of the store's clips table the dataset's own columns must not overwrite
RESERVED = frozenset({"clip_id", "path", "status", "stage", "error", "note", "seconds", "hf_split", "hf_row", "audio_path"})
# The first bytes of the formats muzarr decodes: an extracted file gets the extension of what it holds
MAGIC = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"FORM", ".aiff"), (b".snd", ".au"))


def _datasets():
    try:
        import datasets
    except ImportError:
        raise MuzarrError("recipe 'hf' reads Hugging Face datasets with the datasets package: pip install datasets") from None
    return datasets


@dataclass(frozen=True)
class _Split:
    """One split of the dataset: its name, its features and its rows, read a batch at a time."""

    name: str
    features: Any  # datasets.Features
    batches: Any  # (columns) -> Iterator[pyarrow.Table | pyarrow.RecordBatch] of those columns


def index_hf(
    root: str | os.PathLike,
    *,
    name: str = "",
    config: str = "",
    revision: str = "",
    audio: str = "",
    label: str = "",
    classes: str = "",
    id_column: str = "",
    cache_dir: str = DEFAULT_CACHE,
    split_seed: int = 0,
    split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> DatasetIndex:
    """Index a ``datasets`` dataset; embedded audio is extracted to ``cache_dir`` (see the module docstring).

    Parameters
    ----------
    root : path-like
        A ``save_to_disk`` folder, a Parquet file or a folder of Parquet files; unused with ``name``.
    name : str
        A dataset on the Hugging Face hub (``user/dataset``): loaded with ``datasets.load_dataset``.
    config, revision : str
        The hub dataset's configuration and revision (empty: its defaults).
    audio : str
        The audio column (empty: the only ``Audio`` column).
    label : str
        The label column (empty: the only ``ClassLabel`` or list-of-``ClassLabel`` column).
    classes : str
        ``;``-separated class names of a multi-hot ``label`` column (empty: ``0``, ``1``, ...).
    id_column : str
        A column of unique clip ids (empty: ``<split>/<row>``).
    cache_dir : str
        Where embedded audio is written, one file per distinct content.
    split_seed : int
        Seed of the ``random`` scheme.
    split_sizes : (float, float, float)
        Train, valid, test fractions of the ``random`` scheme.

    Returns
    -------
    DatasetIndex
        Rows split after split, in the dataset's order. ``path`` is relative to the cache folder
        (extracted bytes) or absolute (a row that holds a path). Metadata columns ``hf_split``,
        ``hf_row``, ``audio_path`` (the path the dataset gives, or None), and the dataset's other
        scalar columns.
    """
    check_split_sizes(split_sizes)
    for option, value in (("name", name), ("audio", audio), ("label", label), ("id_column", id_column)):
        if value != value.strip():
            raise MuzarrError(f"recipe 'hf': option {option}={value!r} has spaces around it: remove them")
    if not cache_dir.strip():
        raise MuzarrError("recipe 'hf': cache_dir='' names no folder: give one for the extracted audio, e.g. ~/.cache/muzarr/hf")
    splits, base, where = (_hub_splits(name, config, revision) if name else _local_splits(Path(root).expanduser()))
    audio = _pick_audio(splits, audio, where)
    label, kind, names = _pick_label(splits, label, classes, where)
    cache = Path(cache_dir).expanduser().resolve()
    extra = [c for c in _scalar_columns(splits[0].features, exclude={audio, label, id_column})
             if all(c in s.features for s in splits)]  # fmt: skip
    rows: dict[str, list] = {key: [] for key in ("clip_id", "path", "hf_split", "hf_row", "audio_path", *extra)}
    values: list = []
    counts = {"extracted": 0, "by_path": 0, "no_audio": 0}
    for split in splits:
        if id_column and id_column not in split.features:
            raise MuzarrError(f"{where}: split {split.name!r} has no column id_column={id_column!r}; "
                              f"columns: {', '.join(split.features)}")  # fmt: skip
        row = 0
        for batch in split.batches(list(dict.fromkeys(c for c in (audio, label, id_column, *extra) if c))):
            table = batch.to_pydict()
            for i, sound in enumerate(table[audio]):
                rows["path"].append(_audio_file(sound, cache, base, split.name, row, counts))
                rows["audio_path"].append((sound or {}).get("path"))
                rows["hf_split"].append(split.name)
                rows["hf_row"].append(row)
                rows["clip_id"].append(str(table[id_column][i]) if id_column else f"{split.name}/{row}")
                for column in extra:
                    rows[column].append(table[column][i])
                values.append(table[label][i])
                row += 1
    if not values:
        raise MuzarrError(f"{where} holds no rows: expected one row per clip")
    clips = pd.DataFrame({key: pd.Series(column, dtype=object) for key, column in rows.items()})
    clips["hf_row"] = clips["hf_row"].astype(np.int64)
    duplicated = clips["clip_id"].duplicated()
    if duplicated.any():
        raise MuzarrError(f"{where}: id_column={id_column!r} holds {clips['clip_id'][duplicated].iloc[0]!r} more than once: "
                          "choose a column of unique ids, or drop the option to use <split>/<row>")  # fmt: skip
    labels, names = _labels(values, kind, names, label, clips, where)
    kind = "multiclass" if kind == "multiclass" else "multilabel"
    groups = labels if kind == "multiclass" else np.zeros(len(clips), dtype=np.int16)
    hf = [SPLIT_NAMES.get(s.lower()) for s in clips["hf_split"]]
    unmapped = sorted({s.name for s in splits if s.name.lower() not in SPLIT_NAMES})
    missing = [p for p in clips["path"] if not os.path.exists(cache / p)]
    info = {
        "hf_source": where, "audio_column": audio, "label_column": label,
        "splits": {s.name: int((clips["hf_split"] == s.name).sum()) for s in splits},
        "extracted_audio": counts["extracted"], "audio_by_path": counts["by_path"], "rows_without_audio": counts["no_audio"],
        "missing_audio": len(missing), "missing_audio_examples": missing[:5],
    }  # fmt: skip
    if unmapped:
        info["splits_in_no_part"] = unmapped
    schemes = {"hf": hf, "random": stratified_split(groups, split_sizes=split_sizes, seed=split_seed)}
    return DatasetIndex(root=str(cache), clips=clips, task=kind, classes=names, labels=labels,
                        splits=make_splits(schemes, len(clips)), info=info)  # fmt: skip


# -- where the dataset comes from -------------------------------------------------------------------------------


def _hub_splits(name: str, config: str, revision: str) -> tuple[list[_Split], Path, str]:
    datasets = _datasets()
    where = f"hub dataset {name!r}" + (f" ({config})" if config else "")
    try:
        loaded = datasets.load_dataset(name, config or None, revision=revision or None)
    except Exception as error:  # noqa: BLE001 - network, authentication, unknown name: all one line at this edge
        raise MuzarrError(
            f"cannot load {where} from the Hugging Face hub: {type(error).__name__}: {_first_line(error)}: check the name and "
            "the network (or save_to_disk it where the network reaches and give that folder as --source)"
        ) from None
    return _dataset_splits(loaded, where), Path.cwd(), where


def _local_splits(root: Path) -> tuple[list[_Split], Path, str]:
    expected = "a save_to_disk folder (dataset_dict.json or state.json), a .parquet file or a folder of .parquet files"
    if not root.exists():
        raise MuzarrError(f"dataset source {root} does not exist: expected {expected}")
    where = str(root.resolve())
    if root.is_file():
        if root.suffix.lower() != ".parquet":
            raise MuzarrError(f"dataset source {root} is a file but not .parquet: expected {expected}")
        return _parquet_splits([root.resolve()], root.resolve().parent), root.resolve().parent, where
    root = root.resolve()
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        datasets = _datasets()
        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as error:  # noqa: BLE001 - a damaged or foreign folder: one line
            raise MuzarrError(f"cannot read the save_to_disk folder {root}: {type(error).__name__}: {_first_line(error)}") from None
        return _dataset_splits(loaded, where), root, where
    files = sorted(p for p in root.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise MuzarrError(f"no dataset in {root}: expected {expected}")
    return _parquet_splits(files, root), root, where


def _dataset_splits(loaded, where: str) -> list[_Split]:
    """The splits of a ``Dataset`` (its own split name, or train) or a ``DatasetDict``, in its order."""
    datasets = _datasets()
    named = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(str(loaded.split or "train"), loaded)]
    splits = []
    for split_name, dataset in named:
        features = dataset.features
        for column, feature in features.items():
            if isinstance(feature, datasets.Audio):  # the stored {"bytes", "path"}, never decoded by datasets
                dataset = dataset.cast_column(column, datasets.Audio(decode=False))

        def batches(columns, dataset=dataset):
            return dataset.select_columns(columns).with_format("arrow").iter(batch_size=ROWS_PER_READ)

        splits.append(_Split(str(split_name), features, batches))
    if not splits:
        raise MuzarrError(f"{where} holds no split")
    return splits


def _parquet_splits(files: list[Path], root: Path) -> list[_Split]:
    """Parquet files grouped by the split their path names (``train-00000-of-00002.parquet``, ``test/x.parquet``),
    train where none is named, as the hub lays out a dataset's files."""
    import pyarrow.parquet as pq

    datasets = _datasets()
    grouped: dict[str, list[Path]] = {}
    for path in files:
        grouped.setdefault(_split_of(path.relative_to(root)), []).append(path)
    order = list(dict.fromkeys([*(n for n in SPLIT_NAMES if n in grouped), *sorted(grouped)]))
    splits = []
    for split_name in order:
        paths = grouped[split_name]
        try:
            schemas = [pq.read_schema(p) for p in paths]
        except Exception as error:  # noqa: BLE001 - pyarrow's errors for a damaged footer vary by version
            raise MuzarrError(f"cannot read Parquet file among {[str(p) for p in paths][:3]}: {type(error).__name__}: "
                              f"{_first_line(error)}") from None  # fmt: skip
        features = datasets.Features.from_arrow_schema(schemas[0])
        for path, schema in zip(paths[1:], schemas[1:]):
            if datasets.Features.from_arrow_schema(schema) != features:
                raise MuzarrError(f"{path} has other columns or features than {paths[0]}: one split, one schema")

        def batches(columns, paths=paths):
            for path in paths:
                yield from pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_READ, columns=columns)

        splits.append(_Split(split_name, features, batches))
    return splits


def _split_of(relative: Path) -> str:
    """The split a Parquet file's path names: a folder, or the first word of its name, that is a split name."""
    words = [*relative.parts[:-1], relative.name.split("-")[0].split(".")[0].split("_")[0]]
    for word in reversed(words):
        if word.lower() in SPLIT_NAMES:
            return word
    return "train"


# -- which columns -------------------------------------------------------------------------------------------------


def _pick_audio(splits: list[_Split], audio: str, where: str) -> str:
    features = splits[0].features
    found = [c for c, f in features.items() if _is_audio(f)]
    if audio:
        if audio not in features:
            raise MuzarrError(f"{where} has no column audio={audio!r}; columns: {', '.join(features)}")
        if not _is_audio(features[audio]):
            raise MuzarrError(f"{where}: column {audio!r} is {features[audio]!r}, not an Audio column; Audio columns: {found or 'none'}")
        return audio
    if len(found) != 1:
        which = "no Audio column" if not found else f"{len(found)} Audio columns ({', '.join(found)})"
        raise MuzarrError(f"{where} has {which}; columns: {', '.join(features)}: name the audio with --set options.audio=COLUMN")
    for split in splits[1:]:
        if found[0] not in split.features:
            raise MuzarrError(f"split {split.name!r} of {where} has no column {found[0]!r}")
    return found[0]


def _is_audio(feature) -> bool:
    """An ``Audio`` feature, or its storage as Parquet written without the dataset's features holds it."""
    datasets = _datasets()
    if isinstance(feature, datasets.Audio):
        return True
    return isinstance(feature, dict) and set(feature) == {"bytes", "path"}


def _inner(feature):
    """The element feature of a list feature (``List``, ``Sequence``, ``LargeList``, ``[feature]``), or None."""
    if isinstance(feature, list) and len(feature) == 1:
        return feature[0]
    inner = getattr(feature, "feature", None)
    return None if isinstance(inner, dict) else inner


def _pick_label(splits: list[_Split], label: str, classes: str, where: str) -> tuple[str, str, tuple[str, ...]]:
    """The label column, the task it gives and the class names."""
    datasets = _datasets()
    features = splits[0].features

    def kind_of(feature) -> str | None:
        if isinstance(feature, datasets.ClassLabel):
            return "multiclass"
        inner = _inner(feature)
        if isinstance(inner, datasets.ClassLabel):
            return "multilabel"
        if isinstance(inner, datasets.Value) and (inner.dtype == "bool" or inner.dtype.startswith(("int", "uint", "float"))):
            return "multihot"
        return None

    labelled = [c for c, f in features.items() if kind_of(f) in ("multiclass", "multilabel")]
    if not label:
        if len(labelled) != 1:
            which = "no ClassLabel column" if not labelled else f"{len(labelled)} label columns ({', '.join(labelled)})"
            raise MuzarrError(f"{where} has {which}; columns: {', '.join(features)}: choose one with --set options.label=COLUMN "
                              "(a ClassLabel, a list of ClassLabel, or a multi-hot list of 0/1)")  # fmt: skip
        label = labelled[0]
    if label not in features:
        raise MuzarrError(f"{where} has no column label={label!r}; columns: {', '.join(features)}")
    kind = kind_of(features[label])
    if kind is None:
        raise MuzarrError(f"{where}: column {label!r} is {features[label]!r}: a label column is a ClassLabel, a list of "
                          f"ClassLabel or a multi-hot list of 0/1 (ClassLabel columns here: {labelled or 'none'})")  # fmt: skip
    for split in splits[1:]:
        if split.features.get(label) != features[label]:
            raise MuzarrError(f"split {split.name!r} of {where} has column {label!r} as {split.features.get(label)!r}, "
                              f"split {splits[0].name!r} as {features[label]!r}: the splits must share their classes")  # fmt: skip
    if kind == "multihot":
        return label, kind, tuple(n.strip() for n in classes.split(";")) if classes else ()  # checked in _labels
    if classes:
        raise MuzarrError(f"{where}: options.classes names the columns of a multi-hot label; {label!r} is a "
                          "ClassLabel that names its own classes: drop the option")  # fmt: skip
    class_label = features[label] if kind == "multiclass" else _inner(features[label])
    return label, kind, tuple(str(n) for n in class_label.names)


def _scalar_columns(features, *, exclude: set[str]) -> list[str]:
    """The dataset's columns of plain values, kept as metadata of the clips (not the audio or the label)."""
    datasets = _datasets()
    return [c for c, f in features.items() if c not in exclude and c not in RESERVED and isinstance(f, datasets.Value)
            and f.dtype != "binary" and not f.dtype.startswith(("large_binary", "binary"))]  # fmt: skip


def _labels(values: list, kind: str, names: tuple[str, ...], label: str, clips: pd.DataFrame,
            where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The label array of ``kind`` (multiclass, multilabel: lists of class indices, multihot) and the class names."""

    def row(i: int) -> str:
        return f"{where}: split {clips['hf_split'].iloc[i]!r} row {clips['hf_row'].iloc[i]}"

    def index(i: int, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(names):
            raise MuzarrError(f"{row(i)}: {label} holds {value!r}, not a class of the column's {len(names)} names")
        return value

    if kind == "multiclass":
        labels = np.full(len(values), -1, dtype=np.int16)
        for i, value in enumerate(values):
            if value is not None and value != -1:
                labels[i] = index(i, value)
        return labels, names
    if kind == "multilabel":
        labels = np.zeros((len(values), len(names)), dtype=np.uint8)
        for i, value in enumerate(values):
            labels[i, [index(i, v) for v in value or []]] = 1
        return labels, names
    width = len(names) or len(values[0] or [])
    labels = np.zeros((len(values), width), dtype=np.uint8)
    for i, value in enumerate(values):
        if value is None or len(value) != width:
            raise MuzarrError(f"{row(i)}: {label} holds {None if value is None else len(value)} values, not one per class "
                              f"({width}{' in options.classes' if names else ', as the first row'})")  # fmt: skip
        if any(v not in (0, 1) for v in value):
            raise MuzarrError(f"{row(i)}: {label}={value!r:.80} is not multi-hot (a 0 or 1 per class)")
        labels[i] = value
    if not width:
        raise MuzarrError(f"{where}: the multi-hot column {label!r} holds empty lists: no class to learn")
    return labels, names or tuple(str(j) for j in range(width))


# -- the audio of a row ----------------------------------------------------------------------------------------------


def _audio_file(sound: dict | None, cache: Path, base: Path, split: str, row: int, counts: dict) -> str:
    """Where the workers read the audio of one row: a cache file of its bytes, or the path it holds."""
    data, path = (sound or {}).get("bytes"), (sound or {}).get("path")
    if data:
        counts["extracted"] += 1
        return _extract(data, cache, hint=path)
    if path:
        counts["by_path"] += 1
        candidate = Path(path).expanduser()
        return str(candidate if candidate.is_absolute() else (base / candidate).resolve())
    counts["no_audio"] += 1
    return f"no-audio-in-dataset/{split}/{row}"  # never written: the clip fails as "file not found" under this name


def _extract(data: bytes, cache: Path, *, hint: str | None) -> str:
    """``data`` written once as ``<cache>/<xx>/<digest><ext>`` (kept if already there); its path relative to ``cache``."""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    relative = f"{digest[:2]}/{digest}{_extension(data, hint)}"
    target = cache / relative
    try:
        if target.is_file() and target.stat().st_size == len(data):
            return relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as error:
        raise MuzarrError(
            f"cannot write the dataset's audio to {target}: {error.strerror or type(error).__name__}: free space there or choose "
            "another folder with --set options.cache_dir=DIR"
        ) from None
    return relative


def _extension(data: bytes, hint: str | None) -> str:
    suffix = PurePosixPath(hint or "").suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return suffix
    for magic, extension in MAGIC:
        if data.startswith(magic):
            return extension
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:  # an MPEG frame header
        return ".mp3"
    return ".bin"  # the decoders look at the content: the name only helps a person


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
