"""Inference from a run directory: per-clip predictions (a Kaggle-style CSV) and embeddings.

Both read the store only through :func:`pipeline.open_store` and :mod:`training.data`, with
the run's own :class:`~training.data.ExamplePlan`: every clip is cut into the crops (and
sub-clips) training evaluated, and a clip's score is the mean of its crops' sigmoid or
softmax outputs, exactly as ``metrics.json`` was computed. Scoring the CSV of a split
against the store's labels therefore reproduces the run's metrics on that split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import MuzarrError, Store, open_store
from training.data import ExamplePlan, SplitReader, eval_batches, plan_for
from training.run.checkpoint import write_atomic
from training.run.evaluate import checked_batch
from training.run.inference import LoadedRun

PARTS = ("train", "valid", "test", "all")


def select_rows(store: Store, part: str, scheme: str | None, *, default_scheme: str | None = None) -> np.ndarray:
    """Store rows of ``part`` of split ``scheme``; ``all`` is every stored clip, split or not.

    Without ``scheme``: ``default_scheme`` (the run's) when the store has it, else the
    store's first scheme.
    """
    if part not in PARTS:
        raise MuzarrError(f"--split {part!r} must be one of {', '.join(PARTS)}")
    if part == "all":
        rows = np.flatnonzero(store.ok)  # also serves stores without labels or split schemes
        if not len(rows):
            raise MuzarrError(f"store {store.url} has no stored clips")
        return rows
    schemes = [c for c in store.splits().columns if c != "clip_id"]
    if scheme is None:
        scheme = default_scheme if default_scheme in schemes else (schemes[0] if schemes else None)
    if scheme is None:
        raise MuzarrError(f"store {store.url} has no split scheme: use --split all")
    rows = store.split(scheme, part)
    if not len(rows):
        raise MuzarrError(f"split scheme {scheme!r} of {store.url} has no stored {part} clips: use --split all (every clip)")
    return rows


def run_plan(run: LoadedRun, store: Store) -> ExamplePlan:
    """The crops (and sub-clips) ``run`` evaluated, on ``store``; a store giving examples of another
    shape than the model was trained on (another clip length or feature) is refused."""
    plan = plan_for(store, run.config.input_spec(), run.protocol)
    if tuple(plan.example_shape) != run.example_shape:
        raise MuzarrError(
            f"store {store.url} gives {plan.array} examples of shape {tuple(plan.example_shape)}, but the run in "
            f"{run.out} was trained on {run.example_shape}: build the store with the training store's clip settings"
        )
    return plan


@torch.no_grad()
def per_clip(run: LoadedRun, store: Store, rows: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """``transform`` of every evaluation crop of each clip in ``rows``, averaged per clip: ``(len(rows), D)``."""
    plan = run_plan(run, store)
    reader = SplitReader(store, plan, rows, np.zeros(len(rows), np.float32), cache=False)
    per = plan.examples_per_clip_eval
    chunks = []
    # the batch size Run.predict uses: the same batches give bit-identical scores
    for x, positions in eval_batches(reader, batch_clips=max(1, run.protocol.batch_size // per)):
        values = transform(checked_batch(x, positions, reader, run.device, refusing="cannot score it")).float()
        chunks.append(values.view(len(positions), per, -1).mean(dim=1).cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(chunks)


def clip_scores(run: LoadedRun, store: Store, rows: np.ndarray) -> np.ndarray:
    """Per-clip probabilities ``(len(rows), n_classes)``: sigmoid (multilabel) or softmax (multiclass)."""

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        logits = run.model(x).float()
        return torch.sigmoid(logits) if run.task == "multilabel" else torch.softmax(logits, dim=1)

    scores = per_clip(run, store, rows, probabilities)
    return scores if len(scores) else np.zeros((0, len(run.classes)), np.float32)


def prediction_table(
    run: LoadedRun, ids: np.ndarray, scores: np.ndarray, *, with_scores: bool = False, threshold: float | None = None
) -> pd.DataFrame:
    """The submission table of seed 003's Kaggle CSV.

    multiclass: ``id, label`` (the argmax class), plus one probability column per class with
    ``with_scores``; multilabel: ``id`` and one score column per tag, plus ``pred_<tag>``
    0/1 columns when ``threshold`` is given.
    """
    table = pd.DataFrame({"id": ids})
    if run.task == "multiclass":
        if threshold is not None:
            raise MuzarrError("--threshold applies to multilabel runs; a multiclass run predicts its most probable class")
        table["label"] = np.asarray(run.classes, dtype=object)[scores.argmax(axis=1)] if len(scores) else []
        if with_scores:
            table = pd.concat([table, pd.DataFrame(scores.astype(np.float64), columns=run.classes)], axis=1)
        return table
    table = pd.concat([table, pd.DataFrame(scores.astype(np.float64), columns=run.classes)], axis=1)
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise MuzarrError(f"--threshold {threshold} must be between 0 and 1")
        predicted = pd.DataFrame((scores >= threshold).astype(np.uint8), columns=[f"pred_{c}" for c in run.classes])
        table = pd.concat([table, predicted], axis=1)
    return table


def predict(
    run: LoadedRun,
    store_url: str,
    *,
    split: str = "test",
    split_scheme: str | None = None,
    with_scores: bool = False,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Predictions of ``run`` for the clips of ``split`` in the store at ``store_url``."""
    store = _open_complete(store_url)
    rows = select_rows(store, split, split_scheme, default_scheme=run.protocol.split_scheme)
    scores = clip_scores(run, store, rows)
    ids = store.clips["clip_id"].to_numpy()[rows]
    return prediction_table(run, ids, scores, with_scores=with_scores, threshold=threshold)


def embeddings(run: LoadedRun, store_url: str, *, split: str = "test", split_scheme: str | None = None) -> pd.DataFrame:
    """Penultimate-layer embeddings (``model.embed``), averaged over each clip's evaluation crops.

    Returns a table with ``clip_id``, the store's ``label`` (multiclass; ``None`` where
    unlabelled) or ``tags`` (multilabel: list of tag names), and float32 columns ``e0..eD``.
    """
    store = _open_complete(store_url)
    rows = select_rows(store, split, split_scheme, default_scheme=run.protocol.split_scheme)
    if not hasattr(run.model.model, "embed"):
        raise MuzarrError(f"model {run.config.model!r} has no embed(): it cannot give embeddings")
    vectors = per_clip(run, store, rows, run.model.embed)
    table = pd.DataFrame({"clip_id": store.clips["clip_id"].to_numpy()[rows]})
    labels = store.labels()
    if store.task == "multiclass":
        table["label"] = labels["label"].to_numpy(dtype=object)[rows]
    else:
        matrix = labels[store.classes].to_numpy()[rows].astype(bool)
        table["tags"] = [[c for c, on in zip(store.classes, row) if on] for row in matrix]
    columns = pd.DataFrame(vectors.astype(np.float32), columns=[f"e{i}" for i in range(vectors.shape[1])])
    return pd.concat([table, columns], axis=1)


def tsne_groups(table: pd.DataFrame) -> list[str]:
    """The colour of each clip in the t-SNE plot: its class, or its most frequent tag (seed 002)."""
    if "label" in table:
        return [str(v) if isinstance(v, str) else "(unlabelled)" for v in table["label"]]
    counts = pd.Series([t for tags in table["tags"] for t in tags]).value_counts()
    rank = {tag: i for i, tag in enumerate(counts.index)}
    return [min(tags, key=rank.__getitem__) if len(tags) else "(no tag)" for tags in table["tags"]]


def tsne_points(vectors: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``vectors [shape=(n, D)]``, its perplexity capped for small ``n`` (sklearn needs perplexity < n)."""
    from sklearn.manifold import TSNE

    n = len(vectors)
    if n < 4:
        raise MuzarrError(f"t-SNE needs at least 4 clips, got {n}: embed a larger split (e.g. --split all)")
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    # exact gradients are cheap for a few hundred points, and Barnes-Hut's thread pool is slow on busy machines
    method = "exact" if n <= 300 else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method=method, random_state=seed)
    return tsne.fit_transform(vectors.astype(np.float64))


def write_embeddings(table: pd.DataFrame, out: Path, *, plot: Path | None, title: str, seed: int = 0) -> Path | None:
    """Write ``table`` to Parquet at ``out`` and, with ``plot``, its t-SNE scatter; returns the plot path."""
    if plot is not None and len(table) < 4:
        raise MuzarrError(f"a t-SNE map needs at least 4 clips, got {len(table)}: embed a larger split, or pass --no-plot")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: table.to_parquet(tmp, index=False))
    if plot is None:
        return None
    from training.run.plots import plot_embedding

    vectors = table[[c for c in table.columns if c.startswith("e") and c[1:].isdigit()]].to_numpy()
    legend = "class" if "label" in table else "most frequent tag"
    return plot_embedding(tsne_points(vectors, seed=seed), tsne_groups(table), plot, title=title, legend=legend)


def _open_complete(url: str) -> Store:
    store = open_store(url)
    if not store.complete:
        raise MuzarrError(f"store {store.url} is not complete: finish it with `pipe build` first")
    return store
