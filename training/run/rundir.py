"""A run directory: the one owner of its file names, its atomic writes and the checks of a resume.

A run directory holds ``config.json`` (the request and the resolved protocol), ``history.csv``
(one row per epoch), ``metrics.json`` (written last: a run with it is finished),
``normalization.json``, ``best.pt`` (plain state dict of the best epoch), ``last.pt``
(everything ``--resume`` needs), PNG plots and TensorBoard's event files. :class:`RunDir` names
them, writes them atomically (:func:`~training.run.checkpoint.write_atomic`) and reads them back
with damage, another run or an edited request refused in one line naming the file and what to do;
:class:`training.run.loop.Run` keeps only the training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import MuzarrError
from training.run.checkpoint import load_checkpoint, read_json, save_checkpoint, write_atomic, write_text_atomic
from training.run.config import TrainConfig
from training.run.protocol import Protocol

__all__ = ["EVENT_FILES", "RUNTIME_FIELDS", "Resumed", "RunDir", "differing_settings", "legacy_model_opts"]

#: TensorBoard's event files in a run directory: one per process that trained it (``--overwrite`` removes them too)
EVENT_FILES = "events.out.tfevents.*"
#: request fields that do not change what a run learns: a rerun may differ in these
RUNTIME_FIELDS = ("device", "cache", "workers", "verify_reads", "emissions", "country", "tensorboard", "tb_every")


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What a resume continues from: the request, the protocol it trains to, ``last.pt``'s state
    (``None``: no epoch finished yet) and the history of the epochs that did."""

    config: TrainConfig
    protocol: Protocol
    state: dict[str, Any] | None
    history: pd.DataFrame | None


class RunDir:
    """The run directory at ``path`` (it need not exist yet)."""

    CONFIG = "config.json"
    HISTORY = "history.csv"
    METRICS = "metrics.json"
    NORMALIZATION = "normalization.json"
    BEST = "best.pt"
    LAST = "last.pt"
    CURVES = "curves.png"
    PER_TAG = "per_tag_auc.png"
    CONFUSION = "confusion.png"
    #: what a run writes into its directory (``--overwrite`` removes these, and nothing else)
    FILES = (CONFIG, HISTORY, METRICS, NORMALIZATION, BEST, LAST, CURVES, PER_TAG, CONFUSION)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def started(self) -> bool:
        """``config.json`` is a run's first file."""
        return self.config_file.exists()

    @property
    def finished(self) -> bool:
        """``metrics.json`` is a run's last file."""
        return self.metrics_file.exists()

    def has_events(self) -> bool:
        return any(self.path.glob(EVENT_FILES))

    # -- what the folder holds --------------------------------------------------------------
    def status(self, request: dict[str, Any], *, overwrite: bool) -> str:
        """What the folder holds for a run asked with ``request`` (a ``TrainConfig.to_dict()``):
        ``"new"`` (nothing: train), ``"resume"`` (this run, unfinished) or ``"finished"`` (this run,
        done). Another run there, or a folder of other files, is refused with what to do; with
        ``overwrite`` the run files of another run are removed (and only those) and it is ``"new"``.
        """
        out = self.path
        if not out.exists() or not any(out.iterdir()):
            return "new"
        if not self.started:
            leftovers = [p for p in out.iterdir() if p.name in {f"{name}.tmp" for name in self.FILES}]
            if len(leftovers) == len(list(out.iterdir())):
                # config.json is a run's first file: temporary files alone are a start cut short (a kill, a full disk)
                for path in leftovers:
                    path.unlink()
                return "new"
            names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
            raise MuzarrError(f"--out {out} is not a run directory (it holds {names}): pick a new or empty folder")
        saved = read_json(self.config_file).get("train")
        if not isinstance(saved, dict):
            raise MuzarrError(f"{self.config_file} is damaged (no 'train' settings): pick another --out, or --overwrite")
        if overwrite:
            for name in self.FILES:
                for path in (out / name, out / f"{name}.tmp"):
                    path.unlink(missing_ok=True)
            for path in out.glob(EVENT_FILES):  # else TensorBoard would show the old run's curves under the new one's
                path.unlink()
            return "new"
        differing = differing_settings(saved, request)
        if differing:
            raise MuzarrError(
                f"{out} holds another run (its {', '.join(differing)} differ): continue it with `train --resume {out}`, "
                "pick another --out, or add --overwrite to replace it"
            )
        return "finished" if self.finished else "resume"

    # -- reading ----------------------------------------------------------------------------
    def read_config(self) -> tuple[dict[str, Any], TrainConfig]:
        """``config.json`` and the request it records; missing or damaged: one line."""
        out = self.path
        if not self.started:
            # a --repeats or sweep folder holds runs one level down: name a few
            children = sorted(str(p.parent) for p in out.glob(f"*/{self.CONFIG}"))[:3]
            hint = f" such as {', '.join(children)}" if children else ""
            raise MuzarrError(f"{out}: no {self.CONFIG}; pass a run directory (one with {self.CONFIG} and {self.BEST}){hint}")
        saved = read_json(self.config_file)
        try:
            return saved, TrainConfig.from_dict(saved["train"])
        except (KeyError, TypeError, ValueError) as err:
            raise self.not_a_run_config(err) from None

    def not_a_run_config(self, err: Exception) -> MuzarrError:
        return MuzarrError(f"{self.config_file} is not a muzarr run configuration ({type(err).__name__}: {err})")

    def protocol(self, saved: dict[str, Any], config: TrainConfig) -> Protocol:
        """The protocol ``config.json`` recorded (older runs: resolved again)."""
        if "protocol" in saved:
            return Protocol.from_dict(saved["protocol"], where=f"{self.config_file}: protocol")
        return config.resolve()

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` (``None`` while the run is unfinished)."""
        return read_json(self.metrics_file) if self.finished else None

    def read_for_resume(self, *, note: bool) -> Resumed:
        """What ``Run.resume`` continues from, checked: ``last.pt`` must hold weights of the model
        ``config.json`` asks for, and the epochs asked must not be fewer than have run (more: the
        record says so, and ``note`` prints one line)."""
        saved, config = self.read_config()
        last = self.file(self.LAST)
        state = load_checkpoint(last) if last.exists() else None
        # blank, or an epoch
        history = pd.read_csv(self.file(self.HISTORY), dtype={"reloaded_best_epoch": "Int64"}) if state else None
        protocol = self.protocol(saved, config)
        if state is not None:
            config = dataclasses.replace(config, model_opts=legacy_model_opts(config.model, config.model_opts, state["model"]))
            self._check_architecture(config, state)  # as the run itself saved it: legacy options included
        protocol = self._requested_epochs(config, protocol, state, note=note)
        return Resumed(config, protocol, state, history)

    def _check_architecture(self, config: TrainConfig, state: dict) -> None:
        """``last.pt`` holds weights of the model and options ``config.json`` asks for (one line naming both if not)."""
        saved = state.get("architecture")
        if not isinstance(saved, dict):
            return  # written before last.pt recorded it: loading the weights says whether they fit
        asked = architecture(config)
        if saved != asked:

            def shown(arch: dict) -> str:
                opts = ", ".join(f"{k}={v!r}" for k, v in (arch.get("model_opts") or {}).items())
                return f"model {arch.get('model')!r}" + (f" ({opts})" if opts else "")

            raise MuzarrError(
                f"{self.config_file} asks for {shown(asked)}, but the run's checkpoint {self.file(self.LAST)} holds "
                f"{shown(saved)}: a run cannot change its model; restore {self.CONFIG}, or train the new model with "
                "another --out"
            )

    def other_weights(self, config: TrainConfig) -> MuzarrError:
        """``last.pt`` does not load into the model ``config.json`` asks for (a run saved before
        ``last.pt`` recorded its architecture, ``config.json`` edited since)."""
        opts = ", ".join(f"{k}={v!r}" for k, v in config.model_opts.items())
        return MuzarrError(
            f"{self.config_file} asks for model {config.model!r}" + (f" ({opts})" if opts else "") + f", but "
            f"{self.file(self.LAST)} holds weights of another model or options: a run cannot change its model; restore "
            f"{self.CONFIG}, or train the new model with another --out"
        )

    def _requested_epochs(self, config: TrainConfig, protocol: Protocol, state: dict | None, *, note: bool) -> Protocol:
        """The protocol a resumed run trains to: ``config.json``'s ``train.epochs`` (the request) wins over the
        protocol it recorded, so editing it trains a finished run longer; fewer epochs than have run is refused."""
        done = int(state["epoch"]) + 1 if state is not None else 0
        epochs = protocol.epochs if config.epochs is None else config.epochs
        if epochs < done:
            raise MuzarrError(
                f"{self.config_file} asks for {epochs} epochs, but {done} have run already: ask for {done} or more, "
                "or train a new run with another --out"
            )
        if epochs == protocol.epochs:
            return protocol
        if note:
            stopped = protocol.early_stopping and state is not None and state["stale_epochs"] >= protocol.early_stopping
            then = (f"but early stopping ended it after epoch {done}: it trains no further" if stopped
                    else f"training on to epoch {epochs}")  # fmt: skip
            print(f"note: {self.config_file} asks for {epochs} epochs (train.epochs), the run was set up for "
                  f"{protocol.epochs}: {then}", flush=True)  # fmt: skip
        protocol = dataclasses.replace(protocol, epochs=epochs)
        # the record says what the run now trains with
        saved = read_json(self.config_file)
        write_text_atomic(self.config_file, json.dumps({**saved, "protocol": protocol.to_dict()}, indent=2))
        return protocol

    def load_best(self) -> Any:
        return load_checkpoint(self.file(self.BEST))

    # -- writing (rank 0 alone) ---------------------------------------------------------------
    def write_config(self, data: dict[str, Any]) -> None:
        """``config.json``, once: a resumed run keeps the record it started with."""
        if not self.started:
            write_text_atomic(self.config_file, json.dumps(data, indent=2))

    def write_normalization(self, data: dict[str, Any]) -> None:
        write_text_atomic(self.file(self.NORMALIZATION), json.dumps(data))

    def save_best(self, weights: dict[str, Any]) -> None:
        save_checkpoint(weights, self.file(self.BEST))

    def save_epoch(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """``last.pt`` (what a resume needs), then ``history.csv`` up to its epoch."""
        save_checkpoint(state, self.file(self.LAST))
        table = pd.DataFrame(history)
        write_atomic(self.file(self.HISTORY), lambda tmp: table.to_csv(tmp, index=False))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Last: a run with ``metrics.json`` is finished, so whatever fails before it is done again by the same command."""
        write_text_atomic(self.metrics_file, json.dumps(metrics, indent=2, default=_json_default))


def architecture(config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint's weights are of: a resume checks ``config.json`` still asks for it."""
    return {"model": config.model, "model_opts": _as_json(config.model_opts)}


def differing_settings(saved: dict[str, Any], request: dict[str, Any]) -> list[str]:
    """The request fields (``TrainConfig.to_dict()``) in which a recorded run differs from
    ``request``, as JSON holds them (tuples are lists there); runtime fields do not count."""
    request = _as_json(request)
    return sorted(k for k in set(saved) | set(request) if k not in RUNTIME_FIELDS and saved.get(k) != request.get(k))


def legacy_model_opts(model: str, opts: dict[str, Any], state_keys) -> dict[str, Any]:
    """Model options that rebuild a checkpoint written before an option existed: ``crnn`` runs
    saved before its Keras-1 GRU became the default hold PyTorch GRU weights (``gru="torch"``)."""
    if model == "crnn" and "gru" not in opts and any(k.endswith("rnn.weight_ih_l0") for k in state_keys):
        return {**opts, "gru": "torch"}
    return opts


def _as_json(value: Any) -> Any:
    """``value`` as JSON holds it (tuples are lists there): settings compare alike however they were read."""
    return json.loads(json.dumps(value))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
