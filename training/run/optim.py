"""The optimizers as a registry: :data:`OPTIMIZERS` maps a name to a factory ``(params, settings) -> torch optimizer``.

The command line's ``--optimizer`` choices are its keys. Learning-rate schedules are
:class:`training.run.protocol.Schedule` classes, each building and stepping its own torch
scheduler; the phases of a phased schedule are the protocol's (:meth:`Protocol.phase_settings`).
This module imports no other of the package: :mod:`training.run.protocol` checks a protocol's
optimizer names against :data:`OPTIMIZERS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["OPTIMIZERS", "OptimizerSettings", "make_optimizer"]


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """What an optimizer is built with: its registry ``name`` and settings."""

    name: str
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False


# The factories import torch when a run builds its optimizer: a protocol names one as data
# (`train models`, a paper file) and checks the name against this registry without torch.
def _adam(params: Iterable, s: OptimizerSettings) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


def _sgd(params: Iterable, s: OptimizerSettings) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(
        params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov and s.momentum > 0, weight_decay=s.weight_decay
    )


def _rmsprop(params: Iterable, s: OptimizerSettings) -> torch.optim.Optimizer:
    import torch

    return torch.optim.RMSprop(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


#: every optimizer by name
OPTIMIZERS: dict[str, Callable[[Iterable, OptimizerSettings], torch.optim.Optimizer]] = {
    "adam": _adam,
    "sgd": _sgd,
    "rmsprop": _rmsprop,
}


def make_optimizer(settings: OptimizerSettings, params: Iterable) -> torch.optim.Optimizer:
    return OPTIMIZERS[settings.name](params, settings)
