"""Summaries over runs: mean ± std over repeated seeds (seeds 001 and 004 report this way)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.run.metrics import SCALARS


def summarise_repeats(results: list[dict[str, Any]], out: Path) -> str:
    """Write ``summary.json`` and ``summary.csv`` (one row per repeat) in ``out``; return a Markdown table."""
    task = results[0]["task"]
    rows = []
    for i, metrics in enumerate(results):
        row = {"repeat": i, "best_epoch": metrics["best_epoch"], "train_seconds": metrics["train_seconds"],
               "co2_kg": metrics.get("co2_kg")}  # fmt: skip
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
    lines = [f"| {results[0]['model']} ({len(results)} seeds) | mean ± std |", "|---|---|"]
    for c in columns:
        lines.append(f"| {c} | {_pm(summary[c])} |")
    return "\n".join(lines)


def _stat(column: pd.Series, fn) -> float | None:
    values = pd.to_numeric(column, errors="coerce").dropna().to_numpy()
    return float(fn(values, ddof=1)) if fn is np.std and len(values) > 1 else (float(fn(values)) if len(values) else None)


def _pm(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.4f} ± {stat['std'] or 0:.4f}"
