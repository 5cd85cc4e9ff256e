"""``train reproduce marble --task mtat|jamendo``: MARBLE's music-tagging rows, probed from a store's embedding.

MARBLE (Yuan et al. 2023, "MARBLE: Music Audio Representation Benchmark for universaL Evaluation";
a43992899/MARBLE-Benchmark and its successor a43992899/marble2) extracts every hidden layer of a
pretrained encoder once and trains small probes on them. Here the store holds the embedding
(``pipe build mtat --embedding m-a-p/MERT-v1-95M``) and :func:`run_marble` probes every layer and
their mean with MARBLE v2's MLP probe (:mod:`training.experiments.probe`), on MARBLE's split
(MTAT: folders 0-b / c / d-f, the store's ``dieleman`` scheme; MTG-Jamendo: ``split-0``), and sets
the best layer's test ROC-AUC and PR-AUC (picked on validation) beside the published rows.

``--smoke`` without a store builds one: the demo dataset's clips through a tiny random-weight
HuBERT saved with ``save_pretrained`` (no download), then a few epochs of probes: it checks the
recipe runs end to end; its numbers are not comparable.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import MuzarrError, Store, open_store
from pipeline.suggest import did_you_mean
from training.data.vectors import vector_arrays
from training.experiments.probe import ProbeConfig, run_probe
from training.experiments.probe_report import ProbeDir

__all__ = ["MARBLE_MODEL", "MARBLE_TASKS", "SMOKE_PROBE", "MarbleTask", "Published", "run_marble", "smoke_store"]

#: the encoder the recipe's store is built with (the published rows are larger models: see the table)
MARBLE_MODEL = "m-a-p/MERT-v1-95M"
#: what ``--smoke`` changes: a few epochs on the demo store's clips
SMOKE_PROBE = {"max_epochs": 3, "patience": 2}
#: the smoke store: demo clips of 2 s, through a tiny random HuBERT
SMOKE_BUILD = {"options.n_clips": 16, "options.seconds": 2.0, "clip.seconds": 2.0, "batch_clips": 8}
#: a HuBERT of MERT's shape in miniature (16 kHz, 2 transformer layers of 32): random weights, no download
TINY_HUBERT = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48,
    "conv_dim": (16, 16, 16), "conv_stride": (5, 4, 4), "conv_kernel": (10, 4, 4),
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "vocab_size": 8,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Published:
    """A published probe result: the encoder, test ROC-AUC and PR-AUC (macro, as fractions)."""

    model: str
    roc_auc: float
    pr_auc: float


@dataclasses.dataclass(frozen=True)
class MarbleTask:
    """One of MARBLE's tagging tasks: the catalog dataset, MARBLE's split and the published rows."""

    name: str
    title: str
    dataset: str
    split_scheme: str
    published: tuple[Published, ...]

    def build_command(self, out: str) -> str:
        return f"pipe build {self.dataset} --embedding {MARBLE_MODEL} --device cuda --out {out}"


#: The published rows, as tabulated on the MERT-v2 model card (MARBLE probes; ROC-AUC / PR-AUC in %).
_SOURCE = "MARBLE probes, as tabulated on the m-a-p MERT-v2 model card (issue #23)"
MARBLE_TASKS: dict[str, MarbleTask] = {
    "mtat": MarbleTask(
        "mtat", "MagnaTagATune top-50 tagging", "mtat", "dieleman",
        (Published("MERT-v1-330M", 0.906, 0.379), Published("MusicFM", 0.909, 0.383), Published("MuQ", 0.905, 0.385)),
    ),
    "jamendo": MarbleTask(
        "jamendo", "MTG-Jamendo top-50 tagging", "jamendo", "split-0",
        (Published("MERT-v1-330M", 0.826, 0.291), Published("MusicFM", 0.819, 0.297), Published("MuQ", 0.830, 0.302)),
    ),
}  # fmt: skip


def marble_task(name: str | None) -> MarbleTask:
    if name not in MARBLE_TASKS:
        raise MuzarrError(f"train reproduce marble --task {name}: one of {', '.join(MARBLE_TASKS)}"
                          f"{did_you_mean(str(name), MARBLE_TASKS)} (e.g. --task mtat)")  # fmt: skip
    return MARBLE_TASKS[name]


def save_random_hubert(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random-weight ``HubertModel`` saved with ``save_pretrained`` (and its feature extractor)."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar for one tiny file reads as noise in the recipe's output
    if (folder / "model.safetensors").is_file():
        return folder  # made by an earlier smoke run in this folder: the same seed, the same weights
    torch.manual_seed(seed)
    HubertModel(HubertConfig(**TINY_HUBERT)).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return folder


def smoke_store(out: Path, *, echo: Callable[[str], Any] = print) -> str:
    """``out/smoke.zarr``: demo clips through a tiny random HuBERT, built (or finished) here."""
    from pipeline.build import build
    from pipeline.config import apply_overrides, config_for, load_catalog

    model = save_random_hubert(out / "tiny-hubert")
    config = apply_overrides(config_for("demo", load_catalog()["demo"]), add_features=[{"kind": "embedding", "model": str(model)}],
                             only=True, settings=dict(SMOKE_BUILD))  # fmt: skip
    store = out / "smoke.zarr"
    echo(f"smoke: building {store} (demo clips, tiny random HuBERT {model})")
    from dask.distributed import Client, LocalCluster

    # one thread in this process: a worker process would import torch and load the model again for 16 clips
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:  # fmt: skip
        report = build(config, source=str(out / "demo-audio"), out=str(store), client=client, progress=False)
    if report.n_failed:
        raise MuzarrError(f"smoke store {store}: {report.n_failed} clip(s) failed: see `pipe info {store}`")
    return str(store)


def _embedding_of(store: Store, task: MarbleTask) -> tuple[str, str]:
    """The store's embedding array to probe (MERT-v1-95M's when there are several) and its model."""
    arrays = [name for name in vector_arrays(store) if name.startswith("embedding/")]
    if not arrays:
        raise MuzarrError(f"store {store.url} holds no embedding: build one with `{task.build_command(store.url)}`")
    models = {name: str((store.arrays[name].feature or {}).get("model", "?")) for name in arrays}
    chosen = [name for name in arrays if models[name].rstrip("/").endswith(MARBLE_MODEL.split("/")[-1])] or arrays
    if len(chosen) > 1:
        raise MuzarrError(f"store {store.url} holds several embeddings ({', '.join(arrays)}): probe one with `train probe`")
    return chosen[0], models[chosen[0]]


def run_marble(task_name: str | None, stores: dict[str, str], out: Path, *, smoke: bool = False, device: str = "auto",
               seed: int = 0, emissions: bool = True, progress: bool = False,
               echo: Callable[[str], Any] = print) -> pd.DataFrame:  # fmt: skip
    """Probe the store's embedding for MARBLE task ``task_name`` into ``out`` and write ``reproduce.md``,
    ``reproduce.csv`` and ``reproduce.png``: the published rows, then ours (the layer picked on
    validation, its test scores). A finished probe run in ``out/probe`` is kept (the same command resumes)."""
    task = marble_task(task_name)
    extra = sorted(set(stores) - {"main"})
    if extra:
        raise MuzarrError(f"--store: marble takes one store (--store URL), not a role {extra[0]!r}")
    out = Path(out)
    url = stores.get("main")
    if url is None:
        if not smoke:
            default = f"{task.dataset}-mert.zarr"
            raise MuzarrError(f"marble --task {task.name} probes a store's {MARBLE_MODEL} embedding: build it with "
                              f"`{task.build_command(default)}` and pass --store {default} (or run --smoke)")  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        url = smoke_store(out, echo=echo)
    store = open_store(url)
    if not store.complete:
        raise MuzarrError(f"store {store.url} is not complete: finish it with `pipe build` first")
    array, model = _embedding_of(store, task)
    scheme = task.split_scheme
    if scheme not in store.split_schemes:
        scheme = store.split_schemes[0]
        echo(f"note: {store.url} has no split scheme {task.split_scheme!r} (MARBLE's); probing on {scheme!r}")
    if store.dataset != task.dataset:
        echo(f"note: store {store.url} holds {store.dataset}; the published numbers are on {task.dataset}")
    config = ProbeConfig(store=store.url, input=array, probe="mlp", split_scheme=scheme, seed=seed, device=device,
                         emissions=emissions, **(SMOKE_PROBE if smoke else {}))  # fmt: skip
    folder = ProbeDir(out / "probe")
    if folder.finished and json.loads(json.dumps(folder.read().get("config"))) == json.loads(json.dumps(config.to_dict())):
        echo(f"{folder.path}: probed earlier with these settings, kept")
    else:
        run_probe(config, folder.path, overwrite=True, progress=progress, echo=echo)
    result = folder.read()
    best = result["best"]["mlp"]
    table = _table(task, best, model=model)
    table.to_csv(out / "reproduce.csv", index=False)
    (out / "reproduce.md").write_text(_markdown(task, table, result, store=store, smoke=smoke) + "\n")
    _plot(task, table, out / "reproduce.png", smoke=smoke)
    return table


def _table(task: MarbleTask, best: dict[str, Any], *, model: str) -> pd.DataFrame:
    records = [{"label": row.model, "roc_auc_published": row.roc_auc, "pr_auc_published": row.pr_auc,
                "roc_auc_measured": np.nan, "pr_auc_measured": np.nan, "layer": ""} for row in task.published]  # fmt: skip
    name = Path(model.rstrip("/")).name or model
    records.append({"label": f"{name} (this store)", "roc_auc_published": np.nan, "pr_auc_published": np.nan,
                    "roc_auc_measured": best["test"]["roc_auc"], "pr_auc_measured": best["test"]["pr_auc"],
                    "layer": best["layer"]})  # fmt: skip
    return pd.DataFrame(records)


def _markdown(task: MarbleTask, table: pd.DataFrame, result: dict[str, Any], *, store: Store, smoke: bool) -> str:
    counts = result["counts"]
    lines = [
        f"# Reproduce marble --task {task.name}: {task.title}",
        "",
        f"- Published: {_SOURCE}, on {task.dataset}, split {task.split_scheme}.",
        (f"- Store: {store.url} (dataset {store.dataset}), array {result['array']}, split scheme {result['split_scheme']} "
        f"({counts['train']}/{counts['valid']}/{counts['test']} clips)."),
        ("- Ours: MARBLE v2's MLP probe (512 hidden, dropout 0.2, Adam 5e-3, plateau 0.5/6, early stop 20, batch 64) on "
        "every layer and their mean; the layer is picked on validation, its test scores are shown "
        "(every layer: probe/layers.csv, probe/layers.png)."),
        f"- The published rows are larger encoders than the store's {MARBLE_MODEL}: read ours beside them, not against one.",
    ]  # fmt: skip
    if smoke:
        lines.append(f"- **smoke run: not comparable** (a tiny random-weight model, {SMOKE_PROBE['max_epochs']} epochs).")
    if store.dataset != task.dataset:
        lines.append(f"- note: the published numbers are on {task.dataset}, this store holds {store.dataset}.")
    lines += ["", "| Model | layer | ROC-AUC published | ROC-AUC measured | PR-AUC published | PR-AUC measured |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for _, row in table.iterrows():
        cells = [row["label"], row["layer"] or "-"]
        for metric in ("roc_auc", "pr_auc"):
            cells += [_cell(row[f"{metric}_published"]), _cell(row[f"{metric}_measured"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.4f}"


def _plot(task: MarbleTask, table: pd.DataFrame, path: Path, *, smoke: bool) -> None:
    from training.run.plots import plot_published_vs_measured

    nan = np.full(len(table), np.nan)
    plot_published_vs_measured(
        list(table["label"]), published=table["roc_auc_published"].to_numpy(float), published_std=nan,
        measured=table["roc_auc_measured"].to_numpy(float), measured_std=nan, path=path, metric="roc_auc",
        title=f"marble {task.name}: published vs measured test ROC-AUC" + (" (smoke run)" if smoke else ""),
    )  # fmt: skip

