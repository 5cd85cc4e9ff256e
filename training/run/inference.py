"""A finished (or unfinished) run directory rebuilt for inference: ``train predict`` and ``embed``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from pipeline import MuzarrError, open_store
from training.data.normalization import Normalized
from training.models import build_model
from training.run.checkpoint import load_checkpoint
from training.run.config import TrainConfig
from training.run.device import pick_device
from training.run.protocol import Protocol
from training.run.rundir import RunDir, legacy_model_opts

__all__ = ["LoadedRun", "load_run"]


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run directory rebuilt by :func:`load_run`: its ``config`` and ``protocol``, the model's
    ``task`` and output ``classes``, ``model`` (``Normalized``, eval mode, on ``device``), the
    per-example shape it was trained on and ``metrics.json`` (``None`` while unfinished)."""

    out: Path
    config: TrainConfig
    protocol: Protocol
    task: str
    classes: list[str]
    model: Normalized
    device: torch.device
    example_shape: tuple[int, ...]
    metrics: dict[str, Any] | None


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu", checkpoint: str = RunDir.BEST) -> LoadedRun:
    """Rebuild ``Normalized(model)`` of a run directory from ``config.json`` and ``checkpoint``.

    Unlike :class:`training.loop.Run` it needs no training or validation split, so it serves
    any store, labelled or not. The checkpoint is read with ``torch.load(weights_only=True)``.
    """
    run = RunDir(run_dir)
    out = run.path
    saved, config = run.read_config()
    try:
        example_shape = tuple(int(n) for n in saved["input"]["example_shape"])
    except (KeyError, TypeError, ValueError) as err:
        raise run.not_a_run_config(err) from None
    protocol = run.protocol(saved, config)
    weights = run.file(checkpoint)
    if not weights.exists():
        raise MuzarrError(f"{out}: no {checkpoint} yet; train the run (or resume it with `train --resume {out}`) first")
    metrics = run.read_metrics()
    if metrics is not None:
        task, classes = metrics["task"], list(metrics["classes"])
    else:  # unfinished run: its training store knows the outputs
        store = open_store(config.store)
        task, classes = store.task, store.classes
    state = load_checkpoint(weights)
    if not isinstance(state, dict) or "mean" not in state or "std" not in state:
        raise MuzarrError(f"{weights} is not a muzarr model checkpoint (a state dict with 'mean', 'std', 'model.*')")
    opts = legacy_model_opts(config.model, config.model_opts, state)
    model = build_model(config.model, n_classes=len(classes), input_shape=example_shape, **opts)
    wrapped = Normalized(model, torch.zeros_like(state["mean"]), torch.ones_like(state["std"]))
    try:
        wrapped.load_state_dict(state)
    except RuntimeError as err:
        raise MuzarrError(f"{weights} does not fit model {config.model!r} of {run.config_file}: {str(err).splitlines()[0]}") from None
    torch_device = pick_device(device)
    wrapped.to(torch_device).eval()
    return LoadedRun(out, config, protocol, task, classes, wrapped, torch_device, example_shape, metrics)
