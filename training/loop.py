"""One training run: store + model → run directory with metrics, curves, emissions, checkpoint.

The run directory holds ``config.json`` (the resolved configuration), ``history.csv`` (one
row per epoch), ``metrics.json`` (best epoch, valid and test metrics, parameters, wall time,
energy and CO2), ``normalization.json``, ``best.pt`` (plain state dict of the best epoch),
``last.pt`` (everything ``--resume`` needs) and PNG plots. Checkpoints hold tensors and plain
values only and are loaded with ``torch.load(weights_only=True)``: opening one runs no code.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline import MuzarrError, open_store
from training.data import SplitReader, TrainStream, eval_batches, plan_examples
from training.metrics import PRIMARY, SCALARS, compute_metrics
from training.models import build_model, count_parameters, get_model

GLOBAL_DEFAULTS = {
    "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
    "epochs": 10, "batch_size": 32, "scheduler": None, "early_stopping": None,
}  # fmt: skip
OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULERS = ("none", "plateau", "step", "cosine", "adam_to_sgd")
CACHES = ("auto", "ram", "gpu", "none")
CACHE_AUTO_BYTES = 4 << 30


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on. ``None`` fields take the model's defaults (its paper or seed report)."""

    store: str
    model: str
    split_scheme: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    scheduler: str | None = None
    scheduler_opts: dict = dataclasses.field(default_factory=dict)
    early_stopping: int | None = None
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    model_opts: dict = dataclasses.field(default_factory=dict)
    cache: str = "auto"
    workers: int = 0
    eval_crops: int | None = None
    emissions: bool = True
    country: str = "ESP"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MuzarrError(f"run configuration has unknown field(s) {unknown}")
        return cls(**data)

    def resolved(self, dataset_defaults: dict[str, Any] | None = None) -> TrainConfig:
        """A copy with every ``None`` filled from the dataset's, the model's, then the global defaults."""
        entry = get_model(self.model)
        defaults = {**GLOBAL_DEFAULTS, **entry.defaults, **(dataset_defaults or {})}
        values = {}
        for key in ("epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay"):
            values[key] = getattr(self, key) if getattr(self, key) is not None else defaults[key]
        scheduler, scheduler_opts = self.scheduler, dict(self.scheduler_opts)
        if scheduler is None:
            default = defaults.get("scheduler") or {"name": "none"}
            scheduler = default["name"]
            scheduler_opts = {**{k: v for k, v in default.items() if k not in ("name", "monitor")}, **scheduler_opts}
        early = self.early_stopping
        if early is None and defaults.get("early_stopping"):
            early = int(defaults["early_stopping"]["patience"])
        eval_crops = self.eval_crops or defaults.get("eval_crops") or defaults.get("sub_clips")
        config = dataclasses.replace(
            self, **values, scheduler=scheduler, scheduler_opts=scheduler_opts, early_stopping=early, eval_crops=eval_crops
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise MuzarrError(f"--optimizer {self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise MuzarrError(f"--scheduler {self.scheduler!r} must be one of {', '.join(SCHEDULERS)}")
        if self.cache not in CACHES:
            raise MuzarrError(f"--cache {self.cache!r} must be one of {', '.join(CACHES)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MuzarrError(f"--{name.replace('_', '-')} {value!r} must be a positive integer")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise MuzarrError(f"--lr {self.lr!r} must be a positive number")


def dataset_train_defaults(dataset: str) -> dict[str, Any]:
    """The catalog's ``train:`` settings for ``dataset`` (empty when the catalog has none)."""
    from pipeline.config import load_catalog

    try:
        entry = load_catalog().get(dataset, {})
    except MuzarrError:
        return {}
    settings = dict(entry.get("train") or {})
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise MuzarrError(f"catalog dataset {dataset!r}: unknown train setting(s) {unknown}")
    return settings


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MuzarrError("--device cuda: no CUDA device is available here (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MuzarrError("--device mps: no Apple MPS device is available here (try --device auto)")
    if name not in ("cuda", "mps", "cpu"):
        raise MuzarrError(f"--device {name!r} must be auto, cuda, mps or cpu")
    return torch.device(name)


class Normalized(nn.Module):
    """Per-row standardisation fitted on the training split (per mel band, per tabular column), then the model."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.numel() == 0:
            return x
        shape = (-1, 1) if x.ndim == 3 else (-1,)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalise(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.normalise(x))


def fit_normalization(reader: SplitReader, *, max_clips: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per mel band (log-mel) or per column (tabular) over training clips; none for waveforms."""
    from training.data import to_float

    plan = reader.plan
    if plan.array == "waveform" or plan.array.startswith("waveform"):
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    total, total_sq, count = 0.0, 0.0, 0
    seen = 0
    for _, data in reader.blocks():
        values = to_float(data, reader.dtype).reshape(-1, *plan.item_shape).astype(np.float64)
        axes = (0, 2) if values.ndim == 3 else (0,)
        total = total + values.sum(axis=axes)
        total_sq = total_sq + (values**2).sum(axis=axes)
        count += values.size // values.shape[1]
        seen += len(data)
        if seen >= max_clips:
            break
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-5).astype(np.float32)


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=bool(config.nesterov) and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.RMSprop(params, lr=config.lr, momentum=config.momentum or 0.0, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer):
    opts = config.scheduler_opts
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=float(opts.get("factor", 0.5)), patience=int(opts.get("patience", 3))
        )
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=int(opts.get("step_size", 10)), gamma=float(opts.get("gamma", 0.1))
        )
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(opts.get("t_max", config.epochs)))
    return None


class Run:
    """A training run in ``out``: set up from a config, or reopened with :meth:`resume`."""

    def __init__(self, config: TrainConfig, out: Path, *, progress: bool = True) -> None:
        if "://" not in config.store:  # a local path: absolute, so --resume and predict work from anywhere
            config = dataclasses.replace(config, store=str(Path(config.store).expanduser().resolve()))
        self.store = open_store(config.store)
        self.dataset_defaults = dataset_train_defaults(self.store.dataset)
        self.config = config.resolved(self.dataset_defaults)
        self.out = Path(out)
        self.progress = progress
        self.device = pick_device(self.config.device)
        if not self.store.complete:
            raise MuzarrError(f"store {self.store.url} is not complete: finish it with `pipe build` first")
        entry = get_model(self.config.model)
        self.task = self.store.task
        self.classes = self.store.classes
        scheme = self.config.split_scheme or self.store.manifest["config"]["splits"][0]
        self.config = dataclasses.replace(self.config, split_scheme=scheme)
        self.plan = plan_examples(self.store, entry.input, eval_crops=self.config.eval_crops)
        targets = self.store.label_matrix
        parts = {part: self.store.split(scheme, part) for part in ("train", "valid", "test")}
        if self.task == "multiclass":
            parts = {part: rows[targets[rows] >= 0] for part, rows in parts.items()}  # unlabelled clips can't be scored
        for part in ("train", "valid"):
            if len(parts[part]) == 0:
                raise MuzarrError(f"split scheme {scheme!r} of {self.store.url} has no {part} clips")
        cache = self._cache_choice(sum(len(r) for r in parts.values()))
        self.readers = {
            part: SplitReader(self.store, self.plan, rows, targets[rows], cache=cache != "none") for part, rows in parts.items()
        }
        self.cache = cache
        n_classes = len(self.classes)
        torch.manual_seed(self.config.seed)  # the initial weights are part of what --seed fixes
        model = build_model(self.config.model, n_classes=n_classes, input_shape=self.plan.example_shape, **self.config.model_opts)
        mean, std = fit_normalization(self.readers["train"])
        self.model = Normalized(model, torch.from_numpy(mean), torch.from_numpy(std)).to(self.device)
        self.loss_fn = nn.BCEWithLogitsLoss() if self.task == "multilabel" else nn.CrossEntropyLoss()
        self.optimizer = make_optimizer(self.config, self.model.parameters())
        self.scheduler = make_scheduler(self.config, self.optimizer)
        self.primary = PRIMARY[self.task]
        self.history: list[dict[str, Any]] = []
        self.best = {"epoch": -1, "value": -math.inf}
        self.start_epoch = 0
        self.stale_epochs = 0
        self.train_seconds = 0.0

    def _cache_choice(self, n_rows: int) -> str:
        choice = self.config.cache
        if choice == "gpu" and self.device.type == "cpu":
            choice = "ram"
        if choice != "auto":
            return choice
        info = self.store.arrays[self.plan.array]
        nbytes = int(np.prod(info["shape"][1:])) * np.dtype(info["dtype"]).itemsize * n_rows
        return "ram" if nbytes <= CACHE_AUTO_BYTES else "none"

    # -- checkpoints --------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "best": dict(self.best),
            "stale_epochs": self.stale_epochs,
            "train_seconds": self.train_seconds,
            "optimizer_name": self.config.optimizer,
        }

    def _save(self, epoch: int) -> None:
        tmp = self.out / "last.pt.tmp"
        torch.save(self._state(epoch), tmp)
        os.replace(tmp, self.out / "last.pt")  # atomic: a kill leaves the old or the new checkpoint
        pd.DataFrame(self.history).to_csv(self.out / "history.csv", index=False)

    @classmethod
    def resume(cls, out: Path, *, progress: bool = True) -> Run:
        """Reopen the run in ``out`` after its last finished epoch."""
        out = Path(out)
        try:
            config = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["train"])
        except FileNotFoundError:
            raise MuzarrError(f"--resume {out}: no config.json there; is it a run directory?") from None
        run = cls(config, out, progress=progress)
        last = out / "last.pt"
        if not last.exists():
            return run
        state = torch.load(last, map_location=run.device, weights_only=True)
        if state.get("optimizer_name") != run.config.optimizer:
            run.optimizer = make_optimizer(dataclasses.replace(run.config, optimizer=state["optimizer_name"]), run.model.parameters())
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scheduler and state["scheduler"]:
            run.scheduler.load_state_dict(state["scheduler"])
        run.best = state["best"]
        run.stale_epochs = state["stale_epochs"]
        run.train_seconds = state["train_seconds"]
        run.start_epoch = state["epoch"] + 1
        run.history = pd.read_csv(out / "history.csv").to_dict("records")[: run.start_epoch]
        return run

    # -- training -----------------------------------------------------------------------
    def _batch_to_device(self, x: torch.Tensor, positions, reader: SplitReader) -> torch.Tensor:
        if not torch.isfinite(x).all():
            bad = torch.nonzero(~torch.isfinite(x.reshape(len(x), -1)).all(dim=1))[0].item()
            clip = reader.clip_ids[int(positions[bad // (len(x) // len(positions))])]
            raise MuzarrError(f"clip {clip!r} of {self.store.url} has non-finite values in {self.plan.array}: refusing to train on it")
        return x.to(self.device, non_blocking=True)

    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        torch.manual_seed(self.config.seed * 100_003 + epoch)  # dropout etc.: reproducible per epoch
        stream = TrainStream(self.readers["train"], batch_size=self.config.batch_size, seed=self.config.seed)
        stream.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=self.config.workers if self.cache == "none" else 0,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        self.model.train()
        total_loss, n_examples, waited = 0.0, 0, 0.0
        started = time.perf_counter()
        expected = len(self.readers["train"]) * self.plan.n_subclips
        bar = tqdm(total=expected, unit="ex", desc=f"epoch {epoch + 1}/{self.config.epochs}", disable=not self.progress, leave=False)
        fetch = time.perf_counter()
        for x, y, positions in loader:
            waited += time.perf_counter() - fetch
            x = self._batch_to_device(x, positions, self.readers["train"])
            y = y.to(self.device)
            with self._autocast():
                logits = self.model(x)
            loss = self.loss_fn(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += loss.item() * len(x)
            n_examples += len(x)
            bar.update(len(x))
            bar.set_postfix(loss=f"{total_loss / n_examples:.4f}", refresh=False)
            fetch = time.perf_counter()
        bar.close()
        seconds = time.perf_counter() - started
        return {
            "train_loss": total_loss / max(1, n_examples),
            "train_seconds": seconds,
            "samples_per_s": n_examples / seconds if seconds else 0.0,
            "data_wait_fraction": waited / seconds if seconds else 0.0,
        }

    @torch.no_grad()
    def predict(self, part: str) -> tuple[np.ndarray, float]:
        """Clip-level scores (sigmoid or softmax averaged over crops and sub-clips) and the mean loss."""
        reader = self.readers[part]
        self.model.eval()
        per_clip = self.plan.examples_per_clip_eval
        scores, losses, count = [], 0.0, 0
        for x, positions in eval_batches(reader, batch_clips=max(1, self.config.batch_size // per_clip)):
            x = self._batch_to_device(x, positions, reader)
            with self._autocast():
                logits = self.model(x).float()
            y = torch.from_numpy(reader.targets[np.repeat(positions, per_clip)]).to(self.device)
            losses += self.loss_fn(logits, y).item() * len(x)
            count += len(x)
            probs = torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=1)
            scores.append(probs.view(len(positions), per_clip, -1).mean(dim=1).cpu().numpy())
        if not scores:
            return np.zeros((0, len(self.classes)), np.float32), float("nan")
        return np.concatenate(scores), losses / count

    def evaluate(self, part: str) -> dict[str, Any]:
        scores, loss = self.predict(part)
        reader = self.readers[part]
        if len(reader) == 0:
            return {"loss": float("nan"), "n_clips": 0}
        return {"loss": loss, "n_clips": len(reader), **compute_metrics(self.task, reader.targets, scores, self.classes)}

    def _step_schedule(self, epoch: int, valid_loss: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(valid_loss)
        elif self.scheduler is not None:
            self.scheduler.step()
        elif self.config.scheduler == "adam_to_sgd" and epoch + 1 == int(self.config.scheduler_opts.get("switch_epoch", 80)):
            # Won et al.: after the Adam phase, reload the best weights and go on with SGD.
            if self.config.scheduler_opts.get("reload_best", True) and (self.out / "best.pt").exists():
                self.model.load_state_dict(torch.load(self.out / "best.pt", map_location=self.device, weights_only=True))
            sgd = self.config.scheduler_opts.get("sgd", {})
            switched = dataclasses.replace(
                self.config, optimizer="sgd", lr=sgd.get("lr", 1e-3), momentum=sgd.get("momentum", 0.9),
                nesterov=sgd.get("nesterov", True), weight_decay=sgd.get("weight_decay", self.config.weight_decay),
            )
            self.optimizer = make_optimizer(switched, self.model.parameters())
            self.config = dataclasses.replace(self.config, optimizer="sgd")

    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to the end (or early stop), then evaluate the best epoch."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_config()
        tracker = _start_tracker(self.config, self.out)
        started = time.perf_counter()
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                if self.config.early_stopping and self.stale_epochs >= self.config.early_stopping:
                    break
                train = self.train_epoch(epoch)
                valid = self.evaluate("valid")
                self.train_seconds += train["train_seconds"]
                self._step_schedule(epoch, valid["loss"])
                row = {"epoch": epoch + 1, **train, "valid_loss": valid["loss"],
                       **{f"valid_{k}": valid[k] for k in SCALARS[self.task]},
                       "lr": self.optimizer.param_groups[0]["lr"]}  # fmt: skip
                self.history.append(row)
                value = valid[self.primary]
                if value > self.best["value"]:
                    self.best = {"epoch": epoch + 1, "value": float(value)}
                    self.stale_epochs = 0
                    torch.save(self.model.state_dict(), self.out / "best.pt")
                else:
                    self.stale_epochs += 1
                self._save(epoch)
                if self.progress:
                    print(
                        f"epoch {epoch + 1}/{self.config.epochs}  train loss {train['train_loss']:.4f}  valid loss "
                        f"{valid['loss']:.4f}  valid {self.primary} {value:.4f}  {train['samples_per_s']:.0f} ex/s",
                        flush=True,
                    )
        finally:
            emissions = _stop_tracker(tracker)
        self.model.load_state_dict(torch.load(self.out / "best.pt", map_location=self.device, weights_only=True))
        results = {part: self.evaluate(part) for part in ("valid", "test")}
        metrics = {
            "model": self.config.model,
            "store": self.store.url,
            "dataset": self.store.dataset,
            "task": self.task,
            "split_scheme": self.config.split_scheme,
            "primary_metric": self.primary,
            "best_epoch": self.best["epoch"],
            "epochs_run": len(self.history),
            "parameters": count_parameters(self.model.model),
            "train_seconds": self.train_seconds,
            "wall_seconds": time.perf_counter() - started,
            "device": str(self.device),
            "classes": self.classes,
            "valid": results["valid"],
            "test": results["test"],
            **emissions,
        }
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
        self._plots(metrics)
        return metrics

    def _write_config(self) -> None:
        data = {
            "train": self.config.to_dict(),
            "input": {"array": self.plan.array, "example_shape": list(self.plan.example_shape),
                      "eval_crops": self.plan.eval_crops, "n_subclips": self.plan.n_subclips},
            "cache": self.cache,
            "dataset_defaults": self.dataset_defaults,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
        }  # fmt: skip
        if not (self.out / "config.json").exists():
            (self.out / "config.json").write_text(json.dumps(data, indent=2))
        norm = {"mean": self.model.mean.cpu().tolist(), "std": self.model.std.cpu().tolist(), "array": self.plan.array}
        (self.out / "normalization.json").write_text(json.dumps(norm))

    def _plots(self, metrics: dict[str, Any]) -> None:
        from training.plots import plot_confusion, plot_curves, plot_per_tag

        title = f"{self.config.model} on {self.store.dataset}"
        plot_curves(pd.DataFrame(self.history), self.primary, self.out / "curves.png", title=title)
        if self.task == "multilabel":
            frequency = dict(zip(self.classes, self.readers["train"].targets.sum(axis=0).astype(int).tolist()))
            plot_per_tag(metrics["test"].get("per_tag_roc_auc", {}), frequency, self.out / "per_tag_auc.png",
                         title=f"{title}: test ROC-AUC per tag")  # fmt: skip
        elif "confusion_matrix" in metrics["test"]:
            plot_confusion(metrics["test"]["confusion_matrix"], self.classes, self.out / "confusion.png",
                           title=f"{title}: test confusion matrix")  # fmt: skip


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _start_tracker(config: TrainConfig, out: Path):
    if not config.emissions:
        return None
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    from codecarbon import OfflineEmissionsTracker

    tracker = OfflineEmissionsTracker(
        country_iso_code=config.country, save_to_file=False, log_level="error", output_dir=str(out),
    )
    tracker.start()
    return tracker


def _stop_tracker(tracker) -> dict[str, Any]:
    if tracker is None:
        return {"energy_kwh": None, "co2_kg": None}
    emissions = tracker.stop()
    data = tracker.final_emissions_data
    return {"energy_kwh": float(data.energy_consumed), "co2_kg": float(emissions or 0.0), "co2_country": data.country_iso_code}


def train(config: TrainConfig, *, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run one training run into ``out`` and return its metrics."""
    return Run(config, out, progress=progress).fit()


# -- inference from a run directory ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run directory rebuilt for inference by :func:`load_run`: its resolved ``config``, the
    model's ``task`` and output ``classes``, ``model`` (``Normalized``, eval mode, on ``device``),
    the per-example shape it was trained on and ``metrics.json`` (``None`` while unfinished)."""

    out: Path
    config: TrainConfig
    task: str
    classes: list[str]
    model: Normalized
    device: torch.device
    example_shape: tuple[int, ...]
    metrics: dict[str, Any] | None


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu", checkpoint: str = "best.pt") -> LoadedRun:
    """Rebuild ``Normalized(model)`` of a run directory from ``config.json`` and ``checkpoint``.

    Unlike :class:`Run` it needs no training or validation split, so it serves any store,
    labelled or not (``train predict``, ``train embed``). The checkpoint is read with
    ``torch.load(weights_only=True)``.
    """
    out = Path(run_dir)
    try:
        saved = json.loads((out / "config.json").read_text())
        config = TrainConfig.from_dict(saved["train"])
        example_shape = tuple(int(n) for n in saved["input"]["example_shape"])
    except FileNotFoundError:
        # a --repeats or sweep folder holds runs one level down: name a few
        children = sorted(str(p.parent) for p in out.glob("*/config.json"))[:3]
        hint = f" such as {', '.join(children)}" if children else ""
        raise MuzarrError(f"{out}: no config.json; pass a run directory (one with config.json and best.pt){hint}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise MuzarrError(f"{out}/config.json is not a muzarr run configuration ({type(err).__name__}: {err})") from None
    weights = out / checkpoint
    if not weights.exists():
        raise MuzarrError(f"{out}: no {checkpoint} yet; train the run (or resume it with `train --resume {out}`) first")
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else None
    if metrics is not None:
        task, classes = metrics["task"], list(metrics["classes"])
    else:  # unfinished run: its training store knows the outputs
        store = open_store(config.store)
        task, classes = store.task, store.classes
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "mean" not in state or "std" not in state:
        raise MuzarrError(f"{weights} is not a muzarr model checkpoint (a state dict with 'mean', 'std', 'model.*')")
    model = build_model(config.model, n_classes=len(classes), input_shape=example_shape, **config.model_opts)
    wrapped = Normalized(model, torch.zeros_like(state["mean"]), torch.ones_like(state["std"]))
    try:
        wrapped.load_state_dict(state)
    except RuntimeError as err:
        raise MuzarrError(f"{weights} does not fit model {config.model!r} of {out}/config.json: {str(err).splitlines()[0]}") from None
    torch_device = pick_device(device)
    wrapped.to(torch_device).eval()
    return LoadedRun(out, config, task, classes, wrapped, torch_device, example_shape, metrics)
