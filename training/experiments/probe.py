"""``train probe``: MARBLE-style probes of a stored per-clip vector, every layer and their mean, in one pass.

:func:`run_probe` reads the vectors of every clip of the split once (an embedding's layers, each
averaged over frames and sub-clips, and the mean of all its layers: "all"; or a tabular set),
standardises each probe's input with the training clips' mean and std, trains an MLP and/or a
linear probe per input in one batched pass (:mod:`training.experiments.probe_engine`), scores the
kept (best validation) weights on valid and test with the training loop's metrics, and writes
``layers.csv``, ``layers.png`` and ``probe.json`` (:mod:`training.experiments.probe_report`).
The best layer is picked on validation; its test score is the one reported.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import MuzarrError, Store, open_store
from pipeline.store import ArrayReader
from pipeline.suggest import did_you_mean
from training.data.spec import InputSpec, parse_input
from training.data.vectors import VectorLayout, to_vectors, vector_layout
from training.experiments.probe_engine import PROBE_KINDS, ProbeSettings, fit_probes, predict, scores_of, stack
from training.experiments.probe_report import ProbeDir, ProbeResult, ProbeRow
from training.run.device import pick_device
from training.run.emissions import start_tracker, stop_tracker
from training.run.metrics import PRIMARY, SCALARS, compute_metrics

__all__ = ["ALL", "PROBES", "ProbeConfig", "ProbeData", "Target", "load_probe_data", "probe_targets", "run_probe"]

#: the row of the mean of every stored layer
ALL = "all"
#: what ``--probe`` takes
PROBES = (*PROBE_KINDS, "both")
_DEFAULTS = ProbeSettings()


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Everything a probe run is asked to do (``train probe``'s options; see ``docs/probes.md``).

    ``input``: ``--input``'s spelling (``embedding/VARIANT[,layer=N]`` or ``tabular/SET``);
    ``layers``: which layers get a probe (``"0-12,all"``; default every stored layer and ``all``);
    the training settings default to MARBLE's (:class:`~training.experiments.probe_engine.ProbeSettings`);
    ``max_clips`` keeps the first N clips of each split (smoke runs); ``threads`` sets torch's CPU
    threads for the run (default: torch's own).
    """

    store: str
    input: str
    probe: str = "both"
    layers: str | None = None
    lr: float = _DEFAULTS.lr
    batch_size: int = _DEFAULTS.batch_size
    max_epochs: int = _DEFAULTS.max_epochs
    patience: int = _DEFAULTS.patience
    hidden: int = _DEFAULTS.hidden
    dropout: float = _DEFAULTS.dropout
    seed: int = 0
    split_scheme: str | None = None
    device: str = "auto"
    emissions: bool = True
    country: str = "ESP"
    max_clips: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise MuzarrError(f"--probe {self.probe!r} must be one of {', '.join(PROBES)}{did_you_mean(str(self.probe), PROBES)}")
        for name in ("batch_size", "max_epochs", "patience", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MuzarrError(f"--{name.replace('_', '-')} {value!r} must be a positive integer")
        if not self.lr > 0:
            raise MuzarrError(f"--lr {self.lr!r} must be a positive learning rate, e.g. 5e-3")
        if not 0 <= self.dropout < 1:
            raise MuzarrError(f"dropout={self.dropout!r} must be in [0, 1)")
        if self.max_clips is not None and self.max_clips < 2:
            raise MuzarrError(f"max_clips={self.max_clips!r} must be at least 2")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise MuzarrError(f"--threads {self.threads!r} must be a positive integer")
        parse_input(self.input)

    @property
    def kinds(self) -> tuple[str, ...]:
        return PROBE_KINDS if self.probe == "both" else (self.probe,)

    def settings(self, kind: str) -> ProbeSettings:
        return ProbeSettings(kind=kind, hidden=self.hidden, dropout=self.dropout, lr=self.lr, batch_size=self.batch_size,
                             max_epochs=self.max_epochs, patience=self.patience)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Target:
    """One probe's input: ``label`` (a hidden-state index as text, ``all``, or a tabular set's name) and
    ``position`` on the layer axis (``None``: the mean of every stored layer, or the whole tabular vector)."""

    label: str
    position: int | None


def probe_targets(spec: InputSpec, layers: str | None, layout: VectorLayout) -> list[Target]:
    """The probes' inputs: ``--layers`` (``"0-12,all"``, ``"4,7"``; default every stored layer, then
    ``all``), or the one layer of ``--input ...,layer=N``; a tabular set is one input."""
    if layout.layers is None:
        if layers is not None:
            raise MuzarrError(f"--layers {layers}: {layout.name} is one vector per clip, with no layers: drop --layers")
        return [Target(layout.name.split("/", 1)[1], None)]
    if spec.layer is not None:
        if layers is not None:
            raise MuzarrError(f"--input {spec.describe()} names a layer already: drop --layers {layers} (or the layer option)")
        return [Target(str(spec.layer), layout.position(spec.layer, what=f"--input {spec.describe()}"))]
    if layers is None:
        return [*(Target(str(layer), i) for i, layer in enumerate(layout.layers)), Target(ALL, None)]
    targets: dict[str, Target] = {}
    for part in filter(None, (p.strip() for p in str(layers).split(","))):
        if part == ALL:
            targets[ALL] = Target(ALL, None)
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise MuzarrError(f"--layers {layers}: {part!r} is not a layer, a range A-B or all (e.g. --layers 0-12,all)")
        for layer in range(int(first), int(last if dash else first) + 1):
            targets[str(layer)] = Target(str(layer), layout.position(layer, what=f"--layers {layers}"))
    if not targets:
        raise MuzarrError(f"--layers {layers!r} names no layer (e.g. --layers 0-12,all)")
    return list(targets.values())


@dataclasses.dataclass(frozen=True)
class ProbeData:
    """The probes' inputs of every clip of a split, read once.

    ``x [P, N, D]`` float32, probe ``p``'s input in ``x[p]``, standardised with the training clips'
    mean and std; clips ordered train, valid, test (``parts`` gives each part's slice);
    ``targets`` their labels (multi-hot float32 ``[N, C]``, or class indices ``[N]``).
    """

    x: np.ndarray
    targets: np.ndarray
    parts: dict[str, slice]
    clip_ids: np.ndarray
    scheme: str

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        where = self.parts[name]
        return self.x[:, where], self.targets[where]


def load_probe_data(store: Store, layout: VectorLayout, targets: list[Target], *, scheme: str,
                    max_clips: int | None = None, echo: Callable[[str], Any] = print) -> ProbeData:  # fmt: skip
    """Read the split's clips of ``layout``'s array once, shard by shard (each row checked against its
    digest), into the inputs of ``targets``: frames and sub-clips averaged, one layer or every layer's mean."""
    parts = {part: store.split(scheme, part) for part in ("train", "valid", "test")}
    failed = store.array_failures(layout.name)
    if failed:
        lost = np.fromiter(failed, dtype=np.int64)
        dropped = sum(int(np.isin(rows, lost).sum()) for rows in parts.values())
        parts = {part: rows[~np.isin(rows, lost)] for part, rows in parts.items()}
        echo(f"note: {dropped} clip(s) failed {layout.name} when it was computed: left out, see `pipe info {store.url}`")
    labels = store.label_matrix
    if store.task == "multiclass":
        parts = {part: rows[labels[rows] >= 0] for part, rows in parts.items()}  # unlabelled clips can't be scored
    if max_clips is not None:
        parts = {part: rows[:max_clips] for part, rows in parts.items()}
    for part in ("train", "valid"):
        if not len(parts[part]):
            raise MuzarrError(f"split scheme {scheme!r} of {store.url} has no {part} clips with {layout.name}")
    rows = np.concatenate([parts["train"], parts["valid"], parts["test"]])
    x = np.empty((len(targets), len(rows), layout.dim), dtype=np.float32)
    reader = ArrayReader(store, layout.name)
    order = np.argsort(rows, kind="stable")  # read in store order, shard by shard
    shard = rows[order] // reader.rows_per_shard
    for group in np.split(order, np.flatnonzero(np.diff(shard)) + 1):
        vectors = to_vectors(reader.rows(rows[group]), layout, positions=None if layout.layers is None else list(range(len(layout.layers))))
        if layout.subclips:  # a clip's vector: the mean of its sub-clips'
            vectors = vectors.mean(axis=1, dtype=np.float32)
        for p, target in enumerate(targets):
            if layout.layers is None:
                x[p, group] = vectors
            else:
                x[p, group] = vectors.mean(axis=1) if target.position is None else vectors[:, target.position]
    if not np.isfinite(x).all():
        bad = rows[np.flatnonzero(~np.isfinite(x).all(axis=(0, 2)))[0]]
        raise MuzarrError(f"clip {store.clips['clip_id'].iloc[bad]!r} of {store.url} has non-finite values in {layout.name}: "
                          f"refusing to probe it (run `pipe verify {store.url}`)")  # fmt: skip
    n_train = len(parts["train"])
    mean = x[:, :n_train].mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    std = np.maximum(x[:, :n_train].std(axis=1, keepdims=True, dtype=np.float64), 1e-5).astype(np.float32)
    x -= mean
    x /= std
    bounds = np.cumsum([0, *(len(parts[p]) for p in ("train", "valid", "test"))])
    return ProbeData(x, labels[rows], {p: slice(int(bounds[i]), int(bounds[i + 1])) for i, p in enumerate(("train", "valid", "test"))},
                     store.clips["clip_id"].to_numpy()[rows], scheme)  # fmt: skip


def probe_seed(seed: int, kind: str, label: str) -> int:
    """The seed of one probe's weights and dropout: its own, whatever other probes train beside it."""
    code = [ord(c) for c in label]
    return int(np.random.SeedSequence([seed, PROBE_KINDS.index(kind), *code]).generate_state(1)[0])


def order_seed(seed: int, kind: str) -> int:
    """The seed of the batches' order, the same for every probe of a pass."""
    return int(np.random.SeedSequence([seed, PROBE_KINDS.index(kind), 1_000_003]).generate_state(1)[0])


def run_probe(config: ProbeConfig, out: Path, *, overwrite: bool = False, progress: bool = True,
              echo: Callable[[str], Any] = print) -> ProbeResult:  # fmt: skip
    """Probe ``config.input`` of ``config.store`` into ``out``: see the module docstring.

    Everything that can be checked is checked before the data are read: the store, the array
    (did you mean), the layers, the split scheme and the folder (a finished probe run there is
    kept unless ``overwrite``).
    """
    store = open_store(config.store)
    if not store.complete:
        raise MuzarrError(f"store {store.url} is not complete: finish it with `pipe build` first")
    spec = parse_input(config.input)
    layout = vector_layout(store, spec.array_name)
    targets = probe_targets(spec, config.layers, layout)
    schemes = store.split_schemes
    scheme = config.split_scheme or schemes[0]
    if scheme not in schemes:
        raise MuzarrError(f"--split-scheme {scheme!r}: {store.url} has {', '.join(schemes)}{did_you_mean(scheme, schemes, quote=True)}")
    folder = ProbeDir(out)
    folder.check(overwrite=overwrite)
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    data = load_probe_data(store, layout, targets, scheme=scheme, max_clips=config.max_clips, echo=echo)
    read_seconds = time.perf_counter() - started
    counts = {part: int(where.stop - where.start) for part, where in data.parts.items()}
    echo(f"probing {layout.name} of {store.url}: {len(targets)} input(s) ({', '.join(t.label for t in targets)}) x "
         f"{layout.dim} dims, {counts['train']}/{counts['valid']}/{counts['test']} clips (split {scheme!r}), "
         f"read in {read_seconds:.1f} s; {' and '.join(config.kinds)} probes on {device}")  # fmt: skip
    folder.prepare()
    tracker = start_tracker(enabled=config.emissions, country=config.country, out=folder.path)
    rows: list[ProbeRow] = []
    try:
        for kind in config.kinds:
            rows += _probe_pass(config, kind, data, targets, store, device, progress=progress)
    finally:
        emissions = stop_tracker(tracker)
    feature = dict(store.arrays[layout.name].feature or {})
    result = ProbeResult(
        config=config.to_dict(), store=store.url, dataset=store.dataset, task=store.task, array=layout.name, feature=feature,
        layers=[t.label for t in targets], dim=layout.dim, split_scheme=scheme, counts=counts, rows=rows,
        primary=PRIMARY[store.task], metrics=list(SCALARS[store.task]), device=str(device),
        seconds=time.perf_counter() - started, read_seconds=read_seconds, torch=torch.__version__,
        torch_threads=torch.get_num_threads(), **emissions,
    )  # fmt: skip
    folder.write(result)
    return result


def _probe_pass(config: ProbeConfig, kind: str, data: ProbeData, targets: list[Target], store: Store,
                device: torch.device, *, progress: bool) -> list[ProbeRow]:  # fmt: skip
    """Train one kind of probe on every target at once; score each on valid and test."""
    from tqdm.auto import tqdm

    task, classes = store.task, store.classes
    settings = config.settings(kind)
    x_train, y_train = data.part("train")
    x_valid, y_valid = data.part("valid")
    x_test, y_test = data.part("test")
    as_tensor = {"multilabel": torch.float32, "multiclass": torch.int64}[task]
    bar = tqdm(total=settings.max_epochs, desc=f"{kind} probes x {len(targets)}", unit="epoch", disable=not progress, leave=False)

    def on_epoch(epoch: int, active: np.ndarray, values: np.ndarray) -> None:
        bar.update(1)
        if len(values) and np.isfinite(values).any():
            best = int(np.nanargmax(values))
            bar.set_postfix(training=f"{len(active)}/{len(targets)}", best=f"{values[best]:.4f} ({targets[active[best]].label})")

    started = time.perf_counter()
    fits = fit_probes(
        torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device, as_tensor), torch.from_numpy(x_valid).to(device),
        y_valid, settings=settings, task=task, n_classes=len(classes),
        seeds=[probe_seed(config.seed, kind, t.label) for t in targets], order_seed=order_seed(config.seed, kind),
        on_epoch=on_epoch,
    )  # fmt: skip
    bar.close()
    seconds = time.perf_counter() - started
    weights = {name: value.to(device) for name, value in stack(fits).items()}
    scored = {}
    for part, x, y in (("valid", x_valid, y_valid), ("test", x_test, y_test)):
        scores = scores_of(predict(kind, weights, torch.from_numpy(x).to(device)), task=task) if len(y) else None
        scored[part] = [_scalars(task, y, None if scores is None else scores[p], classes) for p in range(len(targets))]
    return [
        ProbeRow(probe=kind, layer=t.label, valid=scored["valid"][p], test=scored["test"][p], best_epoch=fit.best_epoch,
                 epochs=fit.epochs, final_lr=fit.lr, seconds=seconds)
        for p, (t, fit) in enumerate(zip(targets, fits))
    ]  # fmt: skip


def _scalars(task: str, targets: np.ndarray, scores: np.ndarray | None, classes: list[str]) -> dict[str, float]:
    """The task's scalar metrics as the training loop computes them (NaN for an empty part)."""
    if scores is None:
        return {name: float("nan") for name in SCALARS[task]}
    metrics = compute_metrics(task, targets, scores, classes)
    return {name: float(metrics[name]) for name in SCALARS[task]}
