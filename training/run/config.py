"""What a user asks of a run (:class:`TrainConfig`) and how it resolves into a :class:`Protocol`.

``TrainConfig`` holds the command line: the store, the model, run-time choices (device,
cache, seed) and any protocol setting given explicitly (``None`` = not given). The protocol a
run trains with is the model's, then the catalog's ``train:`` settings for the store's
dataset, then these explicit settings (:meth:`TrainConfig.resolve`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.errors import MuzarrError
from training.data.augment import Augment
from training.models import get_model
from training.run.protocol import Protocol, protocol_overrides, schedule_from

__all__ = ["CACHES", "PROTOCOL_OVERRIDES", "TrainConfig", "dataset_train_defaults", "split_scheme_for"]

CACHES = ("auto", "ram", "gpu", "none")
#: TrainConfig fields that override the protocol field of the same name
PROTOCOL_OVERRIDES = (
    "epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay", "early_stopping",
    "eval_crops", "eval_placement", "sub_clips", "monitor", "split_scheme",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run is asked to do. ``None`` protocol fields take the model's protocol
    (its paper or seed report), as adjusted by the dataset's catalog entry.

    ``scheduler`` names a schedule of :data:`training.protocol.SCHEDULES` and
    ``scheduler_opts`` its settings (alone, they adjust the protocol's own schedule);
    ``augment`` holds :class:`~training.augment.Augment` fields; ``sub_clips=0`` trains on
    random crops of a split store's sub-clips instead of the whole sub-clips; ``max_clips``
    keeps the first N clips of each split (quick checks such as ``train reproduce --smoke``);
    ``tensorboard`` writes TensorBoard event files into the run directory (when the
    ``tensorboard`` extra is installed), with the training loss every ``tb_every`` optimizer
    steps (0: per epoch only).
    """

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
    sync_bn: bool = False
    verify_reads: bool = True
    eval_crops: int | None = None
    eval_placement: str | None = None
    sub_clips: int | None = None
    monitor: str | None = None
    augment: dict | None = None
    max_clips: int | None = None
    emissions: bool = True
    country: str = "ESP"
    tensorboard: bool = True
    tb_every: int = 50

    def __post_init__(self) -> None:
        if self.cache not in CACHES:
            raise MuzarrError(f"--cache {self.cache!r} must be one of {', '.join(CACHES)}")
        if self.max_clips is not None and self.max_clips < 2:
            raise MuzarrError(f"max_clips={self.max_clips!r} must be at least 2")
        if self.tb_every < 0:
            raise MuzarrError(f"tb_every={self.tb_every!r} must be 0 (no per-step loss) or a number of optimizer steps")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_absolute_store(self) -> TrainConfig:
        """A local store path made absolute (as a run records it), so ``--resume`` and
        ``predict`` work from any folder; URLs unchanged."""
        if "://" in self.store:
            return self
        return dataclasses.replace(self, store=str(Path(self.store).expanduser().resolve()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MuzarrError(f"run configuration has unknown field(s) {unknown}")
        return cls(**data)

    def resolve(self, dataset: str | None = None) -> Protocol:
        """The protocol this run trains with: the model's, then ``dataset``'s catalog settings,
        then the explicit fields of this config."""
        protocol = get_model(self.model).protocol
        explicit: dict[str, Any] = dataset_train_defaults(dataset) if dataset else {}
        for name in PROTOCOL_OVERRIDES:
            value = getattr(self, name)
            if value is not None:
                explicit[name] = value
        if explicit.get("sub_clips") == 0:
            explicit["sub_clips"] = None
            explicit["group_subclips"] = False
        if self.monitor is not None:
            explicit["monitor_mode"] = None  # the mode follows the metric given
        if self.scheduler is not None:
            explicit["schedule"] = schedule_from({"name": self.scheduler, **self.scheduler_opts}, where="--scheduler")
        elif self.scheduler_opts:
            current = protocol.schedule.to_dict()
            explicit["schedule"] = schedule_from({**current, **self.scheduler_opts}, where="--scheduler-opt")
        if self.augment is not None:
            explicit["augment"] = Augment.from_dict(self.augment, where="--augment")
        # one replace: the combination is validated, not each step on its way
        return protocol.with_overrides(protocol_overrides(explicit, where="train options"))


def split_scheme_for(schemes: list[str], protocol: Protocol, explicit: str | None = None) -> str:
    """The split scheme a run uses: ``explicit`` (``--split-scheme``), else the protocol's if
    the store has it (``schemes``), else the store's first."""
    if explicit is not None:
        return explicit
    return protocol.split_scheme if protocol.split_scheme in schemes else schemes[0]


def dataset_train_defaults(dataset: str) -> dict[str, Any]:
    """The catalog's ``train:`` settings for ``dataset``, typed (empty when the catalog has none)."""
    from pipeline.config import load_catalog

    try:
        entry = load_catalog().get(dataset, {})
    except MuzarrError:
        return {}
    return protocol_overrides(dict(entry.get("train") or {}), where=f"catalog dataset {dataset!r}: train")
