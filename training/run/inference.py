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
from training.run.checkpoint import load_checkpoint, read_json
from training.run.config import TrainConfig
from training.run.device import pick_device
from training.run.protocol import Protocol

__all__ = ["LoadedRun", "legacy_model_opts", "load_run", "read_run_config", "saved_protocol"]


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


def legacy_model_opts(model: str, opts: dict[str, Any], state_keys) -> dict[str, Any]:
    """Model options that rebuild a checkpoint written before an option existed: ``crnn`` runs
    saved before its Keras-1 GRU became the default hold PyTorch GRU weights (``gru="torch"``)."""
    if model == "crnn" and "gru" not in opts and any(k.endswith("rnn.weight_ih_l0") for k in state_keys):
        return {**opts, "gru": "torch"}
    return opts


def saved_protocol(saved: dict[str, Any], config: TrainConfig, where: Path) -> Protocol:
    """The protocol a run directory's ``config.json`` recorded (older runs: resolved again)."""
    if "protocol" in saved:
        return Protocol.from_dict(saved["protocol"], where=f"{where}/config.json: protocol")
    return config.resolve()


def read_run_config(out: Path) -> tuple[dict[str, Any], TrainConfig]:
    """A run directory's ``config.json`` and the request it records; missing or damaged: one line."""
    if not (out / "config.json").exists():
        # a --repeats or sweep folder holds runs one level down: name a few
        children = sorted(str(p.parent) for p in out.glob("*/config.json"))[:3]
        hint = f" such as {', '.join(children)}" if children else ""
        raise MuzarrError(f"{out}: no config.json; pass a run directory (one with config.json and best.pt){hint}")
    saved = read_json(out / "config.json")
    try:
        return saved, TrainConfig.from_dict(saved["train"])
    except (KeyError, TypeError, ValueError) as err:
        raise MuzarrError(f"{out}/config.json is not a muzarr run configuration ({type(err).__name__}: {err})") from None


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu", checkpoint: str = "best.pt") -> LoadedRun:
    """Rebuild ``Normalized(model)`` of a run directory from ``config.json`` and ``checkpoint``.

    Unlike :class:`training.loop.Run` it needs no training or validation split, so it serves
    any store, labelled or not. The checkpoint is read with ``torch.load(weights_only=True)``.
    """
    out = Path(run_dir)
    saved, config = read_run_config(out)
    try:
        example_shape = tuple(int(n) for n in saved["input"]["example_shape"])
    except (KeyError, TypeError, ValueError) as err:
        raise MuzarrError(f"{out}/config.json is not a muzarr run configuration ({type(err).__name__}: {err})") from None
    protocol = saved_protocol(saved, config, out)
    weights = out / checkpoint
    if not weights.exists():
        raise MuzarrError(f"{out}: no {checkpoint} yet; train the run (or resume it with `train --resume {out}`) first")
    metrics = read_json(out / "metrics.json") if (out / "metrics.json").exists() else None
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
        raise MuzarrError(f"{weights} does not fit model {config.model!r} of {out}/config.json: {str(err).splitlines()[0]}") from None
    torch_device = pick_device(device)
    wrapped.to(torch_device).eval()
    return LoadedRun(out, config, protocol, task, classes, wrapped, torch_device, example_shape, metrics)
