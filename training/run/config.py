"""What a user asks of a run (:class:`TrainConfig`) and how it resolves into a :class:`Protocol`.

``TrainConfig`` holds the command line: the store, the model, run-time choices (device,
cache, seed) and any protocol setting given explicitly (``None`` = not given). The protocol a
run trains with is the model's, then the catalog's ``train:`` settings for the store's
dataset, then these explicit settings (:meth:`TrainConfig.resolve`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import MuzarrError
from training.data.augment import Augment, parse_augment
from training.data.spec import INPUT_SPELLING, InputSpec, parse_input
from training.models import get_model
from training.run.device import DEVICES
from training.run.optim import OPTIMIZERS
from training.run.protocol import EVAL_PLACEMENTS, SCHEDULES, Protocol, protocol_overrides, schedule_from

__all__ = ["CACHES", "PROTOCOL_OVERRIDES", "CliOption", "TrainConfig", "dataset_train_defaults", "split_scheme_for"]

CACHES = ("auto", "ram", "gpu", "none")
#: TrainConfig fields that override the protocol field of the same name
PROTOCOL_OVERRIDES = (
    "epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay", "early_stopping",
    "eval_crops", "eval_placement", "sub_clips", "monitor", "split_scheme",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CliOption:
    """How a :class:`TrainConfig` field reads on the command line (``training/options.py`` makes
    the click option from it, the field's type and default, and its help text).

    ``flag``: the option when it is not ``--field-name`` (``--no-emissions`` turns a true default
    off); ``choices``: the valid values (a registry's keys); ``min``/``max``/``min_open``: bounds of
    a number; ``pairs``: ``K=V`` given once per key, into a dict; ``parse``: the text to the field's
    value (``--augment``); ``shown=False``: set by code, not on the command line.
    """

    flag: str | None = None
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    metavar: str | None = None
    pairs: bool = False
    parse: Callable[[str], Any] | None = None
    shown: bool = True


def _setting(help: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **cli: Any) -> Any:
    """A field that carries its help text and its :class:`CliOption`: one declaration per setting."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help, "cli": CliOption(**cli)})


def _augment_fields(text: str) -> dict[str, Any]:
    return parse_augment(text).to_dict()


_PROTOCOL = "default: the model's protocol"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run is asked to do. ``None`` protocol fields take the model's protocol
    (its paper or seed report), as adjusted by the dataset's catalog entry.

    ``scheduler`` names a schedule of :data:`training.run.protocol.SCHEDULES` and
    ``scheduler_opts`` its settings (alone, they adjust the protocol's own schedule);
    ``augment`` holds :class:`~training.data.augment.Augment` fields; ``max_clips`` keeps the
    first N clips of each split (quick checks such as ``train reproduce --smoke``). Each field's
    help text is its ``--option``'s.
    """

    store: str = _setting("Store URL or folder made by `pipe build`, e.g. demo.zarr or s3://bucket/mtat.zarr.")
    model: str = _setting("Model name, e.g. crnn (`train models` lists them).")
    input: str | None = _setting(
        "Per-clip vector a vector model (mlp_tabular) reads instead of its own: tabular/SET or "
        "embedding/VARIANT[,layer=N|all], e.g. tabular/summary or embedding/MERT-v1-95M,layer=7 (default: the model's).",
        None, metavar="ARRAY[,layer=N]")
    split_scheme: str | None = _setting(
        "Split scheme of the store, e.g. random (default: the protocol's if the store has it, else the store's first).", None)
    epochs: int | None = _setting(f"Epochs, e.g. 5 ({_PROTOCOL}).", None, min=1)
    batch_size: int | None = _setting(f"Examples per step, e.g. 32 ({_PROTOCOL}).", None, min=1)
    lr: float | None = _setting(f"Learning rate, e.g. 1e-3 ({_PROTOCOL}).", None, min=0, min_open=True)
    optimizer: str | None = _setting(f"Optimizer ({_PROTOCOL}).", None, choices=tuple(OPTIMIZERS))
    momentum: float | None = _setting("Momentum for sgd/rmsprop, e.g. 0.9.", None, min=0, max=1)
    nesterov: bool | None = _setting("Nesterov momentum for sgd.", None)
    weight_decay: float | None = _setting("L2 weight decay, e.g. 1e-4.", None, min=0)
    scheduler: str | None = _setting(f"Learning-rate schedule ({_PROTOCOL}).", None, choices=tuple(SCHEDULES))
    scheduler_opts: dict = _setting(  # noqa: RUF009 - a dataclasses.field (default_factory)
        "A setting of the schedule: factor, patience (plateau); step_size, gamma (step); t_max (cosine), "
        "e.g. --scheduler-opt patience=5.", factory=dict, flag="--scheduler-opt", pairs=True)
    early_stopping: int | None = _setting(
        "Stop after PATIENCE epochs without a better monitored metric, e.g. 10.", None, min=1, metavar="PATIENCE")
    device: str = _setting("Torch device; auto: CUDA, then MPS, then CPU.", "auto", choices=DEVICES)
    amp: bool = _setting("bf16 autocast on CUDA.", False)
    seed: int = _setting("Seed of the weights, the batches and the augmentation.", 0)
    model_opts: dict = _setting(  # noqa: RUF009 - a dataclasses.field (default_factory)
        "A model option, e.g. --model-opt filter_length=512 (`train models` lists each model's).",
        factory=dict, flag="--model-opt", pairs=True)
    cache: str = _setting("Hold the split in RAM/GPU or stream chunks (auto: what fits).", "auto", choices=CACHES)
    workers: int = _setting("Loader processes decoding shards ahead when streaming (same batches for any number).", 0, min=0)
    sync_bn: bool = _setting("Under torchrun: BatchNorm statistics over the global batch (CUDA only; default: per rank).", False)
    verify_reads: bool = _setting(
        "Skip checking each clip read against its stored digest (faster; `pipe verify` still checks).", True,
        flag="--no-verify-reads")
    eval_crops: int | None = _setting(f"Crops per clip at evaluation, e.g. 16 ({_PROTOCOL}).", None, min=1)
    eval_placement: str | None = _setting(
        "Where evaluation crops start: spread (to the clip's end) or won (Won et al.'s eval.py).", None,
        choices=EVAL_PLACEMENTS)
    sub_clips: int | None = _setting(
        "Train on this many stored sub-clips per clip; 0 = random crops instead (default: the protocol's).", None, min=0)
    monitor: str | None = _setting(
        "Validation metric that picks the best epoch: loss, roc_auc, pr_auc, accuracy, f1_macro...", None, metavar="METRIC")
    augment: dict | None = _setting(  # noqa: RUF009 - a dataclasses.field (default None)
        "Training-batch augmentation: specaugment, or e.g. time_masks=2,freq_masks=2,gain_db=6,time_shift=0.1,"
        "mixup_alpha=0.2; none = off.", None, metavar="K=V,...", parse=_augment_fields)
    max_clips: int | None = _setting("The first N clips of each split (quick checks).", None, shown=False)
    emissions: bool = _setting("Skip codecarbon's energy and CO2 tracking.", True, flag="--no-emissions")
    country: str = _setting("ISO code of the grid for CO2 estimates (offline), e.g. FRA.", "ESP")
    tensorboard: bool = _setting("Write no TensorBoard event files into the run directory.", True, flag="--no-tensorboard")
    tb_every: int = _setting("TensorBoard: the training loss every N optimizer steps (0: per epoch only).", 50, min=0, metavar="N")

    def __post_init__(self) -> None:
        if self.cache not in CACHES:
            raise MuzarrError(f"--cache {self.cache!r} must be one of {', '.join(CACHES)}")
        if self.max_clips is not None and self.max_clips < 2:
            raise MuzarrError(f"max_clips={self.max_clips!r} must be at least 2")
        if self.tb_every < 0:
            raise MuzarrError(f"tb_every={self.tb_every!r} must be 0 (no per-step loss) or a number of optimizer steps")
        if self.input is not None:
            parse_input(self.input)  # the spelling is checked where it is written; the model's fit in input_spec

    def input_spec(self) -> InputSpec:
        """What the run reads: ``--input`` when given (a model of per-clip vectors only), else the model's own input."""
        entry = get_model(self.model)
        if self.input is None:
            return entry.input
        if not entry.input.is_vector:
            raise MuzarrError(
                f"--input {self.input}: model {self.model!r} reads {entry.input.kind} ({entry.input.build_hint()}), not a "
                f"per-clip vector; --input ({INPUT_SPELLING}) feeds a vector model such as mlp_tabular"
            )
        return parse_input(self.input)

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
        self.input_spec()  # an --input the model cannot read fails with the other settings
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
