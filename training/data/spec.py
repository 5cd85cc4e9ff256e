"""What a model reads from a store: the feature and the length of one example (:class:`InputSpec`).

The data layer plans examples from it and the model registry declares one per model: it lives here, with
the data, so that reading a store does not import every model. :func:`parse_input` reads the one
spelling of a per-clip vector input that ``train --input`` and ``train probe --input`` share:
``tabular/SET`` or ``embedding/VARIANT[,layer=N|all]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import parse_spec
from pipeline.errors import MuzarrError
from pipeline.features.base import n_frames

#: fields an :class:`InputSpec` of each kind must set
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "logmel": ("sample_rate", "n_mels", "n_fft", "hop_length"),
    "waveform": ("sample_rate",),
    "tabular": ("tabular_set",),
    "embedding": ("embedding",),
}
#: kinds whose example is one vector per (sub-)clip: their size is read from the store's array
VECTOR_KINDS = ("tabular", "embedding")
#: what ``--input`` takes, for the line that refuses what it does not
INPUT_SPELLING = "tabular/SET or embedding/VARIANT[,layer=N|all] (e.g. tabular/summary, embedding/MERT-v1-95M,layer=7)"

#: features per example of the tabular sets whose size is fixed (for :meth:`InputSpec.example_shape`
#: without a store; any other vector's size is its store array's last axis)
TABULAR_SIZES: dict[str, int] = {"gtzan57": 57}


@dataclass(frozen=True)
class InputSpec:
    """What a model reads from a store, and how long one training example is.

    Parameters
    ----------
    kind : {"logmel", "waveform", "tabular", "embedding"}
        Store array kind.
    sample_rate : int or None
        Audio rate the feature is computed at (logmel, waveform).
    n_mels, n_fft, hop_length : int or None
        Log-mel parameters.
    pad_frames : int
        Constant frames added at both ends of the log-mel's time axis.
    seconds : float or None
        Length of one training example (crop or sub-clip); ``None`` = the whole stored clip.
    tabular_set : {"gtzan57", "summary"} or None
        Which tabular feature set.
    embedding : str or None
        Which ``embedding/<variant>`` array.
    layer : int or None
        Embedding: the hidden-state index to read (the array's ``layers`` attribute names them);
        ``None`` = every stored layer averaged (``layer=all``).
    """

    kind: str
    sample_rate: int | None = None
    n_mels: int | None = None
    n_fft: int | None = None
    hop_length: int | None = None
    pad_frames: int = 0
    seconds: float | None = None
    tabular_set: str | None = None
    embedding: str | None = None
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _REQUIRED_FIELDS:
            raise MuzarrError(f"InputSpec kind={self.kind!r} is not one of {tuple(_REQUIRED_FIELDS)}")
        missing = [name for name in _REQUIRED_FIELDS[self.kind] if getattr(self, name) is None]
        if missing:
            raise MuzarrError(f"InputSpec kind={self.kind!r} needs {missing}")
        if self.layer is not None and self.kind != "embedding":
            raise MuzarrError(f"InputSpec kind={self.kind!r} has no layers (layer={self.layer!r})")

    @property
    def is_vector(self) -> bool:
        """One vector per (sub-)clip (a tabular set, an embedding): its size is the store array's."""
        return self.kind in VECTOR_KINDS

    @property
    def array_name(self) -> str | None:
        """The store array of a vector input (``tabular/summary``, ``embedding/MERT-v1-95M``); None otherwise."""
        if self.kind == "tabular":
            return f"tabular/{self.tabular_set}"
        if self.kind == "embedding":
            return f"embedding/{self.embedding}"
        return None

    def describe(self) -> str:
        """The ``--input`` spelling of a vector input (``embedding/MERT-v1-95M,layer=7``), else the build hint."""
        if self.kind == "embedding":
            return f"{self.array_name},layer={'all' if self.layer is None else self.layer}"
        return self.array_name or self.build_hint()

    def build_hint(self) -> str:
        """The ``pipe build`` option that adds this input to a store.

        e.g. ``"--logmel n_mels=96,sample_rate=12000,n_fft=512,hop_length=256,pad_frames=37"``,
        ``"--waveform sample_rate=16000"``, ``"--tabular gtzan57"``.
        """
        if self.kind == "logmel":
            return (
                f"--logmel n_mels={self.n_mels},sample_rate={self.sample_rate},n_fft={self.n_fft},"
                f"hop_length={self.hop_length},pad_frames={self.pad_frames}"
            )
        if self.kind == "waveform":
            return f"--waveform sample_rate={self.sample_rate}"
        if self.kind == "embedding":
            return f"--embedding MODEL (stored as {self.array_name})"
        return f"--tabular {self.tabular_set}"

    def feature_spec(self) -> dict:
        """The store feature this input reads, as ``pipe build`` takes one (``{"kind": ..., <parameters>}``)."""
        if self.kind == "logmel":
            params = ("n_mels", "sample_rate", "n_fft", "hop_length", "pad_frames")
            return {"kind": "logmel", **{k: getattr(self, k) for k in params}}
        if self.kind == "waveform":
            return {"kind": "waveform", "sample_rate": self.sample_rate}
        return {"kind": self.tabular_set}

    def example_shape(self, seconds: float | None = None) -> tuple[int, ...]:
        """Per-example shape (no batch axis) for an example of ``seconds`` (default: ``self.seconds``).

        logmel ``(n_mels, 1 + n_samples // hop_length + 2 * pad_frames)`` (centred frames),
        waveform ``(n_samples,)``, tabular ``(n_features,)``. A whole-clip spec needs
        ``seconds``, since only the store knows its clips' length.
        """
        if self.is_vector:
            if self.kind != "tabular" or self.tabular_set not in TABULAR_SIZES:
                raise MuzarrError(f"{self.array_name} has no fixed size; read input_shape from the store")
            return (TABULAR_SIZES[self.tabular_set],)
        seconds = self.seconds if seconds is None else seconds
        if seconds is None:
            raise MuzarrError(f"{self.build_hint()} examples are whole clips: pass seconds= (or read the store)")
        n_samples = round(seconds * self.sample_rate)
        if self.kind == "waveform":
            return (n_samples,)
        return (self.n_mels, n_frames(n_samples, hop_length=self.hop_length, pad_frames=self.pad_frames))


def parse_input(text: str, *, what: str = "--input") -> InputSpec:
    """``"tabular/summary"`` or ``"embedding/MERT-v1-95M,layer=7"`` (``layer=all``: every layer averaged,
    the default) as an :class:`InputSpec`; anything else is one :class:`MuzarrError` saying what ``what`` takes."""
    if not isinstance(text, str) or not text.strip():
        raise MuzarrError(f"{what} {text!r}: give {INPUT_SPELLING}")
    name, _, rest = text.strip().partition(",")
    kind, slash, variant = name.strip().partition("/")
    if kind not in VECTOR_KINDS or not slash or not variant or "/" in variant:
        raise MuzarrError(f"{what} {text}: not a per-clip vector array; give {INPUT_SPELLING}")
    options = parse_spec(rest, what=f"{what} {text}")
    allowed = ("layer",) if kind == "embedding" else ()
    unknown = [key for key in options if key not in allowed]
    if unknown:
        takes = "takes only layer=N|all" if allowed else "takes no options"
        raise MuzarrError(f"{what} {text}: unknown option {unknown[0]!r}; {kind}/... {takes}")
    if kind == "tabular":
        return InputSpec("tabular", tabular_set=variant)
    layer = options.get("layer", "all")
    if layer == "all":
        layer = None
    elif isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise MuzarrError(f"{what} {text}: layer={layer!r} must be a hidden-state index (0, 1, ...) or all")
    return InputSpec("embedding", embedding=variant, layer=layer)
