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


def plot_curves(history: pd.DataFrame, metric: str, path: Path, *, title: str) -> Path:
    """Train/valid loss and the validation metric per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    left.plot(history["epoch"], history["valid_loss"], marker="o", label="valid")
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    right.plot(history["epoch"], history[f"valid_{metric}"], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path, title)


def plot_per_tag(per_tag: dict[str, float | None], frequency: dict[str, int], path: Path, *, title: str) -> Path:
    """Per-tag ROC-AUC bars, tags sorted by training frequency, frequency on a second axis (seed 001)."""
    tags = sorted(frequency, key=lambda t: -frequency[t])
    auc = [per_tag.get(t) if per_tag.get(t) is not None else np.nan for t in tags]
    fig, axis = plt.subplots(figsize=(max(6, 0.28 * len(tags) + 2), 4.5))
    positions = np.arange(len(tags))
    axis.bar(positions, auc, color="tab:blue", label="test ROC-AUC")
    axis.set(ylim=(0.0, 1.0), ylabel="ROC-AUC", title=title)
    axis.set_xticks(positions, tags, rotation=90)
    twin = axis.twinx()
    twin.plot(positions, [frequency[t] for t in tags], color="tab:orange", marker=".", label="training clips")
    twin.set_ylabel("training clips with the tag")
    axis.legend(loc="lower left")
    twin.legend(loc="lower right")
    return _save(fig, path, title)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, *, title: str) -> Path:
    """Confusion matrix with counts (rows: true class, columns: predicted)."""
    values = np.asarray(matrix)
    fig, axis = plt.subplots(figsize=(1 + 0.6 * len(classes), 1 + 0.55 * len(classes)))
    image = axis.imshow(values, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    for (i, j), count in np.ndenumerate(values):
        axis.text(j, i, str(count), ha="center", va="center", color="white" if count > values.max() / 2 else "black")
    fig.colorbar(image, ax=axis, fraction=0.046)
    return _save(fig, path, title)


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
