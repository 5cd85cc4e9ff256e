"""Mel spectrogram and decibel conversion as torch modules, on whatever device the model is.

Models that take raw waveforms (``short_res``) compute their log-mel input on the training
device, so the store keeps one waveform array and mel settings stay model options. torchaudio
would be the usual source of these two modules, but its wheel does not import next to the
CPU build of torch here; ``torch.stft`` plus librosa's mel filter bank gives the same numbers
(``tests/test_frontend.py`` checks them against ``librosa.feature.melspectrogram``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import librosa
import torch
from torch import nn

from pipeline.errors import MuzarrError
from pipeline.features.base import n_frames
from training.models.blocks import Tagger, check_input_shape

__all__ = ["AmplitudeToDB", "MelFrontend", "MelSpectrogram", "WaveformMelModel", "filtered_spectrogram"]

_PAD_MODES = ("constant", "reflect")


class MelSpectrogram(nn.Module):
    """Mel-scaled power spectrogram, matching ``librosa.feature.melspectrogram`` (librosa 0.11).

    Defaults are librosa's: periodic Hann window, centred frames padded with zeros
    (``pad_mode="constant"``), power 2, Slaney mel scale and Slaney area normalisation.
    ``htk=True, norm=None, pad_mode="reflect"`` gives torchaudio's ``MelSpectrogram`` defaults
    instead (what minzwon/sota-music-tagging-models used).

    Parameters
    ----------
    sample_rate : int
        Rate of the input waveform in Hz.
    n_fft : int
        FFT length in samples.
    hop_length : int or None
        Samples between frames; ``None`` means ``win_length // 4`` as in librosa.
    win_length : int or None
        Window length (``<= n_fft``); ``None`` means ``n_fft``.
    n_mels : int
        Number of mel bands.
    f_min, f_max : float, float or None
        Band edges of the filter bank in Hz; ``f_max=None`` means ``sample_rate / 2``.
    power : float
        Exponent of the magnitude (2 = power, 1 = magnitude).
    center : bool
        Pad ``n_fft // 2`` samples on both sides so frame ``t`` is centred at ``t * hop_length``.
    pad_mode : {"constant", "reflect"}
        How the centring pad is filled.
    htk : bool
        HTK mel formula instead of Slaney's.
    norm : {"slaney"} or None
        Filter normalisation passed to ``librosa.filters.mel``.

    Notes
    -----
    Input ``waveform : torch.Tensor [shape=(..., n_samples)]``; output
    ``[shape=(..., n_mels, 1 + n_samples // hop_length)]`` when ``center=True``, in the
    input's dtype if float64 and float32 otherwise (also under autocast, since half precision
    overflows on loud frames). The filter bank is a buffer, so ``.to(device)`` moves it.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 22050,
        n_fft: int = 2048,
        hop_length: int | None = None,
        win_length: int | None = None,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        power: float = 2.0,
        center: bool = True,
        pad_mode: str = "constant",
        htk: bool = False,
        norm: str | None = "slaney",
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        hop_length = win_length // 4 if hop_length is None else hop_length
        if not 0 < win_length <= n_fft:
            raise MuzarrError(f"win_length={win_length} must be in 1..n_fft={n_fft}")
        if hop_length <= 0:
            raise MuzarrError(f"hop_length={hop_length} must be a positive integer")
        if pad_mode not in _PAD_MODES:
            raise MuzarrError(f"pad_mode={pad_mode!r} is not supported; use one of {_PAD_MODES}")
        if f_max is not None and not f_min < f_max <= sample_rate / 2:
            raise MuzarrError(f"f_max={f_max} must lie in (f_min={f_min}, sample_rate/2={sample_rate / 2}]")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.power = power
        self.center = center
        self.pad_mode = pad_mode
        # float32 like librosa's own default, so a float64 forward reproduces librosa exactly
        filters = librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=htk, norm=norm
        )
        self.register_buffer("mel_filters", torch.from_numpy(filters), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return filtered_spectrogram(
            waveform,
            self.mel_filters,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            center=self.center,
            pad_mode=self.pad_mode,
            power=self.power,
        )

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"n_mels={self.n_mels}, pad_mode={self.pad_mode!r}"
        )


def filtered_spectrogram(
    waveform: torch.Tensor,
    filters: torch.Tensor,
    *,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    center: bool = True,
    pad_mode: str = "reflect",
    power: float = 2.0,
) -> torch.Tensor:
    """STFT magnitude to the ``power`` (periodic Hann window) through a filter bank, as
    :class:`MelSpectrogram` and the harmonic front end compute it.

    ``waveform [shape=(..., n_samples)]`` and ``filters [shape=(n_bands, n_fft // 2 + 1)]``
    give ``[shape=(..., n_bands, n_frames)]``, in float64 for a float64 waveform and float32
    otherwise, also under autocast.
    """
    batch_shape = waveform.shape[:-1]
    flat = _at_least_float32(waveform.reshape(-1, waveform.shape[-1]))
    # periodic Hann = scipy's get_window("hann", n, fftbins=True), librosa's window. Made
    # per call in the input's dtype: a float32 window cast up to float64 leaks enough error
    # into the sidelobes to move quiet bins by ~1e-4 dB.
    window = torch.hann_window(win_length or n_fft, periodic=True, dtype=flat.dtype, device=flat.device)
    # autocast off: in float16 the power of one loud 512-point frame (~6.6e4) overflows
    with torch.autocast(device_type=flat.device.type, enabled=False):
        stft = torch.stft(
            flat,
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=window,
            center=center,
            pad_mode=pad_mode,
            return_complex=True,
        )
        if power == 2.0:
            # |z|² without the square root and back
            spectrum = torch.view_as_real(stft).square().sum(dim=-1)
        else:
            spectrum = stft.abs().pow(power)
        banded = torch.matmul(filters.to(dtype=spectrum.dtype), spectrum)
    return banded.reshape(*batch_shape, *banded.shape[-2:])


class AmplitudeToDB(nn.Module):
    """Decibels of a power (or magnitude) spectrogram, like ``librosa.power_to_db``.

    ``10 * log10(max(x, amin)) - 10 * log10(max(ref, amin))`` for ``stype="power"`` (20 for
    ``"magnitude"``); with ``top_db`` the result is floored at ``max - top_db``.

    Parameters
    ----------
    stype : {"power", "magnitude"}
        What the input holds.
    ref : float
        Reference value that maps to 0 dB.
    amin : float
        Floor applied before the logarithm, so silence gives ``10 * log10(amin)`` not ``-inf``.
    top_db : float or None
        Dynamic range kept below each example's maximum; ``None`` keeps all.

    Notes
    -----
    Input ``[shape=(..., n_mels, n_frames)]``. librosa takes the ``top_db`` maximum over the
    whole array; here it is per example (over the last two axes), so a batch is treated as
    a stack of independent spectrograms. The two agree on a single example.
    """

    def __init__(
        self, *, stype: str = "power", ref: float = 1.0, amin: float = 1e-10, top_db: float | None = None
    ) -> None:
        super().__init__()
        if stype not in ("power", "magnitude"):
            raise MuzarrError(f"stype={stype!r} must be 'power' or 'magnitude'")
        if amin <= 0:
            raise MuzarrError(f"amin={amin} must be strictly positive")
        if top_db is not None and top_db < 0:
            raise MuzarrError(f"top_db={top_db} must be non-negative")
        self.multiplier = 10.0 if stype == "power" else 20.0
        self.amin = amin
        self.ref = ref
        self.top_db = top_db

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        # amin=1e-10 is below float16's smallest subnormal: it would clamp to 0 and give -inf
        spectrogram = _at_least_float32(spectrogram)
        db = self.multiplier * torch.log10(torch.clamp(spectrogram, min=self.amin))
        db = db - self.multiplier * math.log10(max(self.ref, self.amin))
        if self.top_db is not None:
            peak = db.amax(dim=(-2, -1), keepdim=True)
            db = torch.maximum(db, peak - self.top_db)
        return db

    def extra_repr(self) -> str:
        return f"multiplier={self.multiplier}, ref={self.ref}, amin={self.amin}, top_db={self.top_db}"


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged if float32/float64, else as float32 (half precision, ints)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@dataclasses.dataclass(frozen=True)
class MelFrontend:
    """The settings of a waveform model's log-mel front end, one object instead of nine arguments.

    The defaults are torchaudio's ``MelSpectrogram`` at Won et al.'s settings, which all his
    mel models share but for ``n_mels``: 16 kHz, n_fft 512, hop 256, 0 to 8 kHz, 128 mels, HTK
    mel scale, unnormalised filters, reflect padding. ``htk=False, norm="slaney",
    pad_mode="constant"`` gives librosa's defaults instead (the stored log-mels' convention).
    The rest of the chain is fixed, as in his code: power 2, then decibels (10 log10, ref 1,
    floor 1e-10, no ``top_db``), then ``BatchNorm2d(1)``.

    Parameters
    ----------
    sample_rate, n_fft, hop_length, n_mels : int
        See :class:`MelSpectrogram`; positive.
    f_min, f_max : float, float or None
        Band edges in Hz (``f_max=None``: Nyquist).
    htk, norm, pad_mode
        Mel scale, filter normalisation and centring pad, see :class:`MelSpectrogram`.
    """

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256
    f_min: float = 0.0
    f_max: float | None = 8000.0
    n_mels: int = 128
    htk: bool = True
    norm: str | None = None
    pad_mode: str = "reflect"

    def __post_init__(self) -> None:
        # what a layer of width -3 would only say deep in librosa or torch
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise MuzarrError(f"{name}={value!r} must be a positive integer")

    def replace(self, **settings: Any) -> MelFrontend:
        """These settings with some changed; a name that is not a field raises, listing the fields."""
        unknown = sorted(set(settings) - set(self.options()))
        if unknown:
            raise MuzarrError(f"unknown option(s) {unknown}; the mel front end takes {', '.join(self.options())}")
        return dataclasses.replace(self, **settings)

    def options(self) -> dict[str, Any]:
        """The settings by name, in field order: the keyword options a :class:`WaveformMelModel` takes."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


class WaveformMelModel(Tagger):
    """Base of the models that read waveforms and compute their log-mel on the device, as Won
    et al.'s do: mel power → dB → ``BatchNorm2d(1)``.

    A subclass names its paper's front end in ``mel_defaults`` and hands its ``**mel``
    keyword arguments, named like :class:`MelFrontend`'s fields, to this constructor, which
    checks them once into ``self.mel``. So every mel setting is a model option
    (``--model-opt n_mels=96``, listed by :func:`training.models.model_options`) and no model
    spells the nine of them out. After its own checks the subclass calls :meth:`_add_log_mel`.

    The three modules keep his attribute names (``spec``, ``to_db``, ``spec_bn``), so his
    checkpoints' ``spec_bn`` weights map one to one.

    Parameters
    ----------
    input_shape : (n_samples,)
        Samples per example; ``self.n_samples``.
    **mel
        Settings that replace those of ``mel_defaults``.
    """

    #: the model's name in error messages, as the registry and ``--model`` spell it
    registry_name: ClassVar[str]
    #: the paper's front end
    mel_defaults: ClassVar[MelFrontend] = MelFrontend()

    def __init__(self, input_shape: Sequence[int], **mel: Any) -> None:
        super().__init__()
        (self.n_samples,) = check_input_shape(input_shape, axes=("n_samples",), model=self.registry_name)
        try:
            self.mel = self.mel_defaults.replace(**mel)
        except MuzarrError as err:
            raise MuzarrError(f"model {self.registry_name!r}: {err}") from None

    def _require_one_frame(self) -> None:
        """Refuse an input shorter than one FFT window."""
        if self.n_samples < self.mel.n_fft:
            raise MuzarrError(
                f"{self.registry_name}: input_shape={(self.n_samples,)} is shorter than one frame "
                f"(n_fft={self.mel.n_fft})"
            )

    def _add_log_mel(self) -> None:
        """Create the front end of ``self.mel``; called once the model has checked its settings."""
        self.spec = MelSpectrogram(**self.mel.options())
        self.to_db = AmplitudeToDB()
        self.spec_bn = nn.BatchNorm2d(1)

    def _log_mel_shape(self) -> tuple[int, int, int]:
        """Per-example shape of what :meth:`_log_mel` returns: ``(1, n_mels, n_frames)``."""
        return (1, self.mel.n_mels, n_frames(self.n_samples, hop_length=self.mel.hop_length))

    def _log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """``x [shape=(B, n_samples)]`` → ``[shape=(B, 1, n_mels, n_frames)]``."""
        return self.spec_bn(self.to_db(self.spec(x)).unsqueeze(1))
