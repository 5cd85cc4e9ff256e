"""One training run: store + model + protocol → run directory with metrics, curves, emissions, checkpoints.

:class:`Run` ties the parts together, each in its own module: the protocol
(:mod:`training.run.config`, :mod:`training.run.protocol`), the examples (:mod:`training.data`), the
input normalisation (:mod:`training.data.normalization`), optimizers and schedules
(:mod:`training.run.optim`), augmentation (:mod:`training.data.augment`), evaluation
(:mod:`training.run.evaluate`), checkpoints (:mod:`training.run.checkpoint`) and emissions
(:mod:`training.run.emissions`).

The run directory (:class:`training.run.rundir.RunDir`: its files, their atomic writes and the
checks of a resume) holds ``config.json`` (the request and the resolved protocol),
``history.csv`` (one row per epoch: losses, validation metrics, the optimizer and learning
rate the epoch ran with, the best checkpoint reloaded after it), ``metrics.json`` (best
epoch, valid and test metrics, parameters, wall time, energy and CO2),
``normalization.json``, ``best.pt`` (plain state dict of the best epoch), ``last.pt``
(everything ``--resume`` needs) and PNG plots.

Each epoch: train, validate, keep the checkpoint if the monitored metric improved, step the
torch scheduler, then, if a phase of the schedule starts, reload the best checkpoint and
switch optimizer or learning rate (Won et al.'s ``solver.py`` order: validation, then the
schedule), then save ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline import MuzarrError, open_store
from pipeline.errors import write_failure
from training.data import SplitReader, TrainStream, plan_for, useful_workers
from training.data.augment import Augmenter
from training.data.normalization import Normalized, fit_normalization
from training.models import build_model, count_parameters
from training.run.config import TrainConfig, split_scheme_for
from training.run.device import autocast, pick_device
from training.run.distributed import LostRank, RankError, context, lost_rank_message
from training.run.emissions import start_tracker, stop_tracker, summed_emissions
from training.run.evaluate import checked_batch, evaluate
from training.run.metrics import PRIMARY, SCALARS
from training.run.optim import make_optimizer
from training.run.protocol import Protocol
from training.run.rundir import RunDir, architecture
from training.run.tensorboard import hparams_of, open_board

__all__ = ["CACHE_AUTO_BYTES", "Run", "train"]

CACHE_AUTO_BYTES = 4 << 30


class Run:
    """A training run in ``out``: set up from a config, or reopened with :meth:`resume`.

    ``protocol`` (default: ``config.resolve(dataset)``) is what the run trains with; a resumed
    run passes the one its ``config.json`` recorded.
    """

    def __init__(self, config: TrainConfig, out: Path, *, progress: bool = True, protocol: Protocol | None = None) -> None:
        config = config.with_absolute_store()
        self.config = config
        self.store = open_store(config.store)
        if not self.store.complete:
            raise MuzarrError(f"store {self.store.url} is not complete: finish it with `pipe build` first")
        protocol = protocol or config.resolve(self.store.dataset)
        self.out = Path(out)
        self.dir = RunDir(self.out)
        self.dist = context()
        self.progress = progress and self.dist.is_main  # one rank prints
        self.device = self.dist.device(pick_device(config.device))
        self.task = self.store.task
        self.classes = self.store.classes
        self.protocol = dataclasses.replace(protocol, split_scheme=self._split_scheme(protocol))
        self.rank_batch = self._rank_batch()
        self.input = config.input_spec()
        self.plan = plan_for(self.store, self.input, self.protocol)
        self.readers, self.cache = self._readers(self.protocol.split_scheme)
        self.workers = self._loader_workers()
        torch.manual_seed(config.seed)  # the initial weights are part of what --seed fixes
        model = build_model(config.model, n_classes=len(self.classes), input_shape=self.plan.example_shape, **config.model_opts)
        mean, std = self.dist.on_main(fit_normalization, self.readers["train"])
        self.model = Normalized(model, torch.from_numpy(mean), torch.from_numpy(std))
        if config.sync_bn and self.dist.active:
            if self.device.type != "cuda":
                raise MuzarrError("--sync-bn needs CUDA ranks (torch's SyncBatchNorm runs on GPUs): drop it on CPU")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model = self.model.to(self.device)
        self.trainer = self._data_parallel()
        self.loss_fn = nn.BCEWithLogitsLoss() if self.task == "multilabel" else nn.CrossEntropyLoss()
        self.phase = 0
        self.optimizer = make_optimizer(self.protocol.phase_settings(0), self.model.parameters())
        self.scheduler = self.protocol.schedule.scheduler(self.optimizer, self.protocol.epochs)
        self.monitor = self._monitor()
        self.mode = self.protocol.mode(self.monitor)
        augment = self.protocol.augment
        feature = self.store.arrays[self.plan.array].feature or {}
        if augment.gain_db and feature.get("kind") == "logmel" and feature.get("log", "db") != "db":
            raise MuzarrError(
                f"--augment gain_db needs a dB log-mel, but {self.plan.array} is log={feature.get('log')!r}: "
                "drop gain_db or train on a dB variant"
            )
        self.augmenter = (
            Augmenter(augment, input_kind="tabular" if self.input.is_vector else self.input.kind, task=self.task, n_classes=len(self.classes), seed=config.seed,
                      rank=self.dist.rank, world=self.dist.world)
            if augment.active else None
        )  # fmt: skip
        self.stream: TrainStream | None = None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": -1, "value": None}
        self.start_epoch = 0
        self.stale_epochs = 0
        self.train_seconds = 0.0
        self.steps = 0  # optimizer steps so far: the x axis of train/loss_step
        self.board = open_board(self.out, hparams_of(config, self.protocol), every=config.tb_every, note=self.progress,
                                enabled=config.tensorboard and self.dist.is_main)  # rank 0 alone writes

    # -- set-up -------------------------------------------------------------------------
    def _split_scheme(self, protocol: Protocol) -> str:
        # an explicit scheme the store lacks is refused by Store.split
        schemes = self.store.split_schemes
        scheme = split_scheme_for(schemes, protocol, self.config.split_scheme)
        # a store with one scheme leaves no choice: it is used silently, and the result line names it
        chosen = self.config.split_scheme is None and protocol.split_scheme not in (None, scheme) and len(schemes) > 1
        if chosen and self.progress:
            print(f"note: the protocol's split scheme {protocol.split_scheme!r} is not in {self.store.url}; "
                  f"using {scheme!r}", flush=True)  # fmt: skip
        return scheme

    def _rank_batch(self) -> int:
        """Examples per step on each rank: the global batch (what the user gave) split evenly."""
        batch, world = self.protocol.batch_size, self.dist.world
        if batch % world:
            raise MuzarrError(
                f"batch size {batch} does not split evenly over {world} ranks: give --batch-size a multiple of {world} "
                f"(it is the global batch; each rank takes batch/{world})"
            )
        return batch // world

    def _data_parallel(self) -> nn.Module:
        """The module the training steps run: DistributedDataParallel over the ranks, or the model."""
        if not self.dist.active:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _readers(self, scheme: str) -> tuple[dict[str, SplitReader], str]:
        targets = self.store.label_matrix
        parts = {part: self.store.split(scheme, part) for part in ("train", "valid", "test")}
        failed = self.store.array_failures(self.plan.array)
        if failed:  # stored clips that failed this array only: nothing to train or score on here
            lost = np.fromiter(failed, dtype=np.int64)
            counts = {part: int(np.isin(rows, lost).sum()) for part, rows in parts.items()}
            parts = {part: rows[~np.isin(rows, lost)] for part, rows in parts.items()}
            print(f"note: {sum(counts.values())} clip(s) failed {self.plan.array} when it was computed "
                  f"({', '.join(f'{n} {part}' for part, n in counts.items() if n)}): left out, see `pipe info {self.store.url}`",
                  flush=True)  # fmt: skip
        if self.task == "multiclass":
            parts = {part: rows[targets[rows] >= 0] for part, rows in parts.items()}  # unlabelled clips can't be scored
        if self.config.max_clips is not None:
            parts = {part: rows[: self.config.max_clips] for part, rows in parts.items()}
        for part in ("train", "valid"):
            if len(parts[part]) == 0:
                raise MuzarrError(f"split scheme {scheme!r} of {self.store.url} has no {part} clips")
        cache = self._cache_choice(sum(len(r) for r in parts.values()))
        readers = {
            part: SplitReader(self.store, self.plan, rows, targets[rows], cache=cache != "none", verify=self.config.verify_reads)
            for part, rows in parts.items()
        }
        short = {part: reader.shorter_than(self.plan.length) for part, reader in readers.items() if self.plan.tracks}
        if any(short.values()):
            counts = ", ".join(f"{n} of {part}" for part, n in short.items() if n)
            print(f"note: {counts} tracks are shorter than the model's {self.plan.length}-step input: their crops are zero-padded")
        return readers, cache

    def _loader_workers(self) -> int:
        """``--workers``, capped at what the streamed train split can use (said in one line when capped)."""
        if self.cache != "none":
            return 0  # a cached split is read from memory: no loader processes
        workers, capped = useful_workers(self.config.workers, self.readers["train"], world=self.dist.world)
        if capped and self.dist.is_main:
            print(f"note: {capped}", flush=True)
        return workers

    def _cache_choice(self, n_rows: int) -> str:
        choice = self.config.cache
        if choice == "gpu" and self.device.type == "cpu":
            choice = "ram"
        if self.plan.tracks and choice == "auto":
            return "none"  # whole tracks of any length are streamed
        if choice != "auto":
            return choice
        info = self.store.arrays[self.plan.array]
        nbytes = int(np.prod(info.shape[1:])) * np.dtype(info.dtype).itemsize * n_rows
        return "ram" if nbytes <= CACHE_AUTO_BYTES else "none"

    def _monitor(self) -> str:
        metric = self.protocol.monitor or PRIMARY[self.task]
        known = ("loss", *SCALARS[self.task])
        if metric not in known:
            raise MuzarrError(f"monitor {metric!r} is not a validation metric of a {self.task} run; choose from {', '.join(known)}")
        return metric

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
            "phase": self.phase,
            "steps": self.steps,
            "architecture": architecture(self.config),
        }

    def _save(self, epoch: int) -> None:
        if self.dist.is_main:
            self.dir.save_epoch(self._state(epoch), self.history)

    def _load_best(self) -> None:
        """``best.pt`` into the model on every rank (rank 0 reads it)."""
        self.model.load_state_dict(self.dist.on_main(self.dir.load_best))

    @classmethod
    def resume(cls, out: Path, *, progress: bool = True) -> Run:
        """Reopen the run in ``out`` after its last finished epoch, with the protocol it recorded."""
        run_dir = RunDir(out)
        resumed = context().on_main(run_dir.read_for_resume, note=True)  # rank 0 reads and checks, the others are told
        config, state = resumed.config, resumed.state
        run = cls(config, run_dir.path, progress=progress, protocol=resumed.protocol)
        if state is None:
            return run
        run.phase = int(state.get("phase", 0))
        settings = run.protocol.phase_settings(run.phase)
        if "optimizer_name" in state:  # written before phases were recorded
            settings = dataclasses.replace(settings, name=state["optimizer_name"])
        run.optimizer = make_optimizer(settings, run.model.parameters())
        run.scheduler = run.protocol.schedule.scheduler(run.optimizer, run.protocol.epochs)
        try:
            run.model.load_state_dict(state["model"])
        except RuntimeError:  # a run saved before last.pt recorded its architecture, config.json edited since
            raise run_dir.other_weights(config) from None
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scheduler and state["scheduler"]:
            run.scheduler.load_state_dict(state["scheduler"])
        best = state["best"]
        run.best = {"epoch": best["epoch"], "value": None if best["epoch"] < 0 else best["value"]}
        run.stale_epochs = state["stale_epochs"]
        run.train_seconds = state["train_seconds"]
        run.steps = int(state.get("steps", 0))
        run.start_epoch = state["epoch"] + 1
        run.history = resumed.history.to_dict("records")[: run.start_epoch]
        return run

    # -- training -----------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        dist = self.dist
        torch.manual_seed(self.config.seed * 100_003 + epoch + 7_919 * dist.rank)  # dropout etc.: reproducible per epoch
        if self.stream is None:  # one stream for the run: its loader workers live from epoch to epoch
            self.stream = TrainStream(
                self.readers["train"], batch_size=self.rank_batch, seed=self.config.seed, rank=dist.rank,
                world=dist.world, workers=self.workers,
            )  # fmt: skip
        stream = self.stream
        stream.set_epoch(epoch)
        if self.augmenter is not None:
            self.augmenter.set_epoch(epoch)
        self.model.train()
        total_loss, n_examples, waited = 0.0, 0, 0.0
        seen: list[np.ndarray] = []
        started = time.perf_counter()
        expected = len(self.readers["train"]) * self.plan.n_subclips
        bar = tqdm(total=expected, unit="ex", desc=f"epoch {epoch + 1}/{self.protocol.epochs}", disable=not self.progress, leave=False)
        with _joined(self.trainer):  # a rank whose shards ran out first shadows the others' last steps
            fetch = time.perf_counter()
            for x, y, positions in stream:
                waited += time.perf_counter() - fetch
                x = checked_batch(x, positions, self.readers["train"], self.device)
                y = y.to(self.device, non_blocking=True)
                if self.augmenter is not None:
                    x, y = self.augmenter(x, y)
                with autocast(self.device, amp=self.config.amp):
                    logits = self.trainer(x)
                loss = self.loss_fn(logits.float(), y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.board.step(self.steps, loss)
                self.steps += 1
                total_loss += loss.item() * len(x)
                n_examples += len(x)
                seen.append(positions.numpy())
                bar.update(len(x) * dist.world)
                bar.set_postfix(loss=f"{total_loss / n_examples:.4f}", refresh=False)
                fetch = time.perf_counter()
        bar.close()
        seconds = time.perf_counter() - started
        _log_examples(self.readers["train"], seen, epoch, dist.rank)
        total_loss, n_examples, waited, seconds = dist.sum(total_loss, n_examples, waited, seconds)
        seconds /= dist.world  # the ranks' mean: they run side by side
        waited /= dist.world
        return {
            "train_loss": total_loss / max(1, n_examples),
            "train_examples": int(n_examples),
            "train_seconds": seconds,
            "samples_per_s": n_examples / seconds if seconds else 0.0,
            "data_wait_fraction": waited / seconds if seconds else 0.0,
        }

    def evaluate(self, part: str) -> dict[str, Any]:
        self.dist.sync_buffers(self.model)  # rank 0's BatchNorm statistics: every rank scores the model rank 0 saves
        return evaluate(
            self.model, self.readers[part], task=self.task, classes=self.classes, loss_fn=self.loss_fn,
            device=self.device, batch_size=self.protocol.batch_size, amp=self.config.amp, dist=self.dist,
        )  # fmt: skip

    def _improved(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best["value"] is None:
            return True
        return value < self.best["value"] if self.mode == "min" else value > self.best["value"]

    def _next_phase(self, epoch: int) -> int | None:
        """Start the phase that begins after ``epoch``, if one does; returns the best epoch reloaded."""
        transition = self.protocol.phase_transition(epoch)
        if transition is None:
            return None
        index, phase = transition
        reloaded = None
        if phase.reload_best and self.best["epoch"] > 0:
            self._load_best()
            reloaded = self.best["epoch"]
        settings = self.protocol.phase_settings(index)
        if phase.optimizer is not None:
            self.optimizer = make_optimizer(settings, self.model.parameters())
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = settings.lr
        self.phase = index
        return reloaded

    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to the end (or early stop), then evaluate the best epoch."""
        try:
            try:
                return self._fit()
            except OSError as err:  # a plot or event file on a full or read-only disk (run files say so themselves)
                failure = write_failure(err, str(self.out))
                if failure is None:
                    raise
                raise failure from None
        except MuzarrError as err:
            if not self.dist.active:
                raise
            raise RankError(f"rank {self.dist.rank} of {self.dist.world}: {err}") from None
        except RuntimeError as err:  # torch.distributed's errors: a peer that died or hung
            if not self.dist.active:
                raise
            raise LostRank(lost_rank_message(self.dist, err, resume=str(self.out))) from None
        finally:
            self.board.close()  # a failed trial of a sweep must not leave its writer open

    def _fit(self) -> dict[str, Any]:
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config()
        # every rank measures its own process; the run reports their sum
        tracker = start_tracker(enabled=self.config.emissions, country=self.config.country,
                                out=self.out if main else Path(tempfile.gettempdir()), process=self.dist.active)  # fmt: skip
        started = time.perf_counter()
        try:
            for epoch in range(self.start_epoch, self.protocol.epochs):
                if self.protocol.early_stopping and self.stale_epochs >= self.protocol.early_stopping:
                    break
                ran_with = {"phase": self.phase, "optimizer": self.protocol.phase_settings(self.phase).name,
                            "lr": self.optimizer.param_groups[0]["lr"]}  # fmt: skip
                train = self.train_epoch(epoch)
                valid = self.evaluate("valid")
                self.train_seconds += train["train_seconds"]
                value = valid.get(self.monitor)
                if self._improved(value):
                    self.best = {"epoch": epoch + 1, "value": float(value)}
                    self.stale_epochs = 0
                    if main:
                        self.dir.save_best(self.model.state_dict())
                else:
                    self.stale_epochs += 1
                self.protocol.schedule.step(self.scheduler, valid["loss"])
                reloaded = self._next_phase(epoch)
                self.history.append({
                    "epoch": epoch + 1, **train, "valid_loss": valid["loss"],
                    **{f"valid_{k}": valid[k] for k in SCALARS[self.task]}, **ran_with,
                    "reloaded_best_epoch": "" if reloaded is None else reloaded,
                })  # fmt: skip
                self.board.epoch(self.history[-1])  # before the save: a kill between them re-logs, never skips
                self._save(epoch)
                if self.progress:
                    print(
                        f"epoch {epoch + 1}/{self.protocol.epochs}  train loss {train['train_loss']:.4f}  valid loss "
                        f"{valid['loss']:.4f}  valid {self.monitor} {value:.4f}  {train['samples_per_s']:.0f} ex/s"
                        + (f"  (phase {self.phase + 1} next: {self.protocol.phase_settings(self.phase).name} "
                           f"lr {self.optimizer.param_groups[0]['lr']:g}, reloaded epoch {reloaded})"
                           if reloaded is not None else ""),
                        flush=True,
                    )  # fmt: skip
        finally:
            emissions = stop_tracker(tracker)
            if self.stream is not None:
                self.stream.close()
        if self.best["epoch"] < 1:
            raise MuzarrError(f"no epoch of {self.out} had a finite validation {self.monitor}: nothing to evaluate")
        self._load_best()
        emissions = summed_emissions(self.dist.gather(emissions))
        results = {part: self.evaluate(part) for part in ("valid", "test")}
        metrics = {
            "model": self.config.model,
            "store": self.store.url,
            "dataset": self.store.dataset,
            "task": self.task,
            "split_scheme": self.protocol.split_scheme,
            "primary_metric": PRIMARY[self.task],
            "monitor": self.monitor,
            "best_epoch": self.best["epoch"],
            "epochs_run": len(self.history),
            "parameters": count_parameters(self.model.model),
            "train_seconds": self.train_seconds,
            "wall_seconds": time.perf_counter() - started,
            "device": str(self.device),
            "ranks": self.dist.world,
            "classes": self.classes,
            "valid": results["valid"],
            "test": results["test"],
            **emissions,
        }
        if main:
            self.board.finish(metrics)
            self._plots(metrics)
            self.dir.write_metrics(metrics)  # last: see RunDir.write_metrics
        return metrics

    def _write_config(self) -> None:
        data = {
            "train": self.config.to_dict(),
            "protocol": self.protocol.to_dict(),
            "input": {"array": self.plan.array, "example_shape": list(self.plan.example_shape),
                      "eval_crops": self.plan.eval_crops, "eval_placement": self.plan.placement,
                      "n_subclips": self.plan.n_subclips, "group_subclips": self.plan.group_subclips},
            "cache": self.cache,
            "ranks": {"world": self.dist.world, "batch_per_rank": self.rank_batch, "backend": self.dist.backend},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),  # CPU results differ in the last bits with it
        }  # fmt: skip
        self.dir.write_config(data)
        self.dir.write_normalization({"mean": self.model.mean.cpu().tolist(), "std": self.model.std.cpu().tolist(),
                                      "array": self.plan.array})  # fmt: skip

    def _plots(self, metrics: dict[str, Any]) -> None:
        from training.run.plots import plot_confusion, plot_curves, plot_per_tag

        title = f"{self.config.model} on {self.store.dataset}"
        plot_curves(pd.DataFrame(self.history), PRIMARY[self.task], self.dir.file(RunDir.CURVES), title=title,
                    best_epoch=metrics["best_epoch"])  # fmt: skip
        if self.task == "multilabel":
            frequency = dict(zip(self.classes, self.readers["train"].targets.sum(axis=0).astype(int).tolist()))
            plot_per_tag(metrics["test"].get("per_tag_roc_auc", {}), frequency, self.dir.file(RunDir.PER_TAG),
                         title=f"{title}: test ROC-AUC per tag")  # fmt: skip
        elif "confusion_matrix" in metrics["test"]:
            plot_confusion(metrics["test"]["confusion_matrix"], self.classes, self.dir.file(RunDir.CONFUSION),
                           title=f"{title}: test confusion matrix")  # fmt: skip


def train(config: TrainConfig, *, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run one training run into ``out`` and return its metrics."""
    return Run(config, out, progress=progress).fit()


def _joined(module: nn.Module):
    """``Join`` over a DistributedDataParallel module (ranks with uneven batch counts), else nothing."""
    from contextlib import nullcontext

    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(module, DistributedDataParallel):
        return nullcontext()
    from torch.distributed.algorithms.join import Join

    return Join([module])


def _log_examples(reader: SplitReader, seen: list[np.ndarray], epoch: int, rank: int) -> None:
    """With ``MUZARR_EXAMPLE_LOG=DIR``: the clip ids rank ``rank`` trained on in ``epoch``, one
    per line, in ``DIR/epoch-E-rank-R.txt`` (to check how examples are dealt out)."""
    folder = os.environ.get("MUZARR_EXAMPLE_LOG")
    if not folder:
        return
    ids = reader.clip_ids[np.concatenate(seen)] if seen else []
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"epoch-{epoch + 1}-rank-{rank}.txt").write_text("".join(f"{i}\n" for i in ids))
