"""Summaries over runs: mean ± std over repeated seeds (seeds 001 and 004 report this way)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.run.metrics import SCALARS


def summarise_repeats(results: list[dict[str, Any]], out: Path, *, seeds: list[int] | None = None) -> str:
    """Write ``summary.json``, ``summary.csv`` (one row per repeat) and ``repeats.png`` (each metric per
    seed, mean and std marked) in ``out``; return a Markdown table and the line naming the files."""
    from training.run.plots import plot_repeats  # matplotlib: imported when a summary is drawn

    task = results[0]["task"]
    rows = []
    for i, metrics in enumerate(results):
        row = {"repeat": i, **({"seed": seeds[i]} if seeds else {}), "best_epoch": metrics["best_epoch"],
               "train_seconds": metrics["train_seconds"], "co2_kg": metrics.get("co2_kg")}  # fmt: skip
        for name in SCALARS[task]:
            row[f"valid_{name}"] = metrics["valid"].get(name)
            row[f"test_{name}"] = metrics["test"].get(name)
        rows.append(row)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    columns = [c for c in table.columns if c.startswith(("valid_", "test_")) or c in ("train_seconds", "co2_kg")]
    summary = {
        "model": results[0]["model"],
        "dataset": results[0]["dataset"],
        "repeats": len(results),
        "parameters": results[0]["parameters"],
        **{c: {"mean": _stat(table[c], np.mean), "std": _stat(table[c], np.std)} for c in columns},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_repeats(table, columns, out / "repeats.png",
                 title=f"{results[0]['model']} on {results[0]['dataset']}: {len(results)} seeds")  # fmt: skip
    lines = [f"| {results[0]['model']} ({len(results)} seeds) | mean ± std |", "|---|---|"]
    for c in columns:
        lines.append(f"| {c} | {_pm(summary[c])} |")
    lines.append(f"summary: {out / 'summary.csv'} (one row per seed), {out / 'summary.json'}, {out / 'repeats.png'}")
    return "\n".join(lines)


def _stat(column: pd.Series, fn) -> float | None:
    values = pd.to_numeric(column, errors="coerce").dropna().to_numpy()
    return float(fn(values, ddof=1)) if fn is np.std and len(values) > 1 else (float(fn(values)) if len(values) else None)


def _pm(stat: dict) -> str:
    """``mean ± std`` to the std's two significant digits (``0.00041 ± 0.00017``, ``0.873 ± 0.012``):
    fixed decimals would print a CO2 of 0.0004 kg as ``0.0004 ± 0.0002``."""
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "-"
    if not std or not math.isfinite(std):
        return f"{mean:.4g} ± 0"
    decimals = max(0, 1 - math.floor(math.log10(abs(std))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
