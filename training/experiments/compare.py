"""Compare finished runs: one table in the seed reports' layout (Markdown and CSV) and overlaid curves.

Runs with the same training settings apart from the seed (the same model, store, split and
hyper-parameters) are repeats: their metrics are reported as mean ± std, as seeds 001 and 004
do. A folder written by ``train --repeats`` or ``train sweep`` stands for the runs inside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import MuzarrError
from training.run.metrics import PRIMARY, SCALARS

#: settings that do not change what a run learns: runs differing only in these are repeats
NOT_SETTINGS = frozenset({"seed", "device", "cache", "workers", "emissions", "country", "tensorboard", "tb_every"})
#: column names of the seed reports' tables (seed 000: "Best Val AUC", "Test AUC")
METRIC_NAMES = {"roc_auc": "AUC", "pr_auc": "PR-AUC", "accuracy": "Accuracy", "f1_macro": "F1-macro",
                "f1_weighted": "F1-weighted"}  # fmt: skip


@dataclass
class RunRecord:
    """One finished run directory: ``metrics.json``, the ``train`` block of ``config.json``, ``history.csv``."""

    path: Path
    metrics: dict[str, Any]
    settings: dict[str, Any]
    history: pd.DataFrame


@dataclass
class Group:
    """Runs that are repeats of one configuration."""

    runs: list[RunRecord] = field(default_factory=list)
    label: str = ""

    @property
    def model(self) -> str:
        return self.runs[0].metrics["model"]

    def values(self, part: str, metric: str) -> np.ndarray:
        return np.array([_number(r.metrics.get(part, {}).get(metric)) for r in self.runs], dtype=float)

    def field_values(self, name: str) -> np.ndarray:
        return np.array([_number(r.metrics.get(name)) for r in self.runs], dtype=float)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan


def find_runs(paths: list[str | Path]) -> list[RunRecord]:
    """The finished runs under ``paths``: run directories, or folders holding them one level down."""
    if not paths:
        raise MuzarrError("train compare needs at least one run directory")
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "metrics.json").exists():
            found.append(path)
            continue
        children = sorted(c for c in path.glob("*/metrics.json")) if path.is_dir() else []
        if not children:
            what = "does not exist" if not path.exists() else "has no metrics.json (is the run finished?)"
            raise MuzarrError(f"{path} {what}: pass run directories (each with metrics.json) or folders of them")
        found.extend(c.parent for c in children)
    return [_read_run(p) for p in dict.fromkeys(found)]


def _read_run(path: Path) -> RunRecord:
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        settings = json.loads((path / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError) as err:
        raise MuzarrError(f"{path}: unreadable run directory ({type(err).__name__}: {err})") from None
    history = pd.read_csv(path / "history.csv") if (path / "history.csv").exists() else pd.DataFrame()
    return RunRecord(path, metrics, settings, history)


def group_runs(runs: list[RunRecord]) -> list[Group]:
    """Repeats together, in the order their first run was given; labels name the model, plus the
    settings that tell apart groups of the same model (``mlp (lr=0.01)``)."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.settings.items() if k not in NOT_SETTINGS}, sort_keys=True, default=str)
        groups.setdefault(key, Group()).runs.append(run)
    result = list(groups.values())
    for group in result:
        same_model = [g for g in result if g.model == group.model]
        differing = {}
        if len(same_model) > 1:
            settings = [{k: v for k, v in g.runs[0].settings.items() if k not in NOT_SETTINGS} for g in same_model]
            own = {k: v for k, v in group.runs[0].settings.items() if k not in NOT_SETTINGS}
            differing = {k: v for k, v in own.items() if k != "model" and any(s.get(k) != v for s in settings)}
        group.label = group.model + (f" ({', '.join(f'{k}={_short(v)}' for k, v in differing.items())})" if differing else "")
    return result


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={_short(v)}" for k, v in value.items())
    return f"{value:g}" if isinstance(value, float) else str(value)


def comparison_table(groups: list[Group]) -> pd.DataFrame:
    """One row per group: mean and std (ddof 1; 0 for a single run) of every metric, time and CO2."""
    tasks = {r.metrics["task"] for g in groups for r in g.runs}
    if len(tasks) > 1:
        raise MuzarrError(f"cannot compare runs of different tasks ({', '.join(sorted(tasks))}) in one table")
    task = tasks.pop()
    rows = []
    for group in groups:
        first = group.runs[0].metrics
        row: dict[str, Any] = {"model": group.label, "dataset": first.get("dataset"), "store": first.get("store"),
                               "runs": len(group.runs), "parameters": first.get("parameters")}  # fmt: skip
        series = {f"{part}_{m}": group.values(part, m) for part in ("valid", "test") for m in SCALARS[task]}
        series["train_seconds"] = group.field_values("train_seconds")
        series["co2_kg"] = group.field_values("co2_kg")
        for name, values in series.items():
            mean, std = _mean_std(values)
            row[f"{name}_mean"], row[f"{name}_std"] = mean, std
        row["run_dirs"] = ";".join(str(r.path) for r in group.runs)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["task"] = task
    return table


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return np.nan, np.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def markdown_table(table: pd.DataFrame, *, extra: tuple[str, ...] = ()) -> str:
    """Seed 000's Figure 2 layout: Model | Best Val AUC | Test AUC | Parameters | Train Time (s) | CO2 (kg).

    For multiclass runs the metric is accuracy; ``extra`` adds test metrics (e.g. ``pr_auc``,
    ``f1_macro``) after the primary one. Repeats read ``mean ± std``.
    """
    task = table.attrs["task"]
    primary = PRIMARY[task]
    unknown = [m for m in extra if m not in SCALARS[task]]
    if unknown:
        raise MuzarrError(f"--metric {unknown[0]!r} is not a {task} metric; choose from {', '.join(SCALARS[task])}")
    name = METRIC_NAMES[primary]
    header = ["Model", f"Best Val {name}", f"Test {name}", *(f"Test {METRIC_NAMES[m]}" for m in extra),
              "Parameters", "Train Time (s)", "CO2 (kg)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for _, row in table.iterrows():
        label = row["model"] + (f" ({row['runs']} runs)" if row["runs"] > 1 else "")
        cells = [label, _pm(row, f"valid_{primary}", "{:.4f}"), _pm(row, f"test_{primary}", "{:.4f}")]
        cells += [_pm(row, f"test_{m}", "{:.4f}") for m in extra]
        parameters = row["parameters"]
        cells.append(f"{int(parameters):,}" if pd.notna(parameters) else "-")
        cells += [_pm(row, "train_seconds", "{:.2f}"), _pm(row, "co2_kg", "{:.6f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(row: pd.Series, name: str, fmt: str) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if pd.isna(mean):
        return "-"
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if row["runs"] > 1 else "")


def default_out(paths: list[str | Path]) -> Path:
    """Where ``train compare`` writes without ``--out``: beside the runs, in the folder that holds
    them all (the common parent of the run directories; a folder of runs counts as their parent),
    never the current folder."""
    parents = [os.path.normpath(path.parent if (path / "metrics.json").exists() else path) for path in map(Path, paths)]
    try:
        return Path(os.path.commonpath(parents))
    except ValueError:  # relative and absolute paths together
        return Path(os.path.commonpath([os.path.abspath(parent) for parent in parents]))


def compare(paths: list[str | Path], out: str | Path | None = None, *, extra: tuple[str, ...] = ()) -> str:
    """Write ``compare.md``, ``compare.csv`` and ``compare.png`` for the runs under ``paths`` into
    ``out`` (default: :func:`default_out`).

    Returns the Markdown table.
    """
    from training.run.plots import plot_compare

    groups = group_runs(find_runs(paths))
    table = comparison_table(groups)
    text = markdown_table(table, extra=extra)
    out = default_out(paths) if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text + "\n")
    table.to_csv(out / "compare.csv", index=False)
    metric = PRIMARY[table.attrs["task"]]
    curves = [(g.label, pd.concat([r.history for r in g.runs], ignore_index=True)) for g in groups]
    curves = [(label, h) for label, h in curves if {"epoch", "train_loss", "valid_loss", f"valid_{metric}"} <= set(h.columns)]
    datasets = sorted({str(g.runs[0].metrics.get("dataset")) for g in groups})
    names = ", ".join(g.label for g in groups) if len(groups) <= 4 else f"{len(groups)} configurations"
    title = f"{names} on {', '.join(datasets)}"
    if curves:
        plot_compare(curves, metric, out / "compare.png", title=title)
    return text
