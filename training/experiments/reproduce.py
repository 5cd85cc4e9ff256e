"""``train reproduce``: re-run a published table from its paper (:mod:`training.experiments.papers`), beside the published numbers.

:func:`run_paper` first checks that every row can run (a store for each role, the arrays
and sub-clips each model reads, model options, pretrained weights, earlier runs in ``out``),
so a bad store fails in seconds, not after hours; then it trains every row × repeat into
``out/<row-slug>/repeat-<i>`` (a finished run is kept, an interrupted one resumed) and
writes ``reproduce.md``, ``reproduce.csv``, ``reproduce.png`` and, through
:func:`training.compare.compare`, the overlaid curves of all rows (``compare.png``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import MuzarrError, open_store
from training.experiments.compare import METRIC_NAMES
from training.experiments.papers import PAPERS, ROLE_PATTERN, SMOKE_TRAIN, Paper, PaperRow, is_number, load_paper
from training.models import build_model, model_options
from training.run.config import TrainConfig, split_scheme_for
from training.run.metrics import PRIMARY, SCALARS
from training.run.rundir import RunDir, differing_settings

__all__ = ["PAPERS", "SMOKE_TRAIN", "Job", "load_paper", "parse_stores", "plan_runs", "reproduce_markdown",
           "reproduce_table", "run_paper"]  # fmt: skip



# -- checking before training ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Job:
    """One run of a paper: a row, its repeat, the config it trains with and its folder."""

    row: PaperRow
    repeat: int
    config: TrainConfig
    out: Path

    @property
    def finished(self) -> bool:
        return RunDir(self.out).finished

    @property
    def started(self) -> bool:
        return RunDir(self.out).started


def parse_stores(values: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--store`` values to ``{role: url}``: ``URL`` is role ``main``, ``ROLE=URL`` names one."""
    stores: dict[str, str] = {}
    for value in values:
        role, sep, url = value.partition("=")
        if not (sep and ROLE_PATTERN.fullmatch(role)):
            role, url = "main", value
        if role in stores:
            raise MuzarrError(f"--store: role {role!r} given twice ({stores[role]} and {url})")
        stores[role] = url
    return stores


def plan_runs(paper: Paper, stores: dict[str, str], out: Path, *, smoke: bool = False, device: str = "auto",
              seed: int = 0, emissions: bool = True, model_opts: dict | None = None,
              echo: Callable[[str], Any] = print) -> list[Job]:  # fmt: skip
    """Every run of ``paper``, after checking that each can start.

    Raises one :class:`MuzarrError` for the first problem: a role without a store (naming the
    rows that need it and the ``pipe build`` that makes it), an unknown role, a ``--model-opt``
    no row's model takes, a store lacking an array or sub-clips (with the build that adds
    them), a model that cannot be built (missing pretrained weights), or an earlier run in
    ``out`` made with other settings.
    """
    missing = [role for role in paper.roles if role not in stores]
    if missing:
        raise MuzarrError("; ".join(
            f"paper {paper.name} needs a store for role {role!r} (rows: "
            f"{', '.join(row.label for row in paper.rows if row.store == role)}): build it with "
            f"`{paper.stores[role]}` and pass --store {'' if role == 'main' else role + '='}URL"
            for role in missing
        ))  # fmt: skip
    extra = sorted(set(stores) - set(paper.roles))
    if extra:
        raise MuzarrError(f"--store: paper {paper.name} has no store role {extra[0]!r}; its roles: {', '.join(paper.roles)}")
    model_opts = dict(model_opts or {})
    for key in model_opts:
        if not any(key in model_options(row.model) for row in paper.rows):
            raise MuzarrError(f"--model-opt {key}: no model of paper {paper.name} takes it "
                              f"({', '.join(sorted({row.model for row in paper.rows}))}; see `train models`)")  # fmt: skip
    opened = {role: open_store(url) for role, url in stores.items()}
    for role, store in opened.items():
        if not store.complete:
            raise MuzarrError(f"store {store.url} (role {role}) is not complete: finish it with `pipe build` first")
    jobs, fallbacks = [], {}
    for row in paper.rows:
        store = opened[row.store]
        configs = [
            row.config(stores[row.store], repeat=i, seed=seed, smoke=smoke, device=device, emissions=emissions,
                       extra_opts=model_opts).with_absolute_store()
            for i in range(1 if smoke else row.repeats)
        ]  # fmt: skip
        fallback = _check_row(paper, row, store, configs[0])
        if fallback:
            fallbacks.setdefault(fallback, []).append(row.label)
        for i, config in enumerate(configs):
            job = Job(row, i, config, Path(out) / row.slug / f"repeat-{i}")
            _check_earlier_run(job)
            jobs.append(job)
    for role, store in opened.items():
        if store.dataset != paper.dataset:
            echo(f"note: store {store.url} ({role}) holds {store.dataset}; the published numbers are on {paper.dataset}")
    for (wanted, url, used), labels in fallbacks.items():
        echo(f"note: {url} has no split scheme {wanted!r} (the protocol's); rows {', '.join(labels)} run on {used!r}")
    return jobs


def _check_row(paper: Paper, row: PaperRow, store, config: TrainConfig) -> tuple[str, str, str] | None:
    """The row's model reads what the store holds and builds: fails in seconds, not after hours.

    Returns ``(protocol's split scheme, store, scheme used)`` when the store lacks the
    protocol's scheme and the run falls back to the store's first, as :class:`Run` does.
    """
    from training.data import plan_for

    where = f"paper {paper.name}, row {row.label!r}"
    try:
        protocol = config.resolve(store.dataset)
        schemes = store.split_schemes
        if config.split_scheme is not None and config.split_scheme not in schemes:
            raise MuzarrError(f"split scheme {config.split_scheme!r} is not in {store.url} (it has {', '.join(schemes)})")
        plan = plan_for(store, config.input_spec(), protocol)
        build_model(row.model, n_classes=len(store.classes), input_shape=plan.example_shape, **config.model_opts)
    except MuzarrError as err:
        raise MuzarrError(f"{where}: {err}") from None
    used = split_scheme_for(schemes, protocol, config.split_scheme)
    if config.split_scheme is None and protocol.split_scheme not in (None, used):
        return protocol.split_scheme, store.url, used
    return None


def _check_earlier_run(job: Job) -> None:
    if not job.started:
        return
    try:
        saved = json.loads(RunDir(job.out).config_file.read_text())["train"]
    except (OSError, ValueError, KeyError) as err:
        raise MuzarrError(f"{RunDir(job.out).config_file} is unreadable ({type(err).__name__}): delete {job.out} to rerun it") from None
    wanted = json.loads(json.dumps(job.config.to_dict()))
    differing = differing_settings(saved, wanted)
    if differing:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {wanted.get(k)!r})" for k in differing[:3])
        raise MuzarrError(f"{job.out} was trained with other settings: {shown}; use another --out, or delete it to retrain")


# -- running --------------------------------------------------------------------------------
def run_paper(paper: Paper, stores: dict[str, str], out: Path, *, smoke: bool = False, device: str = "auto",
               seed: int = 0, emissions: bool = True, model_opts: dict | None = None, progress: bool = False,
               echo: Callable[[str], Any] = print) -> pd.DataFrame:  # fmt: skip
    """Train every row × repeat of ``paper`` into ``out`` and write the comparison with the published table.

    Parameters
    ----------
    stores : dict of str to str
        Store URL per role (``{"main": "mtat.zarr", "subclips": "mtat-split.zarr"}``).
    smoke : bool
        One 1-epoch run per row on at most 16 clips per split (:data:`SMOKE_TRAIN`, then the
        rows' ``smoke:`` overrides): checks the paper runs end to end; not comparable.
    seed : int
        Repeat ``i`` runs with ``seed + i``.
    model_opts : dict
        ``--model-opt`` settings, given to every row whose model takes them (``weights``).
    progress : bool
        Per-epoch lines and progress bars of each run.
    echo : callable
        Receives one line per run started and finished.

    Returns
    -------
    pandas.DataFrame
        ``reproduce.csv``: one row per paper row, published and measured (mean, std) per metric.
    """
    from training.run.loop import Run

    out = Path(out)
    jobs = plan_runs(paper, stores, out, smoke=smoke, device=device, seed=seed, emissions=emissions,
                     model_opts=model_opts, echo=echo)  # fmt: skip
    echo(f"{paper.name}: {len(jobs)} runs of {len(paper.rows)} rows into {out}" + (" (smoke run)" if smoke else ""))
    for number, job in enumerate(jobs, start=1):
        repeats = sum(1 for j in jobs if j.row is job.row)
        name = f"[{number}/{len(jobs)}] {job.row.label}, repeat {job.repeat + 1}/{repeats}"
        if job.finished:
            echo(f"{name}: finished earlier, kept: {_metric_text(paper, _read_metrics(job.out))}")
            continue
        if job.started:
            echo(f"{name}: resuming {job.row.model} in {job.out}")
            run = Run.resume(job.out, progress=progress)
        else:
            echo(f"{name}: training {job.row.model} (seed {job.config.seed}) in {job.out}")
            run = Run(job.config, job.out, progress=progress)
        metrics = run.fit()
        echo(f"{name}: done in {metrics['wall_seconds']:.0f} s: {_metric_text(paper, metrics)}")
    results = [[_read_metrics(j.out) for j in jobs if j.row is row] for row in paper.rows]
    table = reproduce_table(paper, results)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "reproduce.csv", index=False)
    notes = _compare_curves(paper, results, out)
    (out / "reproduce.md").write_text(reproduce_markdown(paper, table, results, stores, smoke=smoke, notes=notes) + "\n")
    _plot(paper, table, out / "reproduce.png", smoke=smoke)
    return table


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads(RunDir(run_dir).metrics_file.read_text())


def _metric_text(paper: Paper, metrics: dict[str, Any]) -> str:
    values = metrics.get("test", {})
    return ", ".join(f"test {m} {values[m]:.4f}" if is_number(values.get(m)) else f"test {m} n/a" for m in paper.metrics)


def _compare_curves(paper: Paper, results: list[list[dict[str, Any]]], out: Path) -> list[str]:
    """``compare.md``/``.csv``/``.png`` of all rows; a failure is a note in the report, never a crash."""
    from training.experiments.compare import compare

    task = results[0][0]["task"]
    extra = tuple(m for m in paper.metrics if m in SCALARS[task] and m != PRIMARY[task])  # the primary is always there
    try:
        compare([out / row.slug for row in paper.rows], out, extra=extra)
    except MuzarrError as err:
        return [f"no overlaid curves: {err}"]
    return []


# -- the report -----------------------------------------------------------------------------
def reproduce_table(paper: Paper, results: list[list[dict[str, Any]]]) -> pd.DataFrame:
    """One row per paper row: published and measured (mean, std over repeats) for every
    metric, runs, parameters, train seconds and CO2 (kg) per run (mean).

    ``results`` holds the ``metrics.json`` of each row's runs, in the paper's row order. A
    metric the runs' task lacks is NaN (``n/a`` in the Markdown).
    """
    records = []
    for row, runs in zip(paper.rows, results, strict=True):
        record: dict[str, Any] = {"label": row.label, "model": row.model, "store": row.store, "runs": len(runs)}
        for metric in paper.metrics:
            published = row.published.get(metric)
            record[f"{metric}_published"] = published.mean if published else np.nan
            record[f"{metric}_published_std"] = published.std if published and published.std is not None else np.nan
            mean, std = _mean_std([r.get("test", {}).get(metric) for r in runs])
            record[f"{metric}_measured"], record[f"{metric}_measured_std"] = mean, std
        record["parameters"] = runs[0]["parameters"] if runs else np.nan
        record["train_seconds"] = _mean_std([r.get("train_seconds") for r in runs])[0]
        record["co2_kg"] = _mean_std([r.get("co2_kg") for r in runs])[0]
        records.append(record)
    return pd.DataFrame(records)


def _mean_std(values: list[Any]) -> tuple[float, float]:
    numbers = np.array([v for v in values if is_number(v)], dtype=float)
    if not len(numbers):
        return np.nan, np.nan
    return float(numbers.mean()), float(numbers.std(ddof=1)) if len(numbers) > 1 else np.nan


def reproduce_markdown(paper: Paper, table: pd.DataFrame, results: list[list[dict[str, Any]]],
                       stores: dict[str, str], *, smoke: bool, notes: list[str] = ()) -> str:  # fmt: skip
    """The header (paper, citation, stores, split scheme, smoke warning, notes) and the table."""
    runs = [r for row_runs in results for r in row_runs]
    schemes = sorted({str(r.get("split_scheme")) for r in runs})
    tasks = sorted({str(r.get("task")) for r in runs})
    datasets = sorted({str(r.get("dataset")) for r in runs})
    lines = [
        f"# Reproduce {paper.name}: {paper.title}",
        "",
        f"- Published: {paper.citation}, on {paper.dataset}.",
        f"- Stores: {'; '.join(f'{role} = {url}' for role, url in stores.items())} "
        + f"(dataset {', '.join(datasets)}, task {', '.join(tasks)}).",
        f"- Split scheme used: {', '.join(schemes)}.",
    ]  # fmt: skip
    if smoke:
        lines.append(f"- **smoke run: not comparable** (1 epoch, at most {SMOKE_TRAIN['max_clips']} clips per split, "
                     f"batch {SMOKE_TRAIN['batch_size']}, {SMOKE_TRAIN['eval_crops']} evaluation crops per clip, "
                     "one run per row).")  # fmt: skip
    if datasets != [paper.dataset]:
        lines.append(f"- note: the published numbers are on {paper.dataset}, these runs on {', '.join(datasets)}: "
                     "not comparable.")  # fmt: skip
    absent = [m for m in paper.metrics if table[f"{m}_measured"].isna().all()]
    if absent:
        lines.append(f"- note: the runs' task ({', '.join(tasks)}) has no {', '.join(absent)}: those measured columns "
                     f"read n/a (the paper's table is {paper.task}).")  # fmt: skip
    lines += [f"- note: {n}" for n in notes]
    if paper.notes:
        lines.append(f"- Paper notes: {paper.notes}")
    lines += [f"- {row.label}: {row.note}" for row in paper.rows if row.note]
    total_seconds = np.nansum(table["train_seconds"] * table["runs"])
    lines += ["", _markdown_rows(paper, table), "",
              (f"{len(runs)} runs, {total_seconds:.0f} s training in all. Measured: test metrics of each run's best "
               "epoch, mean ± std over repeats. Curves: compare.png; each run: ROW/repeat-N/.")]  # fmt: skip
    return "\n".join(lines)


def _markdown_rows(paper: Paper, table: pd.DataFrame) -> str:
    header = ["Row", "Model"]
    for metric in paper.metrics:
        name = METRIC_NAMES.get(metric, metric)
        header += [f"{name} published", f"{name} measured"]
    header += ["Runs", "Parameters", "Train time (s)", "CO2 (kg)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for _, record in table.iterrows():
        cells = [record["label"], record["model"]]
        for metric in paper.metrics:
            cells.append(_pm(record[f"{metric}_published"], record[f"{metric}_published_std"], missing="-"))
            cells.append(_pm(record[f"{metric}_measured"], record[f"{metric}_measured_std"], missing="n/a"))
        cells.append(str(record["runs"]))
        cells.append("-" if pd.isna(record["parameters"]) else f"{int(record['parameters']):,}")
        cells.append("-" if pd.isna(record["train_seconds"]) else f"{record['train_seconds']:.2f}")
        cells.append("-" if pd.isna(record["co2_kg"]) else f"{record['co2_kg']:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(mean: float, std: float, *, missing: str) -> str:
    """``0.8267 ± 0.0027``, ``0.9005`` without a std, ``missing`` without a mean."""
    if pd.isna(mean):
        return missing
    return f"{mean:.4f}" + ("" if pd.isna(std) else f" ± {std:.4f}")


def _plot(paper: Paper, table: pd.DataFrame, path: Path, *, smoke: bool) -> None:
    from training.run.plots import plot_published_vs_measured

    metric = paper.metrics[0]
    title = f"{paper.name}: published vs measured test {METRIC_NAMES.get(metric, metric)}" + (" (smoke run)" if smoke else "")
    plot_published_vs_measured(
        list(table["label"]), published=table[f"{metric}_published"].to_numpy(),
        published_std=table[f"{metric}_published_std"].to_numpy(), measured=table[f"{metric}_measured"].to_numpy(),
        measured_std=table[f"{metric}_measured_std"].to_numpy(), path=path, metric=metric, title=title,
    )  # fmt: skip
