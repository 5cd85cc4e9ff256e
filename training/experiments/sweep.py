"""Hyper-parameter sweeps: grid, random or Bayesian (Optuna TPE) search over training runs.

The sweep file is seed 002's ``sweep.yaml`` (the Weights & Biases sweep format)::

    method: bayes                  # grid | random | bayes (optional; --method wins)
    metric: {name: valid_accuracy, goal: maximize}   # optional; default: the task's metric
    parameters:
      epochs:        {value: 30}
      batch_size:    {values: [16, 32, 64, 128]}
      learning_rate: {min: 1.0e-4, max: 1.0e-2, distribution: log_uniform_values}
      hidden_dim:    {values: [64, 128, 256]}

A parameter is a training setting (``lr``, ``batch_size``, ``epochs``, ``optimizer``,
``momentum``, ``weight_decay``, ``scheduler``, ``early_stopping``), a scheduler setting
(``plateau_factor``, ``plateau_patience``, ``step_size``, ``step_gamma``) or a model option
(``train models`` lists them); seed 002's and 003's names (``learning_rate``, ``hidden_dim``,
``num_layers``, ``reduce_lr_factor``, ``step_lr_gamma``, ``dropout_rate``...) are aliases.

Every trial is a normal run directory ``OUT/trial-000/``...; the Optuna study lives in
``OUT/optuna.db`` (SQLite), or in the storage ``--storage`` names (an Optuna RDB URL or
``journal:PATH``). Running the same command again resumes: finished trials are kept,
a trial that was interrupted is continued from its last finished epoch, and new trials are
asked until ``--trials`` have finished. ``OUT/leaderboard.csv`` and ``.md`` rank the trials by
the validation metric. ``--parallel K`` trains K trials at once on Dask workers
(:mod:`training.experiments.sweep_cluster`); trial numbers and sampler seeds do not depend on K.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import typing
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline import MuzarrError, open_store
from pipeline.typed import coerce, hint_of
from training.data import plan_for
from training.experiments.sweep_cluster import Cluster, TrialResult, run_trials
from training.models import model_options
from training.run.config import TrainConfig
from training.run.metrics import PRIMARY, SCALARS
from training.run.optim import OPTIMIZERS
from training.run.protocol import SCHEDULES
from training.run.rundir import RUNTIME_FIELDS, RunDir

METHODS = ("grid", "random", "bayes")
#: the study's name in OUT/optuna.db (in a --storage: followed by the sweep folder's name)
STUDY = "muzarr-sweep"
IN_PROCESS = Cluster()
#: training settings a sweep may set (TrainConfig fields: their types are TrainConfig's)
TRAIN_PARAMS = ("lr", "batch_size", "epochs", "optimizer", "momentum", "nesterov", "weight_decay", "scheduler", "early_stopping")
#: scheduler settings: sweep name → (scheduler_opts key, the schedule it belongs to, whose field gives its type)
SCHEDULER_PARAMS: dict[str, tuple[str, str]] = {
    "plateau_factor": ("factor", "plateau"), "plateau_patience": ("patience", "plateau"),
    "step_size": ("step_size", "step"), "step_gamma": ("gamma", "step"),
}  # fmt: skip
#: the names seeds 002 and 003 used
ALIASES = {"learning_rate": "lr", "reduce_lr_factor": "plateau_factor", "reduce_lr_patience": "plateau_patience",
           "step_lr_step_size": "step_size", "step_lr_gamma": "step_gamma", "dropout_rate": "dropout",
           "num_layers": "rnn_layers"}  # fmt: skip
#: "hidden size" of a sweep file is whichever of these the model has
HIDDEN_NAMES = ("hidden_dim", "hidden_size", "hidden")
HIDDEN_OPTIONS = ("hidden_size", "hidden", "rnn_hidden")
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "log_uniform")
#: W&B sweep keys that change nothing here
IGNORED_KEYS = ("name", "description", "program", "project", "entity", "command", "run_cap", "early_terminate")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One swept (or fixed) setting: exactly one of ``value``, ``values`` or ``low``/``high`` applies."""

    name: str
    target: str  # a TrainConfig field, "scheduler.<key>" or "model.<option>"
    value: Any = None
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def is_constant(self) -> bool:
        return self.values is None and self.low is None

    def distribution(self):
        import optuna

        if self.values is not None:
            return optuna.distributions.CategoricalDistribution([_encode(v) for v in self.values])
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def decode(self, suggested: Any) -> Any:
        if self.values is not None:
            return next(v for v in self.values if _encode(v) == suggested)
        return suggested


def _encode(value: Any) -> Any:
    # Optuna's categorical choices must be scalars: tuples (e.g. conv channels) travel as JSON
    return json.dumps(list(value)) if isinstance(value, (tuple, list)) else value


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file. ``metric`` is a validation metric name (``roc_auc``, ``accuracy``, ``loss``...)."""

    parameters: tuple[Parameter, ...]
    method: str
    metric: str | None = None
    goal: str | None = None

    def searched(self) -> list[Parameter]:
        return [p for p in self.parameters if not p.is_constant]

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.searched()}

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the swept values, in the file's order (the last parameter varies fastest)."""
        searched = self.searched()
        ranged = [p.name for p in searched if p.values is None]
        if ranged:
            raise MuzarrError(f"grid search needs lists of values, but {', '.join(ranged)} are ranges: use --method random or bayes")
        return [dict(zip([p.name for p in searched], map(_encode, combo))) for combo in itertools.product(*(p.values for p in searched))]

    def without(self, names: set[str]) -> SweepSpec:
        return dataclasses.replace(self, parameters=tuple(p for p in self.parameters if p.target not in names))

    def values(self, suggested: dict[str, Any]) -> dict[str, Any]:
        """A trial's parameters by their names in the file: Optuna's suggestions decoded, constants added."""
        return {p.name: p.value if p.is_constant else p.decode(suggested[p.name]) for p in self.parameters}

    def apply(self, base: TrainConfig, suggested: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        """The trial's configuration and its parameters (see :meth:`values`)."""
        values = self.values(suggested)
        train: dict[str, Any] = {}
        scheduler_opts, model_opts = dict(base.scheduler_opts), dict(base.model_opts)
        schedulers = set()
        for p in self.parameters:
            kind, _, key = p.target.partition(".")
            if kind == "scheduler":
                scheduler_opts[key] = values[p.name]
                schedulers.add(next(s for k, s in SCHEDULER_PARAMS.values() if k == key))
            elif kind == "model":
                model_opts[key] = values[p.name]
            else:
                train[p.target] = values[p.name]
        if "scheduler" not in train and base.scheduler is None and schedulers:
            # sweeping a scheduler's settings means using it (plateau first when both appear, as in seed 002)
            train["scheduler"] = "plateau" if "plateau" in schedulers else "step"
        return dataclasses.replace(base, **train, scheduler_opts=scheduler_opts, model_opts=model_opts), values


def load_sweep(path: str | Path, *, model: str) -> SweepSpec:
    """Parse and check the sweep file at ``path`` for ``model``; bad input is one :class:`MuzarrError`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise MuzarrError(f"--config {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise MuzarrError(f"--config {path}: not UTF-8 text (bad byte at offset {err.start}): save the sweep file as UTF-8") from None
    except yaml.YAMLError as err:
        raise MuzarrError(f"--config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_sweep(data, model=model, where=str(path))


def parse_sweep(data: Any, *, model: str, where: str = "sweep") -> SweepSpec:
    """A :class:`SweepSpec` from the mapping of a sweep file (see the module docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict) or not data["parameters"]:
        raise MuzarrError(f"{where}: expected a mapping with a non-empty 'parameters:' section, e.g. parameters: {{lr: {{values: [1e-4, 1e-3]}}}}")
    unknown = sorted(set(data) - {"parameters", "method", "metric", *IGNORED_KEYS})
    if unknown:
        raise MuzarrError(f"{where}: unknown key(s) {unknown}; a sweep file has parameters, method, metric")
    method = data.get("method", "random")
    if method not in METHODS:
        raise MuzarrError(f"{where}: method {method!r} must be one of {', '.join(METHODS)}")
    metric = goal = None
    if "metric" in data:
        entry = data["metric"]
        if not isinstance(entry, dict) or "name" not in entry:
            raise MuzarrError(f"{where}: metric must be a mapping like {{name: valid_accuracy, goal: maximize}}")
        metric = str(entry["name"]).removeprefix("valid_").removeprefix("val_").removeprefix("valid/")
        metric = {"acc": "accuracy", "auc": "roc_auc"}.get(metric, metric)
        goal = entry.get("goal")
        if goal is not None and goal not in ("maximize", "minimize"):
            raise MuzarrError(f"{where}: metric goal {goal!r} must be maximize or minimize")
    targets = parameter_targets(model)
    parameters = []
    for name, entry in data["parameters"].items():
        target = targets.get(str(name))
        if target is None:
            raise MuzarrError(
                f"{where}: unknown parameter {name!r} for model {model!r}; valid parameters: {', '.join(sorted(targets))}"
            )
        parameters.append(_parameter(str(name), target, entry, model=model, where=where))
    targets_used = [p.target for p in parameters]
    twice = sorted({t for t in targets_used if targets_used.count(t) > 1})
    if twice:
        names = [p.name for p in parameters if p.target in twice]
        raise MuzarrError(f"{where}: parameters {names} all set {twice[0]}: keep one")
    return SweepSpec(tuple(parameters), method, metric, goal)


def parameter_targets(model: str) -> dict[str, str]:
    """Every name a sweep file may use for ``model`` → what it sets."""
    options = model_options(model)
    targets = {name: name for name in TRAIN_PARAMS}
    targets.update({name: f"scheduler.{key}" for name, (key, _) in SCHEDULER_PARAMS.items()})
    targets.update({name: f"model.{name}" for name in options})
    for alias, name in ALIASES.items():
        if name in targets and alias not in targets:
            targets[alias] = targets[name]
    hidden = next((f"model.{o}" for o in HIDDEN_OPTIONS if o in options), None)
    if hidden:
        targets.update({name: hidden for name in HIDDEN_NAMES if name not in targets})
    return targets


def _parameter(name: str, target: str, entry: Any, *, model: str, where: str) -> Parameter:
    where = f"{where}: parameter {name!r}"
    hint = _target_hint(target, model)
    if not isinstance(entry, dict):
        raise MuzarrError(f"{where}: expected {{value: x}}, {{values: [...]}} or {{min: a, max: b}}, got {entry!r}")
    keys = set(entry)
    if keys == {"value"}:
        return Parameter(name, target, value=_value(entry["value"], hint, f"{where}: value"))
    if keys == {"values"}:
        values = entry["values"]
        if not isinstance(values, list) or not values:
            raise MuzarrError(f"{where}: values must be a non-empty list")
        return Parameter(name, target, values=tuple(dict.fromkeys(_value(v, hint, f"{where}: values") for v in values)))
    if {"min", "max"} <= keys <= {"min", "max", "distribution"}:
        if hint not in (int, float):
            raise MuzarrError(f"{where}: a min/max range needs a numeric setting; give values: [...] instead")
        distribution = entry.get("distribution", "int_uniform" if hint is int else "uniform")
        if distribution not in DISTRIBUTIONS:
            raise MuzarrError(f"{where}: distribution {distribution!r} must be one of {', '.join(DISTRIBUTIONS)}")
        low, high = _value(entry["min"], float, f"{where}: min"), _value(entry["max"], float, f"{where}: max")
        log = distribution.startswith("log_uniform")
        if log and low <= 0:
            # W&B's log_uniform takes exponents (e^min..e^max); here min/max are always the values themselves
            raise MuzarrError(f"{where}: {distribution} needs min > 0 (min and max are values, e.g. min: 1.0e-5, max: 1.0e-2)")
        if not low < high:
            raise MuzarrError(f"{where}: min {low} must be below max {high}")
        integer = hint is int or distribution == "int_uniform"
        if integer and (low != int(low) or high != int(high)):
            raise MuzarrError(f"{where}: an integer range needs whole min and max, got {low} and {high}")
        return Parameter(name, target, low=low, high=high, log=log, integer=integer)
    raise MuzarrError(f"{where}: expected exactly one of value, values or min/max (+ distribution), got keys {sorted(keys)}")


def _target_hint(target: str, model: str) -> Any:
    """The type a parameter's values must have: the training setting's, the schedule's or the model option's."""
    kind, _, key = target.partition(".")
    if kind == "scheduler":
        schedule = next(s for k, s in SCHEDULER_PARAMS.values() if k == key)
        return typing.get_type_hints(SCHEDULES[schedule])[key]
    if kind == "model":
        default = model_options(model)[key]
        return Any if default is None else hint_of(default)
    hint = typing.get_type_hints(TrainConfig)[target]
    return next(t for t in typing.get_args(hint) if t is not type(None))  # a sweep value is never "not given"


def _value(value: Any, hint: Any, where: str) -> Any:
    """``value`` as ``hint`` (a non-finite number is refused: Optuna cannot sample it, no run trains with it)."""
    if typing.get_origin(hint) is tuple and isinstance(value, int) and not isinstance(value, bool):
        value = [value]  # one layer of that width: seed 003's "hidden_size: 64" on a list-of-widths option
    return coerce(hint, value, where=where)


def _check_choices(spec: SweepSpec, where: str) -> None:
    checks = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULES}
    for p in spec.parameters:
        allowed = checks.get(p.target, ())
        for value in p.values or (p.value,):
            if allowed and value not in allowed:
                raise MuzarrError(f"{where}: parameter {p.name!r}: {value!r} must be one of {', '.join(allowed)}")


@contextmanager
def _locked(out: Path):
    """One sweep process per folder: a second one would run the same interrupted trial twice."""
    import fcntl

    with open(out / ".sweep.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel when the process dies
        except BlockingIOError:
            raise MuzarrError(f"another `train sweep` is running in {out}: wait for it, or use another --out") from None
        yield


def _same_sweep(out: Path, state: dict[str, Any]) -> bool:
    """Whether ``out`` holds this sweep already (a resume); another sweep there is an error."""
    path = out / "sweep.json"
    if not path.exists():
        return False
    old = json.loads(path.read_text())
    if old.get("storage") != state.get("storage"):
        # the study is where the finished trials are: another storage would start over
        given = f"--storage {old['storage']}" if old.get("storage") else "no --storage (its study is in optuna.db)"
        raise MuzarrError(f"{out} holds a sweep whose study is in another storage: resume it with {given}, "
                          "or pick another --out")  # fmt: skip
    differing = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
    if differing:
        raise MuzarrError(
            f"{out} holds another sweep (its {', '.join(differing)} differ): resume it with the same store, model, "
            "sweep file and options, or pick another --out"
        )
    return True


def study_storage(storage: str) -> tuple[str, str]:
    """``--storage`` as ``(what opens it, what sweep.json records)``: paths made absolute (a resume
    may start elsewhere), a password hidden from the record."""
    if storage.startswith("journal:"):
        path = "journal:" + str(Path(storage.removeprefix("journal:")).expanduser().resolve())
        return path, path
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage) if "://" in storage else None
    except ArgumentError:
        url = None
    if url is None:
        raise MuzarrError(f"--storage {storage!r}: give an Optuna RDB URL (sqlite:///PATH, postgresql://USER@HOST/DB, "
                          "mysql+pymysql://...) or journal:PATH (a journal file, e.g. on a shared filesystem)")  # fmt: skip
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=str(Path(url.database).expanduser().resolve()))
    return url.render_as_string(hide_password=False), url.render_as_string(hide_password=True)


def _open_study(storage: str | None, out: Path, state: dict[str, Any], *, direction: str):
    """The sweep's Optuna study, created with ``sweep.json`` for a new sweep.

    Without ``--storage`` it is ``OUT/optuna.db``, as sweeps always had; a storage given may hold
    other studies, so there the study is named after the sweep folder, and a new sweep does not
    join a study of that name that is there already."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    known = _same_sweep(out, state)
    if storage is None:
        url, shown, name = f"sqlite:///{(out / 'optuna.db').resolve()}", str(out / "optuna.db"), STUDY
    else:
        (url, shown), name = study_storage(storage), f"{STUDY}-{out.resolve().name}"
    try:
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            backend = JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        else:
            backend = optuna.storages.RDBStorage(url)
        if not known and storage is not None and name in optuna.get_all_study_names(backend):
            raise MuzarrError(f"--storage {shown} holds a study {name!r} already, of another sweep folder of that name: "
                              "resume that sweep from its folder, or give this one another --out name")  # fmt: skip
        if not known:
            (out / "sweep.json").write_text(json.dumps(state, indent=2, default=str))
        return optuna.create_study(storage=backend, study_name=name, direction=direction, load_if_exists=True)
    except (ImportError, OSError, SQLAlchemyError) as err:
        raise MuzarrError(f"--storage {shown}: cannot open the Optuna study there: {type(err).__name__}: "
                          f"{str(err).splitlines()[0]}") from None  # fmt: skip


def run_sweep(
    spec: SweepSpec,
    base: TrainConfig,
    out: str | Path,
    *,
    trials: int,
    cluster: Cluster = IN_PROCESS,
    storage: str | None = None,
    echo: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run (or resume) the sweep in ``out`` until ``trials`` trials have finished; returns the leaderboard.

    ``base`` holds the settings every trial shares (store, model, seed, device...); the
    sampler is seeded from ``base.seed`` and the trial number, so a resumed sweep asks for
    the same parameters an uninterrupted one would.
    """
    import optuna
    from optuna.trial import TrialState

    if trials < 1:
        raise MuzarrError(f"--trials {trials} must be at least 1")
    if "://" not in base.store:  # a folder: the same store whatever the working directory of a resume
        base = dataclasses.replace(base, store=str(Path(base.store).expanduser().resolve()))
    store = open_store(base.store)
    task = store.task
    # a store the model cannot read would fail every trial: say so once, before the first
    plan_for(store, base.input_spec(), base.resolve(store.dataset))
    if base.split_scheme is not None:
        store.split(base.split_scheme, "train")
    metric = spec.metric or PRIMARY[task]
    if metric not in (*SCALARS[task], "loss"):
        raise MuzarrError(f"sweep metric {metric!r} is not a {task} metric; choose from {', '.join((*SCALARS[task], 'loss'))}")
    goal = spec.goal or ("minimize" if metric == "loss" else "maximize")
    _check_choices(spec, "sweep")
    # the command line wins over the sweep file (e.g. --epochs 1 for a quick look)
    fixed = {p.target for p in spec.parameters if p.target in TRAIN_PARAMS and getattr(base, p.target) is not None}
    fixed |= {p.target for p in spec.parameters if p.target.startswith("model.") and p.target[6:] in base.model_opts}
    if fixed:
        echo(f"note: {', '.join(sorted(t.removeprefix('model.') for t in fixed))} set on the command line: not swept")
        spec = spec.without(fixed)
    if not spec.searched():
        raise MuzarrError("the sweep searches nothing: every parameter is fixed (value: or the command line); "
                          "give some of them values: [...] or min/max")
    grid = spec.grid() if spec.method == "grid" else None
    total = min(trials, len(grid)) if grid is not None else trials
    if grid is not None and len(grid) < trials:
        echo(f"note: the grid has {len(grid)} combinations: {len(grid)} trials")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {"store": base.store, "model": base.model, "method": spec.method, "metric": metric, "goal": goal,
             "parameters": [dataclasses.asdict(p) for p in spec.parameters],
             "base": {k: v for k, v in base.to_dict().items()
                      if k not in ("store", "model", *RUNTIME_FIELDS)}}  # fmt: skip
    if storage is not None:
        state["storage"] = study_storage(storage)[1]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _locked(out):
        study = _open_study(storage, out, json.loads(json.dumps(state, default=str)), direction=goal)
        distributions = spec.distributions()
        interrupted = list(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        asked: dict[int, dict[str, Any]] = {t.number: t.params for t in interrupted}

        def finished() -> int:
            return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))

        def next_trial(running: int) -> tuple[int, TrainConfig] | None:
            if interrupted:
                trial = interrupted.pop(0)
                echo(f"trial {trial.number}: interrupted earlier, continuing it")
                return trial.number, spec.apply(base, trial.params)[0]
            if finished() + running >= total:
                return None
            number = len(study.get_trials(deepcopy=False))
            seed = (base.seed * 100_003 + number) % 2**32  # per trial: a resumed sweep samples what it would have
            if grid is not None:
                if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    if number >= len(grid):
                        return None
                    study.enqueue_trial(grid[number])
                study.sampler = optuna.samplers.RandomSampler(seed=seed)  # unused: the grid point is enqueued
            elif spec.method == "random":
                study.sampler = optuna.samplers.RandomSampler(seed=seed)
            else:
                # few random start-up trials: a short sweep still gets Bayesian proposals; with trials in
                # flight, Optuna's TPE (constant_liar, its default) counts them as bad to propose elsewhere
                startup = max(2, min(10, total // 3))
                study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
            trial = study.ask(fixed_distributions=distributions)
            asked[trial.number] = trial.params
            return trial.number, spec.apply(base, trial.params)[0]

        def on_result(result: TrialResult) -> None:
            _tell(study, result, asked[result.number], spec, metric, f"{finished() + 1}/{total}", echo)
            write_leaderboard(study, spec, out, metric=metric, goal=goal, task=task)

        run_trials(next_trial, on_result, out=out, cluster=cluster, device=base.device, echo=echo)
        board = write_leaderboard(study, spec, out, metric=metric, goal=goal, task=task)
    if len(board) and (board["state"] == "fail").all():
        first = out / f"trial-{board['trial'].min():03d}" / "error.txt"
        reason = first.read_text().strip() if first.exists() else f"valid {metric} was not finite"
        raise MuzarrError(f"every trial of the sweep in {out} failed; the first: {reason}")
    return board


def _tell(study, result: TrialResult, suggested: dict, spec: SweepSpec, metric: str, progress: str,
          echo: Callable[[str], None]) -> None:  # fmt: skip
    """Tell the study how a trial ended, and say it in one line."""
    from optuna.trial import TrialState

    number = result.number
    shown = "  ".join(f"{k}={_fmt(v)}" for k, v in spec.values(suggested).items() if k in suggested)
    where = f"  on worker {result.worker}" if result.worker is not None else ""
    if result.error is not None:
        study.tell(number, state=TrialState.FAIL)
        echo(f"trial {number} ({progress})  {shown}  failed: {result.error.splitlines()[0]}{where}")
        return
    value = result.metrics["valid"].get(metric)
    if value is None or not math.isfinite(value):
        study.tell(number, state=TrialState.FAIL)
        echo(f"trial {number} ({progress})  {shown}  failed: valid {metric} is {value}{where}")
        return
    study.tell(number, float(value))
    best = study.best_trial
    echo(f"trial {number} ({progress})  {shown}  valid {metric} {value:.4f}  "
         f"({result.seconds:.0f} s; best {best.value:.4f}, trial {best.number}){where}")  # fmt: skip


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_leaderboard(study, spec: SweepSpec, out: Path, *, metric: str, goal: str, task: str) -> pd.DataFrame:
    """``leaderboard.csv`` and ``leaderboard.md`` in ``out``: finished trials, best first, failed last."""
    from optuna.trial import TrialState

    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        run_dir = out / f"trial-{trial.number:03d}"
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name.lower(), **spec.values(trial.params)}
        metrics = json.loads(RunDir(run_dir).metrics_file.read_text()) if RunDir(run_dir).finished else {}
        for part in ("valid", "test"):
            for name in (metric, *SCALARS[task]):
                row.setdefault(f"{part}_{name}", metrics.get(part, {}).get(name))
        for name in ("best_epoch", "epochs_run", "parameters", "train_seconds", "co2_kg"):
            row[name] = metrics.get(name)
        row["run_dir"] = str(run_dir)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        key = pd.to_numeric(table[f"valid_{metric}"], errors="coerce")
        table = table.assign(_key=-key if goal == "maximize" else key).sort_values(["_key", "trial"], na_position="last")
        table = table.drop(columns="_key").reset_index(drop=True)
        table.insert(0, "rank", range(1, len(table) + 1))
    table.to_csv(out / "leaderboard.csv", index=False)
    (out / "leaderboard.md").write_text(leaderboard_markdown(table, spec, metric=metric, task=task) + "\n")
    return table


def leaderboard_markdown(table: pd.DataFrame, spec: SweepSpec, *, metric: str, task: str) -> str:
    """The leaderboard as a Markdown table: rank, trial, swept parameters, valid/test metrics, time, CO2."""
    primary = PRIMARY[task]
    columns = ["rank", "trial", *(p.name for p in spec.searched()), f"valid_{metric}", f"test_{primary}",
               *(f"test_{m}" for m in SCALARS[task] if m != primary), "best_epoch", "train_seconds", "co2_kg"]  # fmt: skip
    columns = list(dict.fromkeys(c for c in columns if c in table.columns))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        cells = []
        for c in columns:
            value = row[c]
            if c == "trial":
                cells.append(f"{value}" + ("" if row["state"] == "complete" else " (failed)"))
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            elif c == "co2_kg":
                cells.append(f"{value:.6f}")
            elif c == "train_seconds":
                cells.append(f"{value:.1f}")
            elif isinstance(value, float):
                cells.append(f"{value:.4f}" if c.startswith(("valid_", "test_")) else f"{value:.4g}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
