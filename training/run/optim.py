"""Optimizers and learning-rate schedules as registries, and the phases of a phased schedule.

:data:`OPTIMIZERS` maps a name to a factory ``(params, settings) -> torch.optim.Optimizer``
and :data:`SCHEDULERS` a schedule name (:data:`training.protocol.SCHEDULES`) to a factory
``(schedule, optimizer, epochs) -> scheduler or None``; the command line's choices are their
keys. A :class:`~training.protocol.Phases` schedule is not a torch scheduler: the run asks
:func:`phase_transition` after each epoch whether a phase starts, and applies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch

from training.run.protocol import Constant, Cosine, Phase, Phases, Plateau, Protocol, Schedule, Step

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "OptimizerSettings",
    "make_optimizer",
    "make_scheduler",
    "phase_settings",
    "phase_transition",
    "step_scheduler",
]


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """What an optimizer is built with: its registry ``name`` and settings."""

    name: str
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False

    @classmethod
    def of(cls, protocol: Protocol) -> OptimizerSettings:
        return cls(protocol.optimizer, protocol.lr, protocol.weight_decay, protocol.momentum, protocol.nesterov)


def _adam(params: Iterable, s: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


def _sgd(params: Iterable, s: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov and s.momentum > 0, weight_decay=s.weight_decay
    )


def _rmsprop(params: Iterable, s: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


#: every optimizer by name
OPTIMIZERS: dict[str, Callable[[Iterable, OptimizerSettings], torch.optim.Optimizer]] = {
    "adam": _adam,
    "sgd": _sgd,
    "rmsprop": _rmsprop,
}


def make_optimizer(settings: OptimizerSettings, params: Iterable) -> torch.optim.Optimizer:
    return OPTIMIZERS[settings.name](params, settings)


def _plateau(schedule: Plateau, optimizer, epochs: int):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=schedule.factor, patience=schedule.patience)


def _step(schedule: Step, optimizer, epochs: int):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma)


def _cosine(schedule: Cosine, optimizer, epochs: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule.t_max or epochs)


def _none(schedule: Schedule, optimizer, epochs: int):
    return None  # constant, or phases (applied by the run between epochs)


#: a torch scheduler for every schedule name (``None``: nothing steps per epoch)
SCHEDULERS: dict[str, Callable[[Any, torch.optim.Optimizer, int], Any]] = {
    Constant.name: _none,
    Plateau.name: _plateau,
    Step.name: _step,
    Cosine.name: _cosine,
    Phases.name: _none,
}


def make_scheduler(protocol: Protocol, optimizer: torch.optim.Optimizer):
    return SCHEDULERS[protocol.schedule.name](protocol.schedule, optimizer, protocol.epochs)


def step_scheduler(scheduler, valid_loss: float) -> None:
    """Advance a torch scheduler by one epoch (plateau ones on the validation loss)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(valid_loss)
    elif scheduler is not None:
        scheduler.step()


def phase_settings(protocol: Protocol, index: int) -> OptimizerSettings:
    """The optimizer settings phase ``index`` of ``protocol``'s schedule runs with."""
    settings = OptimizerSettings.of(protocol)
    for phase in getattr(protocol.schedule, "phases", ())[1 : index + 1]:
        settings = _apply_phase(settings, phase, protocol)
    return settings


def _apply_phase(settings: OptimizerSettings, phase: Phase, protocol: Protocol) -> OptimizerSettings:
    if phase.optimizer is None:
        return dataclasses.replace(settings, lr=phase.lr or settings.lr)
    return OptimizerSettings(
        phase.optimizer,
        phase.lr or settings.lr,
        protocol.weight_decay if phase.weight_decay is None else phase.weight_decay,
        protocol.momentum if phase.momentum is None else phase.momentum,
        protocol.nesterov if phase.nesterov is None else phase.nesterov,
    )


def phase_transition(protocol: Protocol, finished_epoch: int) -> tuple[int, Phase] | None:
    """``(index, phase)`` when a phase starts right after 0-based epoch ``finished_epoch``."""
    schedule = protocol.schedule
    if not isinstance(schedule, Phases):
        return None
    next_epoch = finished_epoch + 1
    for index, start in enumerate(schedule.starts()):
        if index and start == next_epoch:
            return index, schedule.phases[index]
    return None
