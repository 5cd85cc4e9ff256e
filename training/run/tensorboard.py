"""TensorBoard event files of a run, written into the run directory itself.

Each run directory is one TensorBoard run, so ``tensorboard --logdir runs/`` shows runs, repeats
and sweep trials (``OUT/trial-000``...) side by side. Per epoch (step = the epoch, 1-based as in
``history.csv``): every numeric column of ``history.csv`` (``train/loss``, ``train/seconds``,
``train/samples_per_s``, ``train/data_wait_fraction``, ``valid/loss``, ``valid/roc_auc``...,
``lr``, ``phase``); every ``tb_every`` optimizer steps (step = optimizer steps so far, from 0):
``train/loss_step``, the loss of that batch; at the end: the run's settings as hparams (the
hparams plugin's session start and end) and the final metrics of ``metrics.json`` as
``final/valid_roc_auc``, ``final/test_loss``, ``final/best_epoch``...

A resumed run appends a new events file to the same directory, starting after its last finished
epoch; an epoch logged but not saved (killed between the two) is logged again at the same step,
and TensorBoard shows the newest value. Without the ``tensorboard`` package (the
``muzarr[tensorboard]`` extra), or with ``--no-tensorboard``, nothing is written.
"""

from __future__ import annotations

import contextlib
import functools
import json
import numbers
import threading
from pathlib import Path
from typing import Any

__all__ = ["NoBoard", "TensorBoard", "hparams_of", "open_board", "tag_for"]

#: history.csv columns that are not curves: the x axis, a name, and an event
NOT_CURVES = ("epoch", "optimizer", "reloaded_best_epoch")
#: throughput columns of history.csv that describe the training part of an epoch
TRAIN_COLUMNS = ("samples_per_s", "data_wait_fraction")


def tag_for(column: str) -> str:
    """The TensorBoard tag of a ``history.csv`` column: ``train_loss`` → ``train/loss``,
    ``valid_roc_auc`` → ``valid/roc_auc``, ``samples_per_s`` → ``train/samples_per_s``, ``lr`` → ``lr``."""
    part, _, name = column.partition("_")
    if part in ("train", "valid") and name:
        return f"{part}/{name}"
    return f"train/{column}" if column in TRAIN_COLUMNS else column


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def hparams_of(config, protocol) -> dict[str, Any]:
    """The settings a run trained with, flat (``schedule.name``, ``model_opts.dropout``...) and
    typed as the hparams plugin takes them: numbers, strings, booleans; lists as JSON; no ``None``."""
    settings = {"model": config.model, "input": config.input, "store": config.store, "seed": config.seed, "amp": config.amp,
                "max_clips": config.max_clips, **protocol.to_dict(), "model_opts": config.model_opts}  # fmt: skip
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            flat[prefix] = json.dumps(value, default=str)
        elif isinstance(value, (bool, str)) or _is_number(value):
            flat[prefix] = value
        elif value is not None:
            flat[prefix] = str(value)

    add("", settings)
    return flat


class TensorBoard:
    """A ``SummaryWriter`` on ``out``, opened at the first value written (so a run that fails
    before training leaves no events file, and the events file never precedes ``config.json``)."""

    def __init__(self, out: Path, hparams: dict[str, Any], *, every: int) -> None:
        self.out = Path(out)
        self.hparams = hparams
        self.every = every
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            _quiet_writer_thread()
            self._writer = SummaryWriter(log_dir=str(self.out))
            # The session start goes first: a running or killed run is listed with its settings.
            # No experiment summary: TensorBoard takes the first one it finds as every run's
            # columns, which would hide the settings of runs with other models or tasks.
            _, start, _ = hparams(self.hparams, {})
            self._writer.file_writer.add_summary(start)
        return self._writer

    def epoch(self, row: dict[str, Any]) -> None:
        """One ``history.csv`` row, at step ``row["epoch"]``; flushed, so that an epoch saved
        is an epoch TensorBoard has."""
        step = int(row["epoch"])
        for column, value in row.items():
            if column not in NOT_CURVES and _is_number(value):
                self.writer.add_scalar(tag_for(column), float(value), step)
        self.writer.flush()

    def step(self, step: int, loss) -> None:
        """The loss of optimizer step ``step`` (0-based), every ``every`` steps; ``loss`` may be a
        tensor: it is read (a device sync) only on the steps logged."""
        if self.every and step % self.every == 0:
            self.writer.add_scalar("train/loss_step", loss.item() if hasattr(loss, "item") else float(loss), step)

    def finish(self, metrics: dict[str, Any]) -> None:
        """The final metrics of ``metrics.json`` as ``final/...`` scalars at the last epoch, and
        the hparams session's end."""
        from torch.utils.tensorboard.summary import hparams

        final = {f"final/{k}": v for k, v in metrics.items() if _is_number(v)}
        for part in ("valid", "test"):
            final.update({f"final/{part}_{k}": v for k, v in metrics[part].items() if _is_number(v)})
        for tag, value in final.items():
            self.writer.add_scalar(tag, float(value), int(metrics["epochs_run"]))
        _, _, end = hparams(self.hparams, final)
        self.writer.file_writer.add_summary(end)
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            # a write error (a full disk) was raised to the run already, by the write or flush it failed
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None


def _quiet_writer_thread() -> None:
    """TensorBoard writes events on a thread of its own; a write error there (a full disk) is raised again
    to the run's next write or flush, which says it in one line, but the thread also prints its traceback:
    that copy is dropped (once per process; other threads' errors are printed as before)."""
    previous = threading.excepthook
    if getattr(previous, "muzarr_quiet_writer", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook.muzarr_quiet_writer = True
    threading.excepthook = hook


class NoBoard:
    """What a run logs to when TensorBoard is off or not installed: nothing."""

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def step(self, step: int, loss) -> None:
        pass

    def finish(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@functools.cache  # once per command: the runs of --repeats or a sweep all lack it alike
def _note_missing() -> None:
    print("note: tensorboard is not installed, so this run writes no TensorBoard events "
          "(pip install 'muzarr[tensorboard]'; --no-tensorboard skips this note)", flush=True)  # fmt: skip


def open_board(out: Path, hparams: dict[str, Any], *, enabled: bool, every: int, note: bool = False) -> TensorBoard | NoBoard:
    """A :class:`TensorBoard` on ``out``, or a :class:`NoBoard` when ``enabled`` is false or the
    ``tensorboard`` package is missing (said in one line when ``note``)."""
    if not enabled:
        return NoBoard()
    try:
        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        if note:
            _note_missing()
        return NoBoard()
    return TensorBoard(out, hparams, every=every)
