"""``pipe plot``: a store at a glance — example log-mel spectrograms per class and the label counts.

The per-class figure is seed 002's "mel-spectrograms per genre" (one panel per class, titled
with its name); the bar chart counts the stored clips of each class or tag. matplotlib is an
optional dependency of the pipeline (it comes with ``muzarr[train]``) and is imported only
here, when a figure is drawn. Each PNG carries its title and axes in its text chunks
(``Title``, ``Description``), readable with ``PIL.Image.open(path).info``.
"""

from __future__ import annotations

import io
import math
import posixpath
from pathlib import Path

import numpy as np

from pipeline.errors import MuzarrError, write_errors
from pipeline.store.location import location
from pipeline.store.reader import Store, open_store


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MuzarrError("pipe plot needs matplotlib: pip install 'muzarr[train]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, title: str, description: str) -> Path:
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:
        fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100, metadata={"Title": title, "Description": description, "Software": "muzarr"})
    plt.close(fig)
    # whole or not at all: a full disk leaves the figure of an earlier run, never half a PNG
    location(str(path.parent)).put(path.name, image.getvalue())
    return path


def logmel_array(store: Store, name: str | None = None) -> str | None:
    """``name`` if it is a log-mel array of ``store``, else the store's first log-mel array (None if it has none)."""
    logmels = [n for n, info in store.arrays.items() if info.kind == "logmel"]
    if name is None:
        return logmels[0] if logmels else None
    if name not in logmels:
        raise MuzarrError(f"--array {name!r} is not a log-mel array of {store.url}; log-mel arrays: {', '.join(logmels) or 'none'}")
    return name


def class_examples(store: Store, per_class: int, *, array: str | None = None) -> list[tuple[str, list[int]]]:
    """For each class (or tag) with stored clips, the rows of its first ``per_class`` clips in store order
    (with ``array``: clips that array holds, leaving out those that failed it only)."""
    targets = store.label_matrix
    ok = store.ok.copy()
    if array is not None:
        ok[list(store.array_failures(array))] = False
    examples = []
    for index, name in enumerate(store.classes):
        member = targets[:, index] > 0 if store.task == "multilabel" else targets == index
        rows = np.flatnonzero(member & ok)[:per_class]
        if len(rows):
            examples.append((name, rows.tolist()))
    return examples


def label_counts(store: Store) -> dict[str, int]:
    """Stored (``ok``) clips per class or tag; multiclass stores add ``(unlabelled)`` when they have such clips."""
    targets = store.label_matrix[store.ok]
    if store.task == "multilabel":
        return {name: int(count) for name, count in zip(store.classes, targets.sum(axis=0))}
    counts = {name: int((targets == i).sum()) for i, name in enumerate(store.classes)}
    if (targets < 0).any():
        counts["(unlabelled)"] = int((targets < 0).sum())
    return counts


def plot_examples(store: Store, path: Path, *, array: str, per_class: int = 1) -> Path:
    """One log-mel panel per example clip, titled with its class; time in seconds, mel bands upward."""
    plt = _pyplot()
    examples = class_examples(store, per_class, array=array)
    if not examples:
        raise MuzarrError(f"store {store.url} has no labelled clips to show")
    feature = store.arrays[array].feature
    seconds_per_frame = feature["hop_length"] / feature["sample_rate"]
    pad = feature.get("pad_frames", 0) or 0
    panels = [(name, row) for name, rows in examples for row in rows]
    log = feature.get("log", "db")
    colour = f"log-mel ({'dB' if log == 'db' else log})"
    columns = per_class if per_class > 1 else min(4, len(panels))
    lines = math.ceil(len(panels) / columns)
    # constrained layout leaves room for the shared colour bar and the title
    fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns + 0.8, 2.6 * lines + 0.4), squeeze=False, layout="constrained")
    wanted = sorted({row for _, row in panels})
    if store.is_tracks:  # whole tracks: the first 30 s of each, as a fixed-length store shows a clip
        frames = int(30 * feature["sample_rate"] / feature["hop_length"])
        data = [store.track(array, row)[..., :frames] for row in wanted]
    else:
        data = store.read(array, wanted)
    by_row = dict(zip(wanted, data))
    image = None
    for axis, (name, row) in zip(axes.flat, panels):
        mel = by_row[row].astype(np.float32)
        if mel.ndim == 3:  # a store of sub-clips: show the first one
            mel = mel[0]
        n_mels, n_frames = mel.shape
        extent = (-pad * seconds_per_frame, (n_frames - pad) * seconds_per_frame, 0, n_mels)
        image = axis.imshow(mel, origin="lower", aspect="auto", extent=extent, cmap="magma")
        axis.set(title=name, xlabel="time (s)", ylabel="mel band")
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, label=colour)
    title = f"{store.dataset}: log-mel examples per {'tag' if store.task == 'multilabel' else 'class'} ({array})"
    fig.suptitle(title)
    names = ", ".join(dict.fromkeys(name for name, _ in panels))
    return _save(fig, path, title, f"panels: {names}; x: time (s); y: mel band; colour: {colour}")


def plot_labels(store: Store, path: Path) -> Path:
    """Bar chart of the clips per class or tag."""
    plt = _pyplot()
    counts = label_counts(store)
    fig, axis = plt.subplots(figsize=(max(5.0, 0.35 * len(counts) + 2), 4))
    positions = np.arange(len(counts))
    axis.bar(positions, list(counts.values()), color="tab:blue")
    axis.set_xticks(positions, list(counts), rotation=60 if len(counts) > 6 else 0, ha="right" if len(counts) > 6 else "center")
    what = "tag" if store.task == "multilabel" else "class"
    title = f"{store.dataset}: label distribution ({int(store.ok.sum())} clips)"
    axis.set(xlabel=what, ylabel="clips", title=title)
    listing = ", ".join(f"{name}={count}" for name, count in counts.items())
    return _save(fig, path, title, f"x: {what}; y: clips; counts: {listing}")


def plot_lengths(store: Store, path: Path) -> Path:
    """Histogram of a track store's track lengths (log-spaced bins: tracks run from seconds to an hour)."""
    from pipeline.describe import track_seconds

    plt = _pyplot()
    seconds = track_seconds(store)
    if not len(seconds):
        raise MuzarrError(f"store {store.url} has no stored tracks to show")
    fig, axis = plt.subplots(figsize=(6, 4))
    low, high = max(seconds.min(), 0.1), max(seconds.max(), seconds.min() * 1.01)
    axis.hist(seconds, bins=np.geomspace(low, high, 30), color="tab:blue")
    axis.set_xscale("log")
    median = float(np.median(seconds))
    axis.axvline(median, color="tab:orange", label=f"median {median:.1f} s")
    axis.legend()
    title = f"{store.dataset}: track lengths ({len(seconds)} tracks, {seconds.sum() / 3600:.2f} h)"
    axis.set(xlabel="length (s)", ylabel="tracks", title=title)
    return _save(fig, path, title, f"x: length (s, log scale); y: tracks; min {seconds.min():.1f} s, median {median:.1f} s, max {seconds.max():.1f} s")


def default_out(url: str) -> Path:
    """Where ``pipe plot`` writes without ``--out``: ``<store>.plots`` beside a local store (so
    figures never land in the current folder, a newcomer's repository root); for a remote store,
    whose bucket may be read-only or someone else's, ``<store name>.plots`` in the current folder."""
    place = location(url)
    if place.is_local:
        return Path(posixpath.normpath(place.root) + ".plots")
    return Path(posixpath.basename(place.root.rstrip("/")) + ".plots")


def plot_store(url: str, out: str | Path | None = None, *, per_class: int = 1, array: str | None = None) -> list[Path]:
    """Write ``examples.png`` (when the store has a log-mel array), ``labels.png`` and, for a track store,
    ``lengths.png`` into ``out`` (default: :func:`default_out`)."""
    if per_class < 1:
        raise MuzarrError(f"--per-class {per_class} must be at least 1")
    _pyplot()  # fail before reading anything when matplotlib is missing
    store = open_store(url)
    out = default_out(url) if out is None else Path(out)
    written = []
    name = logmel_array(store, array)
    with write_errors(str(out)):  # a full or read-only --out: one line
        if name is not None:
            written.append(plot_examples(store, out / "examples.png", array=name, per_class=per_class))
        written.append(plot_labels(store, out / "labels.png"))
        if store.is_tracks:
            written.append(plot_lengths(store, out / "lengths.png"))
    return written
