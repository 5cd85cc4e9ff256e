"""Training-batch augmentation: SpecAugment masks, random gain, circular time shift and mixup.

:class:`Augment` is the setting (from a run configuration or ``--augment``); :class:`Augmenter`
applies it to training batches on whatever device they are on. Every random draw comes from
generators seeded by ``numpy.random.SeedSequence([seed, epoch, step])`` (``step`` counts batches
within the epoch), drawn on the CPU and applied with tensor ops on the batch's device: an epoch
is reproducible on its own (what ``--resume`` needs) and a seed makes the same draws on CUDA, MPS
and the CPU (masks, shifts and gains give the same bits; mixup the same mix, to float rounding).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import MuzarrError

__all__ = ["INPUT_KINDS", "PRESETS", "TASKS", "Augment", "Augmenter", "format_augment", "parse_augment"]

INPUT_KINDS = ("logmel", "waveform", "tabular")
TASKS = ("multilabel", "multiclass")


@dataclass(frozen=True)
class Augment:
    """Training-batch augmentations (seed 002 names augmentation; SpecAugment: Park et al. 2019; mixup: Zhang et al. 2018).

    Every default is off. Values are checked on construction; :meth:`from_dict` and
    :func:`parse_augment` are the ways in from a file or the command line.

    Parameters
    ----------
    time_masks : int
        SpecAugment time masks per example.
    time_mask_width : float
        Largest width of each time mask, as a fraction of the time axis (the last axis), in [0, 1].
        Each mask's width is uniform in ``0 .. floor(time_mask_width * n_frames)``.
    freq_masks : int
        SpecAugment frequency masks per example (2-D log-mel inputs only).
    freq_mask_width : int
        Largest width of each frequency mask, in mel bands (uniform in ``0 .. freq_mask_width``).
    mask_value : float
        What masked cells become, in the model's input units before normalisation (dB for a
        log-mel: 0.0 is 0 dB, not the training mean; amplitude for a waveform: 0.0 is silence).
    gain_db : float
        Random gain per example, uniform in ``[-gain_db, +gain_db]`` dB: waveforms are scaled by
        ``10 ** (g / 20)``; dB log-mels have ``g`` added.
    time_shift : float
        Circular shift per example by a whole number of frames/samples, uniform in
        ``-floor(time_shift * n) .. +floor(time_shift * n)``, in [0, 1].
    mixup_alpha : float
        Mixup with ``lambda ~ Beta(mixup_alpha, mixup_alpha)`` drawn once per batch; 0 = off.
    """

    time_masks: int = 0
    time_mask_width: float = 0.1
    freq_masks: int = 0
    freq_mask_width: int = 8
    mask_value: float = 0.0
    gain_db: float = 0.0
    time_shift: float = 0.0
    mixup_alpha: float = 0.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            low, high = _RANGES[field.name]
            if _FIELD_TYPES[field.name] is int:
                if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                    raise MuzarrError(f"augment {field.name}={value!r} must be a non-negative integer")
                object.__setattr__(self, field.name, int(value))
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise MuzarrError(f"augment {field.name}={value!r} must be a finite number")
            if not low <= value <= high:
                bounds = f"between {low:g} and {high:g}" if high < math.inf else f"at least {low:g}"
                raise MuzarrError(f"augment {field.name}={value!r} must be {bounds}")
            object.__setattr__(self, field.name, float(value))

    @property
    def active(self) -> bool:
        """Whether any transform would change a batch."""
        return bool(self._transforms())

    def _transforms(self) -> list[str]:
        """The fields of the transforms that are on, in the order :class:`Augmenter` applies them."""
        on = {
            "gain_db": self.gain_db > 0,
            "time_shift": self.time_shift > 0,
            "time_masks": self.time_masks > 0 and self.time_mask_width > 0,
            "freq_masks": self.freq_masks > 0 and self.freq_mask_width > 0,
            "mixup_alpha": self.mixup_alpha > 0,
        }
        return [name for name, enabled in on.items() if enabled]

    def to_dict(self) -> dict[str, typing.Any]:
        """Plain values, one per field (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, typing.Any], *, where: str) -> Augment:
        """Validate ``data`` (from a file or the CLI) into an :class:`Augment`.

        Parameters
        ----------
        data : Mapping
            Field names to values; missing fields keep their defaults (off).
        where : str
            Where ``data`` came from (e.g. ``"model 'fcn'"``, ``"--augment"``), for error messages.

        Raises
        ------
        MuzarrError
            On an unknown key (the message lists the valid ones) or a value of the wrong type or range.
        """
        if not isinstance(data, Mapping):
            raise MuzarrError(f"{where}: augment settings must be a mapping of {_valid_keys()}, got {data!r}")
        unknown = [key for key in data if key not in _FIELD_TYPES]
        if unknown:
            raise _unknown_keys(unknown, where)
        try:
            return cls(**data)
        except MuzarrError as error:
            raise MuzarrError(f"{where}: {error}") from None


#: each field's type (int or float), which ``parse_augment`` converts its values to
_FIELD_TYPES: dict[str, type] = {f.name: typing.get_type_hints(Augment)[f.name] for f in dataclasses.fields(Augment)}
_RANGES: dict[str, tuple[float, float]] = {
    "time_masks": (0, math.inf),
    "time_mask_width": (0.0, 1.0),
    "freq_masks": (0, math.inf),
    "freq_mask_width": (0, math.inf),
    "mask_value": (-math.inf, math.inf),
    "gain_db": (0.0, math.inf),
    "time_shift": (0.0, 1.0),
    "mixup_alpha": (0.0, math.inf),
}

#: named settings ``parse_augment`` accepts on their own or before ``key=value`` overrides
PRESETS: dict[str, Augment] = {
    "none": Augment(),
    "specaugment": Augment(time_masks=2, time_mask_width=0.1, freq_masks=2, freq_mask_width=8),
}


def _valid_keys() -> str:
    return ", ".join(_FIELD_TYPES)


def _unknown_keys(keys: list[str], where: str) -> MuzarrError:
    hints = []
    for key in keys:
        close = difflib.get_close_matches(str(key), list(_FIELD_TYPES), n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return MuzarrError(f"{where}: unknown augment key(s) {', '.join(hints)}; valid keys: {_valid_keys()}")


def _span(fraction: float, n: int) -> int:
    """``floor(fraction * n)``, without 0.29 * 100 = 28.999... flooring to 28."""
    return math.floor(fraction * n + 1e-9)


def parse_augment(text: str) -> Augment:
    """The ``--augment`` option: comma-separated ``key=value`` pairs and preset names.

    ``"time_masks=2,freq_masks=2,gain_db=6,mixup_alpha=0.2"``; ``"specaugment"`` (2 time masks of
    up to 0.1 of the time axis and 2 frequency masks of up to 8 bands); ``"none"`` (off);
    ``"specaugment,mixup_alpha=0.2"`` (a preset, then overrides, applied left to right). Values
    are typed from the fields: integers for counts and band widths, numbers for the rest.

    Raises
    ------
    MuzarrError
        On an unknown key or preset, a repeated key, or a value that is not of the field's type.
    """
    where = f"--augment {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise MuzarrError(f"{where}: give key=value pairs ({_valid_keys()}) or one of {', '.join(PRESETS)}")
    values: dict[str, typing.Any] = {}
    seen: set[str] = set()
    for token in (part.strip() for part in text.split(",")):
        if "=" not in token:
            if token not in PRESETS:
                raise MuzarrError(
                    f"{where}: {token!r} is not a preset ({', '.join(PRESETS)}) "
                    f"nor a key=value pair (keys: {_valid_keys()})"
                )
            values.update(PRESETS[token].to_dict())
            continue
        key, _, raw = (piece.strip() for piece in token.partition("="))
        if key not in _FIELD_TYPES:
            raise _unknown_keys([key], where)
        if key in seen:
            raise MuzarrError(f"{where}: {key} is given twice")
        seen.add(key)
        kind = _FIELD_TYPES[key]
        try:
            values[key] = kind(raw)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise MuzarrError(f"{where}: {key}={raw!r} must be {expected}") from None
    return Augment.from_dict(values, where=where)


def format_augment(augment: Augment) -> str:
    """The ``--augment`` text for ``augment``: its non-default fields, or ``"none"``.

    ``parse_augment(format_augment(a)) == a`` for every ``a``.
    """
    default = Augment()
    pairs = [f"{key}={value!r}" for key, value in augment.to_dict().items() if value != getattr(default, key)]
    return ",".join(pairs) or "none"


class Augmenter:
    """Applies an :class:`Augment` to training batches, reproducibly per (seed, epoch, batch).

    For training batches only: the caller never calls it on evaluation or prediction batches.
    The order is gain, time shift, time masks, frequency masks, then mixup, so masked cells hold
    exactly ``mask_value`` before mixing.

    Parameters
    ----------
    augment : Augment
        What to apply.
    input_kind : {"logmel", "waveform", "tabular"}
        The model's input: dB log-mels ``(batch, n_mels, n_frames)``, waveforms
        ``(batch, ..., n_samples)`` or tables ``(batch, n_features)`` (mixup only).
    task : {"multilabel", "multiclass"}
        Target form: multi-hot ``(batch, n_classes)`` or class indices ``(batch,)``.
    n_classes : int
        Number of classes or tags.
    seed : int
        Non-negative run seed; with the epoch and the batch counter it fixes every draw.
    rank, world : int
        This process's rank of ``world`` in a distributed run: rank ``r``'s batch ``step`` draws
        as batch ``step * world + r`` would, so no two ranks draw alike (one process: unchanged).

    Raises
    ------
    MuzarrError
        When ``augment`` asks for a transform ``input_kind`` cannot take (frequency masks on a
        waveform; anything but mixup on a table), or an argument is out of range.

    Notes
    -----
    Each call draws from ``SeedSequence([seed, epoch, step])``, ``step`` counting calls since
    :meth:`set_epoch`: two Augmenters with the same settings and seed give identical outputs
    batch for batch. The draws are made on the CPU, so they are the same whatever device the
    batch is on.
    """

    def __init__(
        self, augment: Augment, *, input_kind: str, task: str, n_classes: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        if not isinstance(augment, Augment):
            raise MuzarrError(f"Augmenter needs an Augment (see parse_augment / Augment.from_dict), got {augment!r}")
        if input_kind not in INPUT_KINDS:
            raise MuzarrError(f"Augmenter input_kind={input_kind!r} must be one of {', '.join(INPUT_KINDS)}")
        if task not in TASKS:
            raise MuzarrError(f"Augmenter task={task!r} must be one of {', '.join(TASKS)}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 1:
            raise MuzarrError(f"Augmenter n_classes={n_classes!r} must be a positive integer")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise MuzarrError(f"augmentation seed={seed!r} must be a non-negative integer (use a --seed >= 0)")
        refused = _refused(augment, input_kind)
        if refused:
            raise MuzarrError(refused)
        self.augment = augment
        self.input_kind = input_kind
        self.task = task
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world)
        self.epoch = 0
        self.step = 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (>= 0): the batch counter goes back to 0."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise MuzarrError(f"Augmenter.set_epoch({epoch!r}): the epoch must be a non-negative integer")
        self.epoch = int(epoch)
        self.step = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one training batch.

        Parameters
        ----------
        x : torch.Tensor [shape=(batch, ..., n), floating point, any device]
            Inputs, time on the last axis (mel bands on the one before for log-mels).
        y : torch.Tensor [shape=(batch, n_classes) or (batch,)]
            Multi-hot targets (multilabel) or int64 class indices (multiclass).

        Returns
        -------
        x : torch.Tensor [shape=x.shape, dtype=x.dtype, device=x.device]
            The augmented inputs (a new tensor; ``x`` is not modified).
        targets : torch.Tensor
            With mixup: soft targets ``(batch, n_classes)`` float32 on ``y``'s device (class
            indices become one-hot rows first, so each row sums to 1; ``CrossEntropyLoss`` takes
            class probabilities). Without mixup: ``y`` itself.
        """
        self._check_batch(x, y)
        torch_gen, numpy_gen = self._generators()
        self.step += 1
        aug = self.augment
        transforms = aug._transforms()
        if not transforms or len(x) == 0:
            return x, (_soft_targets(y, self.task, self.n_classes) if "mixup_alpha" in transforms else y)
        batch, n = x.shape[0], x.shape[-1]
        per_example = (batch, *([1] * (x.ndim - 1)))
        if "gain_db" in transforms:
            gain = (torch.rand(batch, generator=torch_gen, dtype=torch.float64) * 2 - 1) * aug.gain_db
            if self.input_kind == "waveform":
                x = x * (10.0 ** (gain / 20.0)).to(device=x.device, dtype=x.dtype).view(per_example)
            else:
                x = x + gain.to(device=x.device, dtype=x.dtype).view(per_example)
        if "time_shift" in transforms and (reach := _span(aug.time_shift, n)) > 0:
            shift = torch.randint(-reach, reach + 1, (batch,), generator=torch_gen).to(x.device)
            # torch.roll per example: out[..., j] = x[..., (j - k) mod n]
            index = (torch.arange(n, device=x.device) - shift[:, None]) % n
            x = x.gather(-1, index.view(batch, *([1] * (x.ndim - 2)), n).expand(x.shape))
        if "time_masks" in transforms:
            mask = _span_mask(batch, n, aug.time_masks, _span(aug.time_mask_width, n), torch_gen, x.device)
            x = x.masked_fill(mask.view(batch, *([1] * (x.ndim - 2)), n), aug.mask_value)
        if "freq_masks" in transforms:
            n_mels = x.shape[-2]
            mask = _span_mask(batch, n_mels, aug.freq_masks, min(aug.freq_mask_width, n_mels), torch_gen, x.device)
            x = x.masked_fill(mask.view(batch, *([1] * (x.ndim - 3)), n_mels, 1), aug.mask_value)
        if "mixup_alpha" not in transforms:
            return x, y
        perm = torch.randperm(batch, generator=torch_gen)
        lam = float(numpy_gen.beta(aug.mixup_alpha, aug.mixup_alpha))
        targets = _soft_targets(y, self.task, self.n_classes)
        x = lam * x + (1.0 - lam) * x[perm.to(x.device)]
        targets = lam * targets + (1.0 - lam) * targets[perm.to(targets.device)]
        return x, targets

    def _generators(self) -> tuple[torch.Generator, np.random.Generator]:
        """CPU generators for this batch: torch for masks, shifts, gains and the permutation; numpy for Beta."""
        torch_seq, numpy_seq = np.random.SeedSequence([self.seed, self.epoch, self.step * self.world + self.rank]).spawn(2)
        torch_gen = torch.Generator().manual_seed(int(torch_seq.generate_state(1, np.uint64)[0]))
        return torch_gen, np.random.default_rng(numpy_seq)

    def _check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise MuzarrError(f"Augmenter takes tensors x and y, got {type(x).__name__} and {type(y).__name__}")
        if not x.is_floating_point():
            raise MuzarrError(f"Augmenter: x has dtype {x.dtype}; convert it to float32 first")
        min_ndim, layout = {
            "logmel": (3, "(batch, n_mels, n_frames)"),
            "waveform": (2, "(batch, ..., n_samples)"),
            "tabular": (2, "(batch, n_features)"),
        }[self.input_kind]
        if x.ndim < min_ndim:
            raise MuzarrError(f"Augmenter: x has shape {tuple(x.shape)}; a {self.input_kind} batch is {layout}")
        if self.task == "multilabel":
            if y.ndim != 2 or y.shape[0] != x.shape[0] or y.shape[1] != self.n_classes:
                raise MuzarrError(
                    f"Augmenter: multilabel targets have shape {tuple(y.shape)}; "
                    f"expected ({x.shape[0]}, {self.n_classes})"
                )
            return
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
            raise MuzarrError(
                f"Augmenter: multiclass targets are {y.dtype} of shape {tuple(y.shape)}; "
                f"expected int64 class indices of shape ({x.shape[0]},)"
            )
        if self.augment.mixup_alpha > 0 and len(y) and bool(((y < 0) | (y >= self.n_classes)).any()):
            bad = y[(y < 0) | (y >= self.n_classes)][0].item()
            raise MuzarrError(
                f"Augmenter: class index {bad} is outside 0..{self.n_classes - 1}; drop unlabelled clips before mixup"
            )


def _refused(augment: Augment, input_kind: str) -> str | None:
    """Why ``augment`` cannot apply to ``input_kind`` (one message for every conflict), or ``None``."""
    transforms = augment._transforms()
    if input_kind == "tabular":
        wrong = [name for name in transforms if name != "mixup_alpha"]
        if wrong:
            settings = ", ".join(f"{name}={getattr(augment, name)!r}" for name in wrong)
            return f"augment {settings}: tabular inputs take only mixup_alpha; remove the others for this model"
    elif input_kind == "waveform" and "freq_masks" in transforms:
        return (
            f"augment freq_masks={augment.freq_masks}: frequency masks need a 2-D log-mel input and this model "
            "reads waveforms; remove freq_masks (the specaugment preset includes them)"
        )
    return None


def _span_mask(
    batch: int, size: int, count: int, max_width: int, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``(batch, size)`` bool: ``count`` spans a row, widths uniform in ``0..max_width``, starts where they fit."""
    widths = (torch.rand(batch, count, generator=gen, dtype=torch.float64) * (max_width + 1)).floor().long()
    widths = widths.clamp_(max=max_width)
    starts = (torch.rand(batch, count, generator=gen, dtype=torch.float64) * (size - widths + 1)).floor().long()
    starts = torch.minimum(starts, size - widths)
    starts, ends = starts.to(device), (starts + widths).to(device)
    cells = torch.arange(size, device=device)
    return ((cells >= starts[..., None]) & (cells < ends[..., None])).any(dim=1)


def _soft_targets(y: torch.Tensor, task: str, n_classes: int) -> torch.Tensor:
    """Targets as float32 class weights ``(batch, n_classes)``: multi-hot as is, indices one-hot."""
    if task == "multilabel":
        return y.to(torch.float32)
    return torch.nn.functional.one_hot(y.long(), n_classes).to(torch.float32)
