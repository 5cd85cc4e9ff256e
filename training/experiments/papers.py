"""Papers: a published table as data, one YAML file per report in ``training/experiments/papers/``.

A paper names the report (title, citation), the catalog dataset and the test metrics of its
table, an honest GPU-hours estimate (``gpu_hours`` and ``gpu_hours_basis``), how to build
each store it uses (``stores``: role → ``pipe build`` command; ``main`` defaults to
``pipe build DATASET``) and one row per line of the table::

    - label: Dieleman 256/256            # the table's name for the line
      model: dieleman                    # a key of training.models.MODELS
      model_opts: {filter_length: 256, stride: 256}
      store: subclips                    # store role (default main)
      repeats: 5                         # seeds seed .. seed+4 (default 1)
      published: {roc_auc: {mean: 0.8267, std: 0.0027}}   # or roc_auc: 0.8267
      train: {epochs: 20}                # other TrainConfig settings (validated)
      smoke: {model_opts: {weights: random, config: tiny}}  # --smoke only
      note: what differs from the report

:func:`load_paper` validates a file once into a frozen :class:`Paper`: an unknown key
anywhere, a model that is not registered, a model option it does not take or a setting that
makes no valid protocol is one :class:`MuzarrError` naming the file, the row and the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline import MuzarrError
from pipeline.config import load_catalog
from pipeline.typed import typed_fields
from training.models import MODELS, model_options
from training.run.config import TrainConfig
from training.run.metrics import SCALARS

__all__ = ["PAPERS", "ROLE_PATTERN", "SMOKE_TRAIN", "Paper", "PaperRow", "Published", "is_number", "load_paper"]

#: every packaged paper by name: ``training/experiments/papers/NAME.yaml``
PAPERS: dict[str, Path] = {
    Path(entry.name).stem: Path(str(entry))
    for entry in sorted(resources.files("training").joinpath("experiments").joinpath("papers").iterdir(), key=lambda e: e.name)
    if entry.name.endswith(".yaml")
}

PAPER_KEYS = ("name", "title", "citation", "dataset", "metrics", "gpu_hours", "gpu_hours_basis", "stores", "notes", "rows")
ROW_KEYS = ("label", "model", "published", "repeats", "store", "model_opts", "train", "smoke", "note")
SMOKE_KEYS = ("model_opts", "train")
#: TrainConfig fields the runner sets itself, which a paper row may not
RUNNER_FIELDS = ("store", "model", "seed", "model_opts", "device", "emissions")
#: what ``--smoke`` changes in every row (before the row's own ``smoke:`` overrides); one repeat
SMOKE_TRAIN = {"epochs": 1, "batch_size": 8, "max_clips": 16, "eval_crops": 2}
#: a store role: ``main``, ``subclips``
ROLE_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


# -- the paper as data ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Published:
    """A published number: one value, or the mean ± std of repeated runs."""

    mean: float
    std: float | None = None

    def __str__(self) -> str:
        return f"{self.mean:.4f}" + (f" ± {self.std:.4f}" if self.std is not None else "")

    @classmethod
    def from_value(cls, value: Any, *, where: str) -> Published:
        if is_number(value):
            return cls(float(value))
        if isinstance(value, dict):
            _check_keys(value, ("mean", "std"), where=where)
            if not is_number(value.get("mean")) or not (value.get("std") is None or is_number(value["std"])):
                raise MuzarrError(f"{where}: {value!r} must be {{mean: NUMBER, std: NUMBER}}")
            return cls(float(value["mean"]), None if value.get("std") is None else float(value["std"]))
        raise MuzarrError(f"{where}: {value!r} must be a number or {{mean: NUMBER, std: NUMBER}}")


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One line of a published table.

    Parameters
    ----------
    label : str
        The table's name for the line (``Short-chunk ResNet``).
    model : str
        A key of :data:`training.models.MODELS`.
    published : dict of str to Published
        Published test metrics (may be empty: a line the report gives no number for).
    repeats : int
        Runs, with seeds ``seed .. seed + repeats - 1``.
    store : str
        Role of the store it trains on (``main``; seed 001's raw-audio CNN: ``subclips``).
    model_opts, train : dict
        Model options; other :class:`~training.config.TrainConfig` settings (validated).
    smoke_model_opts, smoke_train : dict
        Overrides used with ``--smoke`` only (e.g. ``weights=random, config=tiny``).
    note : str
        What differs from the report, in a sentence.
    """

    label: str
    model: str
    published: dict[str, Published]
    repeats: int = 1
    store: str = "main"
    model_opts: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    smoke_model_opts: dict = dataclasses.field(default_factory=dict)
    smoke_train: dict = dataclasses.field(default_factory=dict)
    note: str = ""

    @property
    def slug(self) -> str:
        """Folder name of the row's runs: ``Sample-level CNN + SE`` → ``sample-level-cnn-se``."""
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")

    def config(self, store: str, *, repeat: int, seed: int = 0, smoke: bool = False, device: str = "auto",
               emissions: bool = True, extra_opts: dict | None = None) -> TrainConfig:  # fmt: skip
        """The :class:`TrainConfig` of repeat ``repeat``: the row's settings, then ``extra_opts``
        (``--model-opt``, the options this model takes), then the smoke overrides."""
        accepted = model_options(self.model)
        options = {**self.model_opts, **{k: v for k, v in (extra_opts or {}).items() if k in accepted}}
        settings = dict(self.train)
        if smoke:
            options.update(self.smoke_model_opts)
            settings.update({**SMOKE_TRAIN, **self.smoke_train})
        return TrainConfig(store=store, model=self.model, seed=seed + repeat, model_opts=options, device=device,
                           emissions=emissions, **settings)  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, *, metrics: tuple[str, ...], where: str) -> PaperRow:
        if not isinstance(data, dict):
            raise MuzarrError(f"{where}: a row must be a mapping with label, model and published, not {data!r}")
        label = data.get("label")
        if not isinstance(label, str) or not label.strip():
            raise MuzarrError(f"{where}: every row needs a label (the table's name for it)")
        where = f"{where} ({label})"
        _check_keys(data, ROW_KEYS, where=where)
        model = data.get("model")
        if model not in MODELS:
            raise MuzarrError(f"{where}: unknown model {model!r}; known models: {', '.join(sorted(MODELS))}")
        published = {}
        for metric, value in _mapping(data.get("published"), where=f"{where}: published").items():
            if metric not in metrics:
                raise MuzarrError(f"{where}: published metric {metric!r} is not one of the paper's metrics {list(metrics)}")
            published[metric] = Published.from_value(value, where=f"{where}: published {metric}")
        repeats = data.get("repeats", 1)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise MuzarrError(f"{where}: repeats={repeats!r} must be a positive integer")
        store = data.get("store", "main")
        if not isinstance(store, str) or not ROLE_PATTERN.fullmatch(store):
            raise MuzarrError(f"{where}: store={store!r} must be a role name such as main or subclips")
        smoke = _mapping(data.get("smoke"), where=f"{where}: smoke")
        _check_keys(smoke, SMOKE_KEYS, where=f"{where}: smoke")
        row = cls(
            label=label, model=model, published=published, repeats=repeats, store=store,
            model_opts=_model_opts(model, data.get("model_opts"), where=f"{where}: model_opts"),
            train=_train_settings(data.get("train"), where=f"{where}: train"),
            smoke_model_opts=_model_opts(model, smoke.get("model_opts"), where=f"{where}: smoke: model_opts"),
            smoke_train=_train_settings(smoke.get("train"), where=f"{where}: smoke: train"),
            note=str(data.get("note") or "").strip(),
        )  # fmt: skip
        for smoke_run in (False, True):  # the settings combine into a valid protocol, or fail here
            try:
                row.config("<store>", repeat=0, smoke=smoke_run).resolve()
            except MuzarrError as err:
                raise MuzarrError(f"{where}{': smoke' if smoke_run else ''}: {err}") from None
        return row


@dataclasses.dataclass(frozen=True)
class Paper:
    """A published table to reproduce; see the module docstring and ``training/experiments/papers/*.yaml``.

    ``stores`` maps each role the rows use to the ``pipe build`` command that makes its store
    (``main`` defaults to ``pipe build DATASET``); ``metrics`` are the table's test metrics,
    all of one task.
    """

    name: str
    title: str
    citation: str
    dataset: str
    metrics: tuple[str, ...]
    rows: tuple[PaperRow, ...]
    gpu_hours: float
    gpu_hours_basis: str
    stores: dict[str, str]
    notes: str = ""
    path: Path | None = None

    @property
    def task(self) -> str:
        return next(task for task, names in SCALARS.items() if set(self.metrics) <= set(names))

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(row.store for row in self.rows))

    @property
    def n_runs(self) -> int:
        return sum(row.repeats for row in self.rows)

    @classmethod
    def from_dict(cls, data: Any, *, where: str, path: Path | None = None) -> Paper:
        if not isinstance(data, dict):
            raise MuzarrError(f"{where}: a paper must be a mapping of {', '.join(PAPER_KEYS)}")
        _check_keys(data, PAPER_KEYS, where=where)
        missing = [k for k in ("name", "title", "citation", "dataset", "metrics", "gpu_hours", "gpu_hours_basis", "rows")
                   if data.get(k) in (None, "", [])]  # fmt: skip
        if missing:
            raise MuzarrError(f"{where}: missing {', '.join(missing)}")
        text = {k: data[k] for k in ("name", "title", "citation", "dataset", "gpu_hours_basis")}
        for key, value in text.items():
            if not isinstance(value, str):
                raise MuzarrError(f"{where}: {key}={value!r} must be text")
        catalog = load_catalog()
        if text["dataset"] not in catalog:
            raise MuzarrError(f"{where}: dataset {text['dataset']!r} is not in the catalog; its datasets: {', '.join(catalog)}")
        metrics = data["metrics"]
        if isinstance(metrics, str):
            metrics = [metrics]
        if not isinstance(metrics, list) or not any(set(metrics) <= set(names) for names in SCALARS.values()):
            known = "; ".join(f"{task}: {', '.join(names)}" for task, names in SCALARS.items())
            raise MuzarrError(f"{where}: metrics={data['metrics']!r} must be test metrics of one task ({known})")
        if not is_number(data["gpu_hours"]) or data["gpu_hours"] <= 0:
            raise MuzarrError(f"{where}: gpu_hours={data['gpu_hours']!r} must be a positive number of hours")
        if not isinstance(data["rows"], list):
            raise MuzarrError(f"{where}: rows must be a list of rows")
        rows = tuple(
            PaperRow.from_dict(row, metrics=tuple(metrics), where=f"{where}: row {i + 1}") for i, row in enumerate(data["rows"])
        )
        slugs = [row.slug for row in rows]
        clashes = sorted({s for s in slugs if slugs.count(s) > 1})
        if clashes:
            raise MuzarrError(f"{where}: row labels must give distinct folder names; {clashes} repeat")
        stores = {str(k): v for k, v in _mapping(data.get("stores"), where=f"{where}: stores").items()}
        stores.setdefault("main", f"pipe build {data['dataset']} --out {data['dataset']}.zarr")
        for role, command in stores.items():
            if not ROLE_PATTERN.fullmatch(role) or not isinstance(command, str):
                raise MuzarrError(f"{where}: stores: {role}: {command!r} must be role: the pipe build command of its store")
        for i, row in enumerate(rows):
            if row.store not in stores:
                raise MuzarrError(f"{where}: row {i + 1} ({row.label}): store role {row.store!r}, which stores: does not "
                                  "describe (give stores: {role: the pipe build command of its store})")  # fmt: skip
        return cls(
            name=text["name"], title=text["title"], citation=text["citation"], dataset=text["dataset"],
            metrics=tuple(metrics), rows=rows, gpu_hours=float(data["gpu_hours"]),
            gpu_hours_basis=" ".join(text["gpu_hours_basis"].split()),
            stores={role: " ".join(command.split()) for role, command in stores.items()},
            notes=" ".join(str(data.get("notes") or "").split()), path=path,
        )  # fmt: skip


def load_paper(name_or_path: str | Path) -> Paper:
    """A packaged paper by name (:data:`PAPERS`) or a paper file, validated."""
    if str(name_or_path) in PAPERS:
        path = PAPERS[str(name_or_path)]
    elif Path(name_or_path).suffix in (".yaml", ".yml") and Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise MuzarrError(f"unknown paper {str(name_or_path)!r}; known papers: {', '.join(PAPERS)} (or a path to a .yaml file)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise MuzarrError(f"paper {path}: cannot read it ({type(err).__name__}: {err})") from None
    return Paper.from_dict(data, where=f"paper {path}", path=path)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mapping(value: Any, *, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MuzarrError(f"{where}: {value!r} must be a mapping")
    return value


def _check_keys(data: dict, allowed: tuple[str, ...], *, where: str) -> None:
    unknown = [str(k) for k in data if k not in allowed]
    if unknown:
        raise MuzarrError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}")


def _model_opts(model: str, value: Any, *, where: str) -> dict:
    options = _mapping(value, where=where)
    valid = model_options(model)
    _check_keys(options, tuple(valid), where=f"{where} of model {model}")
    return dict(options)


def _train_settings(value: Any, *, where: str) -> dict:
    settings = _mapping(value, where=where)
    for key in settings:
        if key in RUNNER_FIELDS:
            raise MuzarrError(f"{where}: {key} is set by `train reproduce` (--store, --seed, --device...), not a paper")
    allowed = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUNNER_FIELDS)
    _check_keys(settings, allowed, where=where)
    return typed_fields(TrainConfig, settings, where=where)
