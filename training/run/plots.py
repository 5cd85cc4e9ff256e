"""The PNG figures of a run: curves, per-tag AUC beside tag frequency, confusion matrix; run comparisons and
embedding maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator


def _save(fig, path: Path, title: str, description: str | None = None) -> Path:
    # Title and axes go into the PNG's text chunks too: tests (and users) read them back with PIL.
    metadata = {"Title": title, "Software": "muzarr"}
    if description:
        metadata["Description"] = description
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=metadata)
    plt.close(fig)
    return path


#: up to this many epochs each one gets a marker; beyond, markers overlap into a thick line (mlp: 500)
MARKED_EPOCHS = 40


def _epoch_marker(epochs: int) -> str | None:
    return "o" if epochs <= MARKED_EPOCHS else None


def curves_figure(history: pd.DataFrame, metric: str, *, title: str, best_epoch: int | None = None):
    """Train/valid loss and the validation metric per epoch, ``best_epoch`` (the one evaluated)
    marked by a dotted line on both panels and a star on the metric."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    marker = _epoch_marker(len(history))
    left.plot(history["epoch"], history["train_loss"], marker=marker, label="train")
    left.plot(history["epoch"], history["valid_loss"], marker=marker, label="valid")
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    right.plot(history["epoch"], history[f"valid_{metric}"], marker=marker, color="tab:green", label=f"valid {metric}")
    right.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    best = history[history["epoch"] == best_epoch]
    if len(best):
        label = f"best epoch {best_epoch}"
        for axis in (left, right):
            axis.axvline(best_epoch, color="tab:red", linestyle=":", linewidth=1)
        right.plot(best["epoch"], best[f"valid_{metric}"], linestyle="none", marker="*", markersize=14,
                   color="tab:red", label=label)  # fmt: skip
        right.legend()
    left.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return fig


def plot_curves(history: pd.DataFrame, metric: str, path: Path, *, title: str, best_epoch: int | None = None) -> Path:
    """:func:`curves_figure` as a PNG."""
    fig = curves_figure(history, metric, title=title, best_epoch=best_epoch)
    marked = f"; best epoch {best_epoch} marked" if best_epoch in set(history["epoch"]) else ""
    return _save(fig, path, title, f"left: x epoch, y loss (train, valid); right: x epoch, y validation {metric}{marked}")


def per_tag_figure(per_tag: dict[str, float | None], frequency: dict[str, int], *, title: str):
    """Per-tag ROC-AUC bars, tags sorted by training frequency, frequency on a second axis (seed 001).
    The legend stands above the axes: inside, wherever it went, it hid bars or the frequency line."""
    tags = sorted(frequency, key=lambda t: -frequency[t])
    auc = [per_tag.get(t) if per_tag.get(t) is not None else np.nan for t in tags]
    fig, axis = plt.subplots(figsize=(max(6, 0.28 * len(tags) + 2), 4.8))
    positions = np.arange(len(tags))
    bars = axis.bar(positions, auc, color="tab:blue", label="test ROC-AUC")
    axis.set(ylim=(0.0, 1.0), ylabel="ROC-AUC")
    axis.set_xticks(positions, tags, rotation=90)
    twin = axis.twinx()
    (line,) = twin.plot(positions, [frequency[t] for t in tags], color="tab:orange", marker=".", label="training clips")
    twin.set_ylabel("training clips with the tag")
    axis.legend([bars, line], [bars.get_label(), line.get_label()], loc="lower center", bbox_to_anchor=(0.5, 1.0),
                ncol=2, frameon=False)  # fmt: skip
    fig.suptitle(title)
    return fig


def plot_per_tag(per_tag: dict[str, float | None], frequency: dict[str, int], path: Path, *, title: str) -> Path:
    """:func:`per_tag_figure` as a PNG."""
    return _save(per_tag_figure(per_tag, frequency, title=title), path, title)


def confusion_figure(matrix: list[list[int]], classes: list[str], *, title: str):
    """Confusion matrix with counts (rows: true class, columns: predicted), of the classes that
    have a test clip or a prediction: a 10-class matrix of 3 classes' clips is 7 empty rows."""
    values = np.asarray(matrix)
    used = np.flatnonzero((values.sum(axis=0) > 0) | (values.sum(axis=1) > 0)) if values.any() else np.arange(len(classes))
    values = values[np.ix_(used, used)]
    names = [classes[i] for i in used]
    fig, axis = plt.subplots(figsize=(max(5.5, 1.6 + 0.6 * len(names)), 1.6 + 0.55 * len(names)))
    image = axis.imshow(values, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right")
    axis.set_yticks(range(len(names)), names)
    hidden = len(classes) - len(names)
    note = f"\n({hidden} of {len(classes)} classes without test clips left out)" if hidden else ""
    axis.set(xlabel="predicted", ylabel="true", title=title + note)
    for (i, j), count in np.ndenumerate(values):
        axis.text(j, i, str(count), ha="center", va="center", color="white" if count > values.max() / 2 else "black")
    fig.colorbar(image, ax=axis, fraction=0.046)
    return fig


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, *, title: str) -> Path:
    """:func:`confusion_figure` as a PNG."""
    return _save(confusion_figure(matrix, classes, title=title), path, title)


def plot_compare(curves: list[tuple[str, pd.DataFrame]], metric: str, path: Path, *, title: str) -> Path:
    """Overlay of several runs' loss and validation-metric curves (``train compare``).

    ``curves`` holds ``(label, history)`` pairs; a history with several rows per epoch (repeats)
    is drawn as its mean with a ±1 std band. Valid loss solid, train loss dashed.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, (label, history) in enumerate(curves):
        color = f"C{index % 10}"
        # numeric columns only: history.csv also records each epoch's optimizer by name
        stats = history.groupby("epoch")[["valid_loss", "train_loss", f"valid_{metric}"]].agg(["mean", "std"])
        epochs = stats.index.to_numpy()
        for axis, column, style, name in (
            (left, "valid_loss", "-", f"{label} valid"), (left, "train_loss", "--", f"{label} train"),
            (right, f"valid_{metric}", "-", label),
        ):  # fmt: skip
            mean, std = stats[(column, "mean")].to_numpy(), stats[(column, "std")].fillna(0).to_numpy()
            axis.plot(epochs, mean, style, color=color, marker="o", markersize=3, label=name)
            if (std > 0).any():
                axis.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15)
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    right.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    description = f"left: x epoch, y loss (valid solid, train dashed); right: x epoch, y validation {metric}"
    return _save(fig, path, title, description)


def plot_published_vs_measured(labels: list[str], *, published: np.ndarray, published_std: np.ndarray,
                                measured: np.ndarray, measured_std: np.ndarray, path: Path, metric: str,
                                title: str) -> Path:  # fmt: skip
    """Grouped bars per table row: the published number beside the measured one, ±1 std where
    known (``train reproduce``); a missing value (NaN) leaves its bar out."""
    positions = np.arange(len(labels))
    fig, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
    width = 0.38
    for offset, values, spread, name, color in (
        (-width / 2, published, published_std, "published", "tab:gray"), (width / 2, measured, measured_std, "measured", "tab:blue"),
    ):  # fmt: skip
        known = np.isfinite(spread)
        errors = np.where(known, spread, 0.0) if known.any() else None
        axis.bar(positions + offset, values, width, yerr=errors, capsize=3 if known.any() else 0, color=color, label=name)
    finite = np.concatenate([v[np.isfinite(v)] for v in (published, measured)])
    low = max(0.0, float(finite.min()) - 0.1) if len(finite) else 0.0
    axis.set_ylim(low, 1.0)
    axis.set_xticks(positions, labels, rotation=30, ha="right")
    axis.set(xlabel="table row", ylabel=f"test {metric}", title=title)
    axis.grid(axis="y", alpha=0.3)
    axis.legend()
    return _save(fig, path, title, f"x: table row; y: test {metric}; bars: published (grey), measured (blue)")


def plot_embedding(points: np.ndarray, groups: list[str], path: Path, *, title: str, legend: str = "class") -> Path:
    """2-D map of clip embeddings (t-SNE, seed 002), one colour per group; the largest groups first in the legend."""
    fig, axis = plt.subplots(figsize=(7.5, 6))
    order = pd.Series(groups).value_counts().index.tolist()
    labels = np.asarray(groups, dtype=object)
    cmap = plt.get_cmap("tab20" if len(order) > 10 else "tab10")
    for index, group in enumerate(order):
        chosen = labels == group
        axis.scatter(points[chosen, 0], points[chosen, 1], s=18, color=cmap(index % cmap.N), label=group)
    axis.set(xlabel="t-SNE 1", ylabel="t-SNE 2", title=title)
    axis.legend(title=legend, fontsize="small", loc="best", markerscale=1.2)
    return _save(fig, path, title, f"x: t-SNE 1; y: t-SNE 2; colour: {legend}; groups: {', '.join(order)}")


def plot_repeats(table: pd.DataFrame, columns: list[str], path: Path, *, title: str) -> Path:
    """One panel per metric of ``--repeats``: each seed's value (``table``: a row per repeat, with a
    ``seed`` or ``repeat`` column), the mean as a line and ±1 std as a band."""
    x_name = "seed" if "seed" in table else "repeat"
    n_cols = min(4, len(columns))
    n_rows = -(-len(columns) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 2.8 * n_rows), squeeze=False)
    x = table[x_name].to_numpy()
    for axis, column in zip(axes.flat, columns):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        known = values[np.isfinite(values)]
        axis.plot(x, values, "o", color="tab:blue", label="seed")
        if len(known):
            mean = float(known.mean())
            std = float(known.std(ddof=1)) if len(known) > 1 else 0.0
            axis.axhline(mean, color="tab:orange", label="mean")
            axis.axhspan(mean - std, mean + std, color="tab:orange", alpha=0.2, label="±1 std")
        axis.set(xlabel=x_name, title=column)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(columns):]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(title)
    description = f"one panel per metric ({', '.join(columns)}): x {x_name}, y value; line: mean; band: ±1 std"
    return _save(fig, path, title, description)


def plot_layer_metric(series: dict[str, tuple[list[str], np.ndarray, np.ndarray]], best: dict[str, str], path: Path, *,
                      metric: str, title: str) -> Path:  # fmt: skip
    """A probe run's metric per layer (``train probe``): for each probe kind, ``series[kind]`` is
    ``(layers, valid, test)``: valid solid, test dashed, one colour per kind; the layer ``best[kind]``
    (picked on validation) starred on both."""
    layers = list(dict.fromkeys(layer for names, _, _ in series.values() for layer in names))
    where = {layer: i for i, layer in enumerate(layers)}
    fig, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(layers) + 3), 4.2))
    for index, (kind, (names, valid, test)) in enumerate(series.items()):
        x = np.array([where[name] for name in names])
        color = plt.get_cmap("tab10")(index)
        axis.plot(x, valid, marker="o", color=color, label=f"{kind} valid")
        axis.plot(x, test, marker="o", linestyle="--", color=color, alpha=0.7, label=f"{kind} test")
        if kind in best and best[kind] in names:
            k = names.index(best[kind])
            axis.plot([x[k], x[k]], [valid[k], test[k]], linestyle="none", marker="*", markersize=16, color="tab:red",
                      label=f"{kind}: layer {best[kind]} (best valid)")  # fmt: skip
    axis.set_xticks(range(len(layers)), layers)
    axis.set(xlabel="layer", ylabel=metric, title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    described = "; ".join(f"{kind} best layer {layer}" for kind, layer in best.items())
    return _save(fig, path, title, f"x layer, y {metric} (valid solid, test dashed); {described} (picked on valid)")
