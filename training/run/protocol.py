"""Training protocols as typed data: what a paper or seed report trains a model with.

A :class:`Protocol` is frozen and fully typed: the optimizer and its settings, epochs and
batch size, a :class:`Schedule` (one of :data:`SCHEDULES`, e.g. Won et al.'s phases; each
schedule builds and steps its own torch scheduler), the
monitored metric and its mode, evaluation crops and where they start, sub-clips, and the
:class:`~training.augment.Augment` of training batches. Every registry entry is one, so a
misspelt key fails where it is written (at import), naming the entry and the key; settings
that come from a file or the command line are validated into these types once, by
:func:`protocol_overrides`.

Resolution: the model's protocol, then the catalog's ``train:`` settings for the dataset,
then the command line (:meth:`training.config.TrainConfig.resolve`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.errors import MuzarrError
from pipeline.typed import typed_fields
from training.data.augment import Augment
from training.run.optim import OPTIMIZERS, OptimizerSettings

if TYPE_CHECKING:
    import torch

__all__ = [
    "EVAL_PLACEMENTS",
    "MONITOR_MODES",
    "SCHEDULES",
    "Constant",
    "Cosine",
    "Phase",
    "Phases",
    "Plateau",
    "Protocol",
    "Schedule",
    "Step",
    "protocol_overrides",
    "schedule_from",
]

#: where evaluation crops start: ``spread`` = evenly from 0 to ``len - crop`` (the clip's end);
#: ``won`` = ``i * ((len - crop) // n)`` as in Won et al.'s ``eval.py`` (the tail is left out)
EVAL_PLACEMENTS = ("spread", "won")
MONITOR_MODES = ("max", "min")


#: the most evaluation crops per clip: a 10-minute track in 1024 crops of 3 s overlaps each crop five times
MAX_EVAL_CROPS = 1024


def _check_positive(where: str, **values: Any) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise MuzarrError(f"{where}: {name}={value!r} must be positive")


# -- schedules ----------------------------------------------------------------------------
# A schedule's torch scheduler is built when a run starts: torch is imported there, not by a
# protocol, which is data (`train models`, paper files, the catalog).
@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base of the learning-rate schedules; ``name`` is its key in :data:`SCHEDULES`.

    :meth:`scheduler` builds the torch scheduler a run steps once per epoch with :meth:`step`
    (``None``: nothing steps per epoch).
    """

    name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
        """The torch scheduler of this schedule over a run of ``epochs`` epochs, or ``None``."""
        return None

    def step(self, scheduler: Any, valid_loss: float) -> None:
        """Advance ``scheduler`` (what :meth:`scheduler` built) by one finished epoch."""
        if scheduler is not None:
            scheduler.step()


@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    """The protocol's learning rate throughout."""

    name: ClassVar[str] = "none"


@dataclasses.dataclass(frozen=True)
class Plateau(Schedule):
    """``ReduceLROnPlateau`` on the validation loss (seed 002)."""

    name: ClassVar[str] = "plateau"
    factor: float = 0.5
    patience: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise MuzarrError(f"plateau schedule: factor={self.factor!r} must be between 0 and 1")
        if self.patience < 0:
            raise MuzarrError(f"plateau schedule: patience={self.patience!r} must be >= 0")

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
        import torch

        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=self.factor, patience=self.patience)

    def step(self, scheduler: Any, valid_loss: float) -> None:
        scheduler.step(valid_loss)


@dataclasses.dataclass(frozen=True)
class Step(Schedule):
    """``StepLR``: multiply the learning rate by ``gamma`` every ``step_size`` epochs (seed 002)."""

    name: ClassVar[str] = "step"
    step_size: int = 10
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _check_positive("step schedule", step_size=self.step_size, gamma=self.gamma)

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
        import torch

        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
    """``CosineAnnealingLR`` over ``t_max`` epochs (``None``: the run's epochs)."""

    name: ClassVar[str] = "cosine"
    t_max: int | None = None

    def __post_init__(self) -> None:
        _check_positive("cosine schedule", t_max=self.t_max)

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
        import torch

        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.t_max or epochs)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a :class:`Phases` schedule.

    At the start of every phase but the first, the best checkpoint so far is reloaded when
    ``reload_best``; then a new ``optimizer`` is built with this phase's settings, or, when
    ``optimizer`` is ``None``, the current optimizer keeps its state and only its learning
    rate becomes ``lr``. The first phase runs with the protocol's own optimizer settings.

    Parameters
    ----------
    epochs : int or None
        Length of the phase; ``None`` = until the run ends (last phase only).
    lr : float or None
        Learning rate of the phase (``None``: unchanged).
    optimizer : str or None
        A key of :data:`training.run.optim.OPTIMIZERS` to switch to, or ``None`` to keep the current one.
    momentum, nesterov, weight_decay
        Settings of a new optimizer (``None``: the protocol's).
    reload_best : bool
        Reload the best checkpoint before the phase starts.
    """

    epochs: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    reload_best: bool = False

    def __post_init__(self) -> None:
        _check_positive("schedule phase", epochs=self.epochs, lr=self.lr)


@dataclasses.dataclass(frozen=True)
class Phases(Schedule):
    """Consecutive phases (Won et al.'s Adam → SGD with two drops); see :class:`Phase`.

    Not a torch scheduler: after each epoch the run asks :meth:`Protocol.phase_transition`
    whether a phase starts, and applies it.
    """

    name: ClassVar[str] = "phases"
    phases: tuple[Phase, ...] = ()

    def __post_init__(self) -> None:
        if not self.phases:
            raise MuzarrError("phases schedule: give at least one phase")
        for phase in self.phases[:-1]:
            if phase.epochs is None:
                raise MuzarrError("phases schedule: only the last phase may run to the end (epochs=None)")
        if self.phases[0].reload_best or self.phases[0].optimizer is not None:
            raise MuzarrError("phases schedule: the first phase runs with the protocol's optimizer (no reload, no switch)")

    def phase_of(self, epoch: int) -> int:
        """Index of the phase that epoch ``epoch`` (0-based) runs in."""
        end = 0
        for index, phase in enumerate(self.phases):
            if phase.epochs is None:
                return index
            end += phase.epochs
            if epoch < end:
                return index
        return len(self.phases) - 1

    def starts(self) -> list[int]:
        """0-based epoch at which each phase starts."""
        starts, end = [], 0
        for phase in self.phases:
            starts.append(end)
            end += phase.epochs or 0
        return starts

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "phases": [dataclasses.asdict(p) for p in self.phases]}


#: every schedule by name: the CLI's ``--scheduler`` choices, and what builds each torch scheduler
SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (Constant, Plateau, Step, Cosine, Phases)}


def schedule_from(data: dict[str, Any] | str, *, where: str) -> Schedule:
    """A :class:`Schedule` from ``{"name": ..., **settings}`` (a file, the CLI) or a bare name."""
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise MuzarrError(f"{where}: schedule must be a name or a mapping with 'name', not {data!r}")
    data = dict(data)
    name = data.pop("name", "none")
    if name not in SCHEDULES:
        raise MuzarrError(f"{where}: unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    cls = SCHEDULES[name]
    if cls is Phases:
        phases = data.pop("phases", None)
        if data:
            raise MuzarrError(f"{where}: unknown key(s) {sorted(data)} for the phases schedule; valid keys: phases")
        if not isinstance(phases, (list, tuple)):
            raise MuzarrError(f"{where}: phases must be a list of phases")
        return Phases(tuple(
            p if isinstance(p, Phase) else Phase(**typed_fields(Phase, dict(p), where=f"{where}: phase {i + 1}"))
            for i, p in enumerate(phases)
        ))  # fmt: skip
    return cls(**typed_fields(cls, data, where=f"{where} ({name} schedule)"))


# -- the protocol -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a model is trained and evaluated, as its paper or seed report did.

    Parameters
    ----------
    optimizer : str
        Key of :data:`training.run.optim.OPTIMIZERS`.
    lr, weight_decay, momentum, nesterov
        Its settings (``momentum``/``nesterov`` apply to SGD and RMSprop).
    epochs, batch_size : int
        Epochs; examples (crops or sub-clips) per step.
    schedule : Schedule
        Learning-rate schedule (:data:`SCHEDULES`).
    monitor : str or None
        Validation metric that picks the best epoch (``loss``, ``roc_auc``, ``accuracy``...);
        ``None`` = the task's primary metric (``roc_auc`` or ``accuracy``).
    monitor_mode : {"max", "min"} or None
        Whether higher or lower is better; ``None`` = ``min`` for ``loss``, else ``max``.
    early_stopping : int or None
        Stop after this many epochs without a better monitored value.
    eval_crops : int or None
        Crops per clip at evaluation, predictions averaged after the sigmoid/softmax;
        ``None`` = enough to cover the clip (``ceil(len / crop)``).
    eval_placement : {"spread", "won"}
        Where evaluation crops start (:data:`EVAL_PLACEMENTS`).
    sub_clips : int or None
        The protocol trains on this many stored sub-clips per clip (a store built with
        ``clip.mode=split``) and scores a clip by their mean; ``None`` = whatever the store holds.
    group_subclips : bool
        Batches hold whole clips (all their sub-clips), as seed 001's 10 clips × 10 sub-clips:
        ``batch_size // sub_clips`` clips per step (at least one).
    split_scheme : str or None
        The split scheme the paper used (``None``: the store's first).
    train_crop_seconds : float or None
        Random training crops end within the first this many seconds of a clip (Won et al.'s
        loader draws them in the first 29 s of MTAT's 29.1 s clips); ``None`` = anywhere.
    augment : Augment
        Augmentation of training batches.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    epochs: int = 10
    batch_size: int = 32
    schedule: Schedule = Constant()
    monitor: str | None = None
    monitor_mode: str | None = None
    early_stopping: int | None = None
    eval_crops: int | None = None
    eval_placement: str = "spread"
    sub_clips: int | None = None
    group_subclips: bool = False
    split_scheme: str | None = None
    train_crop_seconds: float | None = None
    augment: Augment = dataclasses.field(default_factory=Augment)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise MuzarrError(f"optimizer {self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        for phase in getattr(self.schedule, "phases", ()):
            if phase.optimizer is not None and phase.optimizer not in OPTIMIZERS:
                raise MuzarrError(f"schedule phase optimizer {phase.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MuzarrError(f"--{name.replace('_', '-')} {value!r} must be a positive integer")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise MuzarrError(f"--lr {self.lr!r} must be a positive number")
        if self.weight_decay < 0 or not 0 <= self.momentum <= 1:
            raise MuzarrError(f"weight_decay={self.weight_decay!r} must be >= 0 and momentum={self.momentum!r} in [0, 1]")
        if not isinstance(self.schedule, Schedule):
            raise MuzarrError(f"schedule={self.schedule!r} must be one of the schedules {', '.join(SCHEDULES)}")
        if not isinstance(self.augment, Augment):
            raise MuzarrError(f"augment={self.augment!r} must be an Augment")
        if self.monitor_mode not in (None, *MONITOR_MODES):
            raise MuzarrError(f"monitor_mode={self.monitor_mode!r} must be max or min")
        if self.eval_placement not in EVAL_PLACEMENTS:
            raise MuzarrError(f"eval_placement={self.eval_placement!r} must be one of {', '.join(EVAL_PLACEMENTS)}")
        _check_positive("protocol", early_stopping=self.early_stopping, eval_crops=self.eval_crops, sub_clips=self.sub_clips,
                        train_crop_seconds=self.train_crop_seconds)  # fmt: skip
        if self.eval_crops is not None and self.eval_crops > MAX_EVAL_CROPS:
            raise MuzarrError(
                f"eval_crops={self.eval_crops} is more than {MAX_EVAL_CROPS} crops per clip (an evaluation batch holds "
                f"every crop of its clips at once; Won et al. score 16): use --eval-crops {MAX_EVAL_CROPS} or fewer"
            )

    @classmethod
    def make(cls, where: str, **fields: Any) -> Protocol:
        """``Protocol(**fields)`` with an unknown key reported as ``where``'s (registry entries)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise MuzarrError(f"{where}: unknown protocol key(s) {unknown}; valid keys: {', '.join(names)}")
        return cls(**fields)

    def mode(self, metric: str) -> str:
        """``max`` or ``min`` for the monitored ``metric``."""
        return self.monitor_mode or ("min" if metric == "loss" else "max")

    def phase_settings(self, index: int) -> OptimizerSettings:
        """The optimizer settings phase ``index`` of the schedule runs with (0: the protocol's own)."""
        settings = OptimizerSettings(self.optimizer, self.lr, self.weight_decay, self.momentum, self.nesterov)
        for phase in getattr(self.schedule, "phases", ())[1 : index + 1]:
            if phase.optimizer is None:
                settings = dataclasses.replace(settings, lr=phase.lr or settings.lr)
            else:
                settings = OptimizerSettings(
                    phase.optimizer,
                    phase.lr or settings.lr,
                    self.weight_decay if phase.weight_decay is None else phase.weight_decay,
                    self.momentum if phase.momentum is None else phase.momentum,
                    self.nesterov if phase.nesterov is None else phase.nesterov,
                )
        return settings

    def phase_transition(self, finished_epoch: int) -> tuple[int, Phase] | None:
        """``(index, phase)`` when a phase starts right after 0-based epoch ``finished_epoch``."""
        if not isinstance(self.schedule, Phases):
            return None
        for index, start in enumerate(self.schedule.starts()):
            if index and start == finished_epoch + 1:
                return index, self.schedule.phases[index]
        return None

    def with_overrides(self, overrides: dict[str, Any]) -> Protocol:
        """A copy with ``overrides`` (validated by :func:`protocol_overrides`) applied."""
        return dataclasses.replace(self, **overrides) if overrides else self

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["schedule"] = self.schedule.to_dict()
        data["augment"] = self.augment.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str) -> Protocol:
        return cls().with_overrides(protocol_overrides(data, where=where))


def protocol_overrides(data: dict[str, Any], *, where: str) -> dict[str, Any]:
    """Protocol settings from a file or the command line, typed: nested ``schedule`` and
    ``augment`` become their dataclasses; an unknown key is one error naming ``where``."""
    if not isinstance(data, dict):
        raise MuzarrError(f"{where}: training settings must be a mapping, not {data!r}")
    data = dict(data)
    nested = {}
    if "schedule" in data:
        value = data.pop("schedule")
        nested["schedule"] = value if isinstance(value, Schedule) else schedule_from(value, where=f"{where}: schedule")
    if "augment" in data:
        value = data.pop("augment")
        nested["augment"] = value if isinstance(value, Augment) else Augment.from_dict(value or {}, where=f"{where}: augment")
    return {**typed_fields(Protocol, data, where=where), **nested}
