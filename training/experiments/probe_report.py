"""A probe run's folder: ``layers.csv``, ``layers.png`` and ``probe.json``, their one owner (:class:`ProbeDir`),
and the summary ``train probe`` prints.

``layers.csv`` has one row per probe kind and layer (``all`` = the mean of every stored layer):
valid and test metrics of the kept weights, epochs run, the best epoch, the last learning rate.
``probe.json`` holds the request, the store, the split, the counts, and per probe kind the best layer
picked on validation with its valid and test scores; it is written last: a folder with it is finished.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import MuzarrError, write_errors
from training.run.checkpoint import write_atomic, write_text_atomic

__all__ = ["ProbeDir", "ProbeResult", "ProbeRow", "best_rows", "summary_text"]


@dataclasses.dataclass(frozen=True)
class ProbeRow:
    """One probe: its kind, its layer, valid and test metrics of its kept weights, epochs, best epoch
    (from 1), the learning rate it ended with and the seconds of its pass (shared by the pass's probes)."""

    probe: str
    layer: str
    valid: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    epochs: int
    final_lr: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Everything a probe run found, as ``probe.json`` records it (with ``best``, per probe kind, added)."""

    config: dict[str, Any]
    store: str
    dataset: str
    task: str
    array: str
    feature: dict[str, Any]
    layers: list[str]
    dim: int
    split_scheme: str
    counts: dict[str, int]
    rows: list[ProbeRow]
    primary: str
    metrics: list[str]
    device: str
    seconds: float
    read_seconds: float
    torch: str
    torch_threads: int
    energy_kwh: float | None = None
    co2_kg: float | None = None
    co2_country: str | None = None

    def table(self) -> pd.DataFrame:
        """``layers.csv``: one row per probe and layer."""
        records = []
        for row in self.rows:
            record: dict[str, Any] = {"probe": row.probe, "layer": row.layer}
            record.update({f"valid_{m}": row.valid[m] for m in self.metrics})
            record.update({f"test_{m}": row.test[m] for m in self.metrics})
            record.update(best_epoch=row.best_epoch, epochs=row.epochs, final_lr=row.final_lr)
            records.append(record)
        return pd.DataFrame(records)

    def best(self) -> dict[str, dict[str, Any]]:
        """Per probe kind, the layer with the best validation primary metric (ties: the first), with its scores."""
        return {
            row.probe: {"layer": row.layer, "valid": row.valid, "test": row.test, "best_epoch": row.best_epoch}
            for row in best_rows(self.rows, self.primary)
        }

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rows"] = self.table().to_dict("records")
        data["best"] = self.best()
        data["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return data


def best_rows(rows: list[ProbeRow], primary: str) -> list[ProbeRow]:
    """The row of each probe kind whose validation ``primary`` is highest (NaN never wins; ties: the first)."""
    best: dict[str, ProbeRow] = {}
    for row in rows:
        value = row.valid.get(primary, math.nan)
        kept = best.get(row.probe)
        if kept is None or (not math.isnan(value) and (math.isnan(kept.valid[primary]) or value > kept.valid[primary])):
            best[row.probe] = row
    return list(best.values())


class ProbeDir:
    """A probe run's folder at ``path``: its file names, the check before a run, the atomic writes."""

    TABLE = "layers.csv"
    FIGURE = "layers.png"
    RESULT = "probe.json"
    FILES = (TABLE, FIGURE, RESULT)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def finished(self) -> bool:
        return (self.path / self.RESULT).is_file()

    def check(self, *, overwrite: bool) -> None:
        """Before any work: a file where the folder must be, or a finished probe run kept unless ``overwrite``."""
        for folder in (self.path, *self.path.parents):
            if folder.exists() and not folder.is_dir():
                raise MuzarrError(f"--out {self.path}: {folder} is a file, not a folder: choose another --out")
        if self.finished and not overwrite:
            raise MuzarrError(f"{self.path} holds a finished probe run ({self.RESULT}): add --overwrite to run it again, "
                              "or choose another --out")  # fmt: skip

    def prepare(self) -> None:
        """Make the folder; remove an earlier run's files (the new ones replace them)."""
        with write_errors(str(self.path)):
            self.path.mkdir(parents=True, exist_ok=True)
            for name in self.FILES:
                (self.path / name).unlink(missing_ok=True)

    def write(self, result: ProbeResult) -> None:
        """``layers.csv``, ``layers.png``, then ``probe.json`` (last: the run is finished once it is there)."""
        with write_errors(str(self.path)):
            write_atomic(self.path / self.TABLE, lambda tmp: result.table().to_csv(tmp, index=False))
            plot_layers(result, self.path / self.FIGURE)
            write_text_atomic(self.path / self.RESULT, json.dumps(result.to_dict(), indent=2, default=_json_default) + "\n")

    def read(self) -> dict[str, Any]:
        """``probe.json`` as data; a missing or damaged one is one line naming it."""
        try:
            return json.loads((self.path / self.RESULT).read_text())
        except (OSError, ValueError) as err:
            raise MuzarrError(f"{self.path / self.RESULT} is unreadable ({type(err).__name__}): run the probe again") from None

    def read_table(self) -> pd.DataFrame:
        return pd.read_csv(self.path / self.TABLE, dtype={"layer": str})


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def plot_layers(result: ProbeResult, path: Path) -> Path:
    """``layers.png``: the primary metric per layer, valid and test per probe kind, the layer picked on validation starred."""
    from training.run.plots import plot_layer_metric

    metric = result.primary
    table = result.table()
    series = {}
    for kind in dict.fromkeys(table["probe"]):
        part = table[table["probe"] == kind]
        series[kind] = (list(part["layer"]), part[f"valid_{metric}"].to_numpy(float), part[f"test_{metric}"].to_numpy(float))
    best = {row.probe: row.layer for row in best_rows(result.rows, metric)}
    return plot_layer_metric(series, best, path, metric=metric, title=f"{result.array} of {result.dataset}: {metric} per layer")


def summary_text(result: ProbeResult) -> str:
    """The table ``train probe`` prints: per probe kind, every layer's valid and test metrics, then the
    layer picked on validation and its test score."""
    metric, names = result.primary, result.metrics
    lines = []
    for kind in dict.fromkeys(row.probe for row in result.rows):
        rows = [row for row in result.rows if row.probe == kind]
        lines.append(f"{kind} probe, {len(rows)} input(s), {rows[0].seconds:.1f} s:")
        header = ["layer", f"valid {metric}", *(f"test {m}" for m in names), "best epoch", "epochs"]
        cells = [[row.layer, _f(row.valid[metric]), *(_f(row.test[m]) for m in names), str(row.best_epoch), str(row.epochs)]
                 for row in rows]  # fmt: skip
        widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]
        lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths)))
        lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(cell, widths)) for cell in cells]
    for row in best_rows(result.rows, metric):
        scores = ", ".join(f"{m} {_f(row.test[m])}" for m in names)
        lines.append(f"best {row.probe} layer on validation: {row.layer} (valid {metric} {_f(row.valid[metric])}): test {scores}")
    return "\n".join(lines)


def _f(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
