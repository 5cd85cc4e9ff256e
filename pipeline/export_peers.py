"""A store's split as the formats other data layers read (``pipe export --format datasets|webdataset``).

* ``datasets``: a ``save_to_disk`` folder of a ``DatasetDict``, one dataset per split part (train,
  validation, test: the names Hugging Face uses), read back with ``datasets.load_from_disk``. Columns:
  ``clip_id``, every exported array under its store name (``waveform``, ``logmel/<variant>``) with its
  stored dtype and shape, and ``label`` (``ClassLabel``) or ``labels`` (a list of ``ClassLabel``).
* ``webdataset``: tar shards ``<part>-000000.tar`` written with webdataset's ``ShardWriter``; a sample
  is the store row ``<key>`` (9 digits): ``<key>.<array>.npy`` for each array (``/`` in an array's name
  becomes ``.``: ``logmel.mel96_sr12000_fft512_hop256.npy``) and ``<key>.json`` with ``clip_id``, ``row``
  and the labels (class names and indices).

Only stored clips are written: failed clips, and clips that failed one of the exported arrays (they hold
its fill value there), are left out and counted. Arrays are read a few clips at a time, so memory stays
bounded whatever the store's size. The output is written beside ``out`` under a temporary name and
renamed when complete: an interrupted export leaves no half-written folder under ``out``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import MuzarrError
from pipeline.store.reader import Store

FORMATS = ("datasets", "webdataset")
PARTS = {"train": "train", "valid": "validation", "test": "test"}  # muzarr's part -> Hugging Face's split name
ROWS_PER_READ = 32
SHARD_BYTES = 1 << 30  # webdataset's advice: shards of 100 MB to a few GB
SHARD_SAMPLES = 10_000


@dataclass(frozen=True)
class PeerExport:
    """What an export wrote: rows per split (by the format's split name), and the clips left out."""

    out: str
    fmt: str
    rows: dict[str, int]
    left_out: int

    def line(self) -> str:
        parts = ", ".join(f"{name} {n}" for name, n in self.rows.items())
        skipped = f"; {self.left_out} clip(s) left out (failed, or failed an exported array)" if self.left_out else ""
        return f"{self.out}: {self.fmt}, {parts} clip(s){skipped}"


def export_peer(store: Store, *, fmt: str, out: str, split: str | None = None, arrays: str | None = None) -> PeerExport:
    """Write ``split`` (``part`` of the store's first scheme, or ``scheme:part``; None: every part) of ``store``'s
    ``arrays`` (comma-separated names; None: every array) to the folder ``out`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise MuzarrError(f"export format {fmt!r} must be one of {', '.join(FORMATS)}")
    names = _arrays(store, arrays)
    parts = _parts(store, split)
    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MuzarrError(f"{target} already exists: choose another --out, or remove it first (an export never replaces files)")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    rows, left_out = {}, 0
    try:
        partial.mkdir(parents=True)
        selected = {}
        for part, (candidates, total) in parts.items():
            kept = _stored(store, candidates, names)
            left_out += total - len(kept)
            if len(kept):  # a part without a stored clip is not written (an empty split helps no reader)
                selected[PARTS[part]] = kept
        if not selected:
            raise MuzarrError(f"--split {split!r}: every clip there failed one of the arrays {', '.join(names)}: nothing to export")
        if fmt == "datasets":
            _write_datasets(store, selected, names, partial)
        else:
            _write_webdataset(store, selected, names, partial)
        rows = {split_name: len(kept) for split_name, kept in selected.items()}
        if target.exists():
            target.rmdir()  # an empty folder, checked above
        os.replace(partial, target)
    except OSError as error:
        raise MuzarrError(f"cannot write {target}: {error.strerror or type(error).__name__}: free space or choose another --out") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return PeerExport(str(target), fmt, rows, left_out)


def _arrays(store: Store, arrays: str | None) -> list[str]:
    """The arrays to export: those named, or every array of the clips' data."""
    known = list(store.arrays)
    if not arrays:  # a track store's extents arrays place its tracks in the store: no data of a clip
        placing = {info.extents for info in store.arrays.values() if info.extents}
        return [name for name in known if name not in placing]
    names = [a.strip() for a in arrays.split(",") if a.strip()]
    unknown = [a for a in names if a not in known]
    if unknown or not names:
        raise MuzarrError(f"--arrays {arrays!r}: store {store.url} has no array {unknown[0] if unknown else ''!r}; its arrays: "
                          f"{', '.join(known)}")  # fmt: skip
    return list(dict.fromkeys(names))


def _parts(store: Store, split: str | None) -> dict[str, tuple[np.ndarray, int]]:
    """``part -> (row numbers of its ok clips, how many clips it has in all)`` of the requested part(s)."""
    scheme, _, part = (split or "").rpartition(":")
    scheme = scheme or store.config().splits[0]
    if part and part not in PARTS:
        raise MuzarrError(f"--split {split!r}: the part must be one of {', '.join(PARTS)} (or scheme:part, e.g. random:train)")
    column = None
    chosen = {}
    for p in [part] if part else PARTS:
        rows = store.split(scheme, p)  # refuses an unknown scheme, naming the store's
        column = store.splits()[scheme].to_numpy(dtype=object) if column is None else column
        chosen[p] = (rows, int((column == p).sum()))
    if not any(len(rows) for rows, _ in chosen.values()):
        raise MuzarrError(f"--split {split or scheme!r}: store {store.url} has no stored clip there")
    return chosen


def _stored(store: Store, rows: np.ndarray, names: list[str]) -> np.ndarray:
    """``rows`` without the clips that failed one of the arrays ``names`` (they hold its fill value)."""
    failed = {row for name in names for row in store.array_failures(name)}
    return np.array([r for r in rows if int(r) not in failed], dtype=np.int64)


def _chunks(rows: np.ndarray):
    for start in range(0, len(rows), ROWS_PER_READ):
        yield rows[start : start + ROWS_PER_READ]


def _values(store: Store, name: str, rows: np.ndarray) -> list[np.ndarray]:
    """The stored values of array ``name`` for ``rows``, one array per clip (a whole track in a track store)."""
    if store.arrays[name].extents:
        return [store.track(name, int(r)) for r in rows]
    return list(store.read(name, rows))


def _label_matrix(store: Store) -> np.ndarray:
    """int16 class index per row (multiclass, -1 unlabelled) or uint8 multi-hot rows (multilabel)."""
    labels = store.labels()
    if store.task == "multiclass":
        return labels["label_index"].to_numpy(dtype=np.int16)
    return labels[store.classes].to_numpy(dtype=np.uint8)


def _label_json(store: Store, row: int, matrix: np.ndarray) -> dict:
    if store.task == "multiclass":
        index = int(matrix[row])
        return {"label": store.classes[index] if index >= 0 else None, "label_index": index}
    on = [int(j) for j in np.flatnonzero(matrix[row])]
    return {"labels": [store.classes[j] for j in on], "label_indices": on}


# -- Hugging Face datasets -------------------------------------------------------------------------------------------


def _write_datasets(store: Store, selected: dict[str, np.ndarray], names: list[str], folder: Path) -> None:
    try:
        import datasets
        from datasets.arrow_writer import ArrowWriter
    except ImportError:
        raise MuzarrError("--format datasets writes with the Hugging Face datasets package: pip install datasets") from None
    datasets.disable_progress_bars()
    features = datasets.Features({"clip_id": datasets.Value("string"), **{n: _feature(store, n) for n in names}})
    if store.task == "multiclass":
        features["label"] = datasets.ClassLabel(names=store.classes)
    else:
        features["labels"] = datasets.Sequence(datasets.ClassLabel(names=store.classes))
    labels = _label_matrix(store)
    ids = store.clips["clip_id"].astype(str).to_numpy()
    scratch = folder / "_arrow"
    scratch.mkdir()
    parts = {}
    for split_name, rows in selected.items():
        path = scratch / f"{split_name}.arrow"
        with ArrowWriter(features=features, path=str(path)) as writer:
            for chunk in _chunks(rows):
                batch = {"clip_id": [str(ids[r]) for r in chunk]}
                for name in names:
                    batch[name] = _values(store, name, chunk)
                if store.task == "multiclass":
                    batch["label"] = [int(labels[r]) for r in chunk]
                else:
                    batch["labels"] = [_label_json(store, int(r), labels)["label_indices"] for r in chunk]
                writer.write_batch(batch)
            writer.finalize()
        parts[split_name] = datasets.Dataset.from_file(str(path), info=datasets.DatasetInfo(features=features),
                                                       split=split_name)  # fmt: skip
    datasets.DatasetDict(parts).save_to_disk(str(folder / "dataset"))
    del parts  # the memory maps of the scratch files, before they are removed
    shutil.rmtree(scratch)
    for entry in (folder / "dataset").iterdir():
        os.replace(entry, folder / entry.name)
    (folder / "dataset").rmdir()


def _feature(store: Store, name: str):
    """The ``datasets`` feature of one clip of array ``name``: its stored dtype and shape."""
    import datasets

    info = store.arrays[name]
    dtype = str(np.dtype(info.dtype))
    if info.extents:  # whole tracks: the last axis varies from clip to clip
        feature = datasets.Sequence(datasets.Value(dtype))
        for size in reversed(info.shape[:-1]):
            feature = datasets.Sequence(feature, length=size)
        return feature
    shape = tuple(info.shape[1:])
    if len(shape) == 1:
        return datasets.Sequence(datasets.Value(dtype), length=shape[0])
    kinds = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
    if len(shape) not in kinds:
        raise MuzarrError(f"array {name} has {len(shape)} axes per clip: datasets holds at most 5")
    return kinds[len(shape)](shape=shape, dtype=dtype)


# -- WebDataset --------------------------------------------------------------------------------------------------------


def _write_webdataset(store: Store, selected: dict[str, np.ndarray], names: list[str], folder: Path) -> None:
    try:
        import webdataset
    except ImportError:
        raise MuzarrError("--format webdataset writes with the webdataset package: pip install webdataset") from None
    labels = _label_matrix(store)
    ids = store.clips["clip_id"].astype(str).to_numpy()
    for split_name, rows in selected.items():
        if not len(rows):
            continue
        pattern = str(folder / f"{split_name}-%06d.tar")
        with webdataset.ShardWriter(pattern, maxcount=SHARD_SAMPLES, maxsize=SHARD_BYTES, verbose=0) as sink:
            for chunk in _chunks(rows):
                values = {name: _values(store, name, chunk) for name in names}
                for i, row in enumerate(chunk):
                    sample = {"__key__": f"{int(row):09d}"}
                    for name in names:
                        sample[f"{name.replace('/', '.')}.npy"] = _npy(values[name][i])
                    record = {"clip_id": str(ids[row]), "row": int(row), **_label_json(store, int(row), labels)}
                    sample["json"] = json.dumps(record).encode()
                    sink.write(sample)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
