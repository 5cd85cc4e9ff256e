"""What a model reads from a store: the feature and the length of one example (:class:`InputSpec`).

The data layer plans examples from it and the model registry declares one per model: it lives here, with
the data, so that reading a store does not import every model.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import MuzarrError
from pipeline.features.base import n_frames

#: fields an :class:`InputSpec` of each kind must set
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "logmel": ("sample_rate", "n_mels", "n_fft", "hop_length"),
    "waveform": ("sample_rate",),
    "tabular": ("tabular_set",),
}

#: features per example of each known tabular set (for :meth:`InputSpec.example_shape`)
TABULAR_SIZES: dict[str, int] = {"gtzan57": 57}


@dataclass(frozen=True)
class InputSpec:
    """What a model reads from a store, and how long one training example is.

    Parameters
    ----------
    kind : {"logmel", "waveform", "tabular"}
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
    """

    kind: str
    sample_rate: int | None = None
    n_mels: int | None = None
    n_fft: int | None = None
    hop_length: int | None = None
    pad_frames: int = 0
    seconds: float | None = None
    tabular_set: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _REQUIRED_FIELDS:
            raise MuzarrError(f"InputSpec kind={self.kind!r} is not one of {tuple(_REQUIRED_FIELDS)}")
        missing = [name for name in _REQUIRED_FIELDS[self.kind] if getattr(self, name) is None]
        if missing:
            raise MuzarrError(f"InputSpec kind={self.kind!r} needs {missing}")

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
        if self.kind == "tabular":
            if self.tabular_set not in TABULAR_SIZES:
                raise MuzarrError(
                    f"tabular set {self.tabular_set!r} has no known size; read input_shape from the store"
                )
            return (TABULAR_SIZES[self.tabular_set],)
        seconds = self.seconds if seconds is None else seconds
        if seconds is None:
            raise MuzarrError(f"{self.build_hint()} examples are whole clips: pass seconds= (or read the store)")
        n_samples = round(seconds * self.sample_rate)
        if self.kind == "waveform":
            return (n_samples,)
        return (self.n_mels, n_frames(n_samples, hop_length=self.hop_length, pad_frames=self.pad_frames))
