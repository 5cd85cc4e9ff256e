"""The interface every stored feature shares, and the registry that names them."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import MuzarrError
from pipeline.suggest import did_you_mean


@dataclasses.dataclass(frozen=True)
class Feature:
    """A per-clip feature computed from a mono float32 waveform at ``sample_rate``.

    Subclasses are frozen dataclasses whose fields are the feature's parameters; the
    parameters, the kind and nothing else decide the bytes written, so two features that
    compare equal write identical arrays.

    Subclass contract
    -----------------
    kind : ClassVar[str]
        Registry key (``"waveform"``, ``"logmel"``, ``"gtzan57"``, ...).
    group : ClassVar[str]
        Store sub-group the array lives in (``""`` for the top level, ``"logmel"``,
        ``"tabular"``).
    sample_rate : int
        Rate the input waveform is resampled to before :meth:`extract`.
    dtype : str
        Storage dtype of the array.
    output_shape(n_samples) -> tuple
        Shape of one (sub-)clip's output for an input of ``n_samples`` samples.
    axes : ClassVar[tuple[str, ...]]
        What each axis of :meth:`output_shape` is (``("mel", "frame")``): the store names
        the array's dimensions from them (``pipeline.store.dimension_names``).
    extract(samples, *, sampling_rate) -> np.ndarray
        ``samples`` is float32 ``[shape=(..., n_samples)]``; returns
        ``[shape=(..., *output_shape(n_samples))]`` in ``dtype`` or a type that casts to it
        without surprise. Must be deterministic.
    storage_note(samples) -> str | None
        What storing this clip lost that a person should know (e.g. int16 clipping), or None.
    """

    kind: ClassVar[str] = ""
    group: ClassVar[str] = ""
    axes: ClassVar[tuple[str, ...]] = ()
    #: axes stored one index per chunk (an embedding's layers: a probe of one layer reads only its bytes)
    split_axes: ClassVar[tuple[str, ...]] = ()
    #: parameters filled in from elsewhere than the command line (a model's folder): a command that
    #: rebuilds a store does not give them
    derived: ClassVar[tuple[str, ...]] = ()

    sample_rate: int = 16000

    @property
    def name(self) -> str:
        """Array path inside the store, e.g. ``"logmel/mel96_sr12000_fft512_hop256_pad37"``."""
        return f"{self.group}/{self.variant}" if self.group else self.kind

    @property
    def variant(self) -> str:
        """Short name made of the parameters that matter."""
        return self.kind

    @property
    def dtype(self) -> str:
        return "float32"

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        raise NotImplementedError

    def extract(self, samples: np.ndarray, *, sampling_rate: int) -> np.ndarray:
        raise NotImplementedError

    #: computed for a whole batch of clips at once (:meth:`extract_many`): a model whose forward passes the
    #: clips of a batch share
    batched: ClassVar[bool] = False

    def extract_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`extract` of each of ``clips`` (at :attr:`sample_rate`), computed together where that is faster."""
        return [self.extract(samples, sampling_rate=self.sample_rate) for samples in clips]

    def frame_rate(self) -> float | None:
        """Elements per second of audio along the last axis of :meth:`output_shape` (None: it has no time axis)."""
        return None

    def storage_note(self, samples: np.ndarray) -> str | None:
        """What :meth:`extract`'s output of ``samples`` does not keep, in one line; None if nothing."""
        return None

    def attrs(self) -> dict[str, Any]:
        """Extra attributes stored on the array (column names, sample rate, ...)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def check_computable(self) -> None:
        """Raise :class:`MuzarrError` (naming the parameter and what would work) when these parameters
        fail, or silently waste, every clip: a build calls it before it adds this feature's array to a
        store, before anything is written. Not called when a stored feature is read back: an array a
        store already holds stays readable."""

    def check_rate(self, sampling_rate: int) -> None:
        if sampling_rate != self.sample_rate:
            raise MuzarrError(f"{self.name} expects audio at {self.sample_rate} Hz, got {sampling_rate} Hz")


FEATURES: dict[str, type[Feature]] = {}


def register(cls: type[Feature]) -> type[Feature]:
    """Class decorator: add a feature class to :data:`FEATURES` under its ``kind``."""
    FEATURES[cls.kind] = cls
    return cls


def feature_from_dict(spec: dict[str, Any], *, where: str = "feature") -> Feature:
    """Build a feature from ``{"kind": ..., <parameters>}``; unknown kinds or fields are errors."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise MuzarrError(f"{where}: expected a mapping with a 'kind' key, got {spec!r}")
    kind = spec["kind"]
    if kind not in FEATURES:
        raise MuzarrError(
            f"{where}: unknown feature kind {kind!r}{did_you_mean(kind, FEATURES)}; known kinds: {', '.join(sorted(FEATURES))}"
        )
    cls = FEATURES[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = {k: v for k, v in spec.items() if k != "kind"}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        given = sorted(set(fields) - set(cls.derived))  # what a person gives: the rest is read from elsewhere
        raise MuzarrError(
            f"{where}: unknown parameter(s) {unknown} for feature {kind!r}{did_you_mean(unknown[0], given)}; known: {given}"
        )
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise MuzarrError(f"{where}: {err}") from None


def n_frames(n_samples: int, *, hop_length: int, pad_frames: int = 0) -> int:
    """Frames of a centred STFT or framing of ``n_samples`` samples: ``1 + n // hop``, plus ``pad_frames``
    of zeros each side (the one formula: features, stores and models all use it)."""
    return 1 + n_samples // hop_length + 2 * pad_frames
