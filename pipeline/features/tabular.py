"""Tabular clip features: GTZAN's 57 Kaggle columns and seed 003's summary statistics.

:func:`gtzan57` computes the same numbers as the straightforward librosa 0.11 code that
made Kaggle's ``features_30_sec.csv`` (``benchmarks/tabular_reference.py``), more than ten
times faster: one STFT feeds every spectral feature, the mel spectrogram feeds both the
MFCCs and the beat tracker's onset envelope, and HPSS uses an exact running median
(:mod:`pipeline.features.fast_spectral`) instead of ``scipy.ndimage.median_filter``.
Applied to 3-second segments it gives the rows of ``features_3_sec.csv``.

:func:`summary` computes seed 003's six feature families (MFCC, delta, delta-delta, STFT,
chroma, spectral contrast) as mean and standard deviation over time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import librosa
import numpy as np
import scipy.fft

from pipeline.errors import MuzarrError
from pipeline.features import fast_spectral as fs
from pipeline.features.base import Feature, register

_GTZAN_FRAME_FEATURES = (
    "chroma_stft",
    "rms",
    "spectral_centroid",
    "spectral_bandwidth",
    "rolloff",
    "zero_crossing_rate",
    "harmony",
    "perceptr",
)
N_MFCC = 20

#: The 57 feature columns of Kaggle's GTZAN ``features_30_sec.csv``, in file order
#: (the file adds ``filename`` and ``length`` before and ``label`` after).
GTZAN57_COLUMNS: tuple[str, ...] = (
    *(f"{name}_{stat}" for name in _GTZAN_FRAME_FEATURES for stat in ("mean", "var")),
    "tempo",
    *(f"mfcc{i}_{stat}" for i in range(1, N_MFCC + 1) for stat in ("mean", "var")),
)

#: Linear-frequency bands of the summary's ``stft`` family: bins 0..1023 of the 1025
#: (Nyquist dropped) in 16 bands of 64 bins, about 689 Hz each at 22050 Hz.
N_STFT_BANDS = 16
_SUMMARY_FAMILIES = (
    ("mfcc", N_MFCC),
    ("delta_mfcc", N_MFCC),
    ("delta2_mfcc", N_MFCC),
    ("stft_band", N_STFT_BANDS),
    ("chroma", 12),
    ("contrast", 7),
)

#: Columns of :func:`summary`: for each family and coefficient, mean then std over frames.
SUMMARY_COLUMNS: tuple[str, ...] = tuple(
    f"{family}{i}_{stat}" for family, size in _SUMMARY_FAMILIES for i in range(1, size + 1) for stat in ("mean", "std")
)

#: ``librosa.feature.delta`` (width 9, ``mode="interp"``) needs at least 9 frames.
SUMMARY_MIN_SAMPLES = 8 * fs.HOP_LENGTH


@functools.lru_cache(maxsize=8)
def _mel_basis(sr: float) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=2048).T``: [shape=(1025, 128), dtype=float32]."""
    return np.ascontiguousarray(librosa.filters.mel(sr=sr, n_fft=fs.N_FFT).T)


def _check_rate(sr: float) -> float:
    if not np.isscalar(sr) or not sr > 0:
        raise MuzarrError(f"sr={sr!r} must be a positive sampling rate in Hz")
    return float(sr)


class _Spectra:
    """The STFT of one clip and what every feature derives from it, each computed once."""

    def __init__(self, y: np.ndarray, sr: float, *, pad_mode: str) -> None:
        self.sr = sr
        self.complex = fs.stft(y, pad_mode=pad_mode)  # (frames, 1025) complex64
        self.magnitude = np.abs(self.complex)
        self.power = self.magnitude**2

    @functools.cached_property
    def chroma(self) -> np.ndarray:
        """``librosa.feature.chroma_stft(y=y, sr=sr, pad_mode=...).T``: [shape=(frames, 12), float32]."""
        tuning = fs.estimate_tuning(self.power, sr=self.sr)
        bank = librosa.filters.chroma(sr=self.sr, n_fft=fs.N_FFT, tuning=tuning)
        return librosa.util.normalize(self.power @ bank.T, norm=np.inf, axis=1)

    @functools.cached_property
    def mel_db(self) -> np.ndarray:
        """``power_to_db(melspectrogram(y=y, sr=sr)).T``: [shape=(frames, 128), float32].

        The same array feeds ``librosa.feature.mfcc`` and ``librosa.onset.onset_strength``
        (mel with fmax = sr / 2, power 2, dB with top_db 80), so it is computed once.
        """
        return librosa.power_to_db(self.power @ _mel_basis(self.sr))

    @functools.cached_property
    def mfcc(self) -> np.ndarray:
        """``librosa.feature.mfcc(y=y, sr=sr, pad_mode=...).T``: [shape=(frames, 20), float32]."""
        return scipy.fft.dct(self.mel_db, axis=1, type=2, norm="ortho")[:, :N_MFCC]

    def tempo(self) -> float:
        """``librosa.beat.beat_track``'s tempo in BPM (0.0 when there are no onsets).

        The onset envelope is ``onset_strength(..., aggregate=np.median)`` of this mel
        spectrogram, as ``beat_track`` computes it.
        """
        envelope = librosa.onset.onset_strength(S=self.mel_db.T, sr=self.sr, aggregate=np.median)
        if not envelope.any():  # beat_track's own shortcut for silence
            return 0.0
        return fs.tempo(envelope, sr=self.sr)


def gtzan57(y: np.ndarray, *, sr: float = 22050) -> np.ndarray:
    """GTZAN's 57 Kaggle features of one waveform, computed the way Kaggle's tables were.

    Equal, to float rounding, to ``benchmarks/tabular_reference.py::reference_gtzan57``:
    librosa defaults as they were up to librosa 0.9, which made ``features_30_sec.csv``
    and ``features_3_sec.csv`` (n_fft 2048, hop 512, Hann, centred frames with *reflect*
    padding for every STFT and for RMS, 20 MFCC from 128 mels, HPSS with kernel 31 whose
    waveforms end in ``n % 512`` zeros, ``beat_track`` tempo). librosa >= 0.10 pads with
    zeros instead, which moves 3-second rows by up to ~0.2 column std.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono waveform, float, finite, at least one sample.
    sr : float
        Sampling rate of ``y`` in Hz (the Kaggle tables used 22050).

    Returns
    -------
    np.ndarray [shape=(57,), dtype=float64]
        Columns :data:`GTZAN57_COLUMNS`: mean and population variance over frames (or
        samples, for ``harmony`` and ``perceptr``) of each frame feature, then tempo,
        then mean and variance of each MFCC.
    """
    y = fs.check_waveform(y)
    sr = _check_rate(sr)
    spectra = _Spectra(y, sr, pad_mode="reflect")
    centroid, bandwidth, rolloff = fs.spectral_shape(spectra.magnitude, sr=sr)
    harmony, perceptr = fs.hpss_waveforms(y, spectra.complex, spectra.magnitude)
    series = (
        spectra.chroma,
        fs.rms(y, pad_mode="reflect"),
        centroid,
        bandwidth,
        rolloff,
        fs.zero_crossing_rate(y),
        harmony,
        perceptr,
    )
    row: list[float] = []
    for values in series:
        row += _mean_var(values)
    row.append(spectra.tempo())
    for coefficient in spectra.mfcc.T:
        row += _mean_var(coefficient)
    return np.asarray(row, dtype=np.float64)


def _mean_var(values: np.ndarray) -> list[float]:
    return [float(np.mean(values, dtype=np.float64)), float(np.var(values, dtype=np.float64))]


def summary(y: np.ndarray, *, sr: float = 22050) -> np.ndarray:
    """Seed 003's six feature families, as mean and standard deviation over frames.

    All from one STFT (n_fft 2048, hop 512, Hann, centred, zero-padded), with librosa
    0.11 defaults:

    - ``mfcc``: 20 MFCC (``librosa.feature.mfcc``, 128 mels, dB, DCT-II ortho);
    - ``delta_mfcc``, ``delta2_mfcc``: ``librosa.feature.delta(mfcc, order=1 / 2)``
      (Savitzky-Golay, width 9);
    - ``stft_band``: the power spectrum's mean over 16 bands of 64 linear bins (bins
      0..1023, ~689 Hz each at 22050 Hz), in dB (``librosa.power_to_db``: ref 1,
      amin 1e-10, floor 80 dB below the clip's loudest band value);
    - ``chroma``: ``librosa.feature.chroma_stft`` (12 pitch classes from C, tuning
      estimated, each frame scaled to max 1);
    - ``contrast``: ``librosa.feature.spectral_contrast`` of ``|STFT|`` (6 octave bands
      from 200 Hz plus the residual band, 7 values).

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono waveform, float, finite, at least :data:`SUMMARY_MIN_SAMPLES` samples.
    sr : float
        Sampling rate of ``y`` in Hz.

    Returns
    -------
    np.ndarray [shape=(190,), dtype=float64]
        Columns :data:`SUMMARY_COLUMNS`.
    """
    y = fs.check_waveform(y)
    sr = _check_rate(sr)
    if y.size < SUMMARY_MIN_SAMPLES:
        raise MuzarrError(
            f"summary features need at least {SUMMARY_MIN_SAMPLES} samples (9 frames, for the "
            f"MFCC deltas), got {y.size}; use longer segments"
        )
    spectra = _Spectra(y, sr, pad_mode="constant")
    mfcc = spectra.mfcc.T  # librosa layout (20, frames) for delta along time
    bands = spectra.power[:, : N_STFT_BANDS * 64].reshape(-1, N_STFT_BANDS, 64).mean(axis=2)
    families = (
        mfcc,
        librosa.feature.delta(mfcc, order=1),
        librosa.feature.delta(mfcc, order=2),
        librosa.power_to_db(bands).T,
        spectra.chroma.T,
        librosa.feature.spectral_contrast(S=spectra.magnitude.T, sr=sr),
    )
    stats = [np.stack([f.mean(axis=1, dtype=np.float64), f.std(axis=1, dtype=np.float64)], axis=1) for f in families]
    return np.concatenate([s.ravel() for s in stats])


def _extract_rows(compute: Any, samples: np.ndarray, *, sr: float, width: int) -> np.ndarray:
    """Apply ``compute`` to every waveform along the last axis of ``samples``."""
    samples = np.asarray(samples)
    if samples.ndim < 1:
        raise MuzarrError(f"expected samples of shape (..., n_samples), got a scalar {samples!r}")
    flat = samples.reshape(-1, samples.shape[-1])
    out = np.empty((flat.shape[0], width), dtype=np.float32)
    for i, waveform in enumerate(flat):
        out[i] = compute(waveform, sr=sr)
    return out.reshape(*samples.shape[:-1], width)


@dataclasses.dataclass(frozen=True)
class _TabularSet(Feature):
    """A fixed list of named columns per clip or sub-clip, stored at ``tabular/<kind>``."""

    group: ClassVar[str] = "tabular"
    axes: ClassVar[tuple[str, ...]] = ("column",)
    columns: ClassVar[tuple[str, ...]] = ()
    min_samples: ClassVar[int] = 1

    sample_rate: int = 22050

    def __post_init__(self) -> None:
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise MuzarrError(f"{self.kind}: sample_rate={self.sample_rate!r} must be a positive integer")

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        if n_samples < self.min_samples:
            raise MuzarrError(f"{self.name}: needs at least {self.min_samples} samples per (sub-)clip, got {n_samples}")
        return (len(self.columns),)

    def attrs(self) -> dict[str, Any]:
        return {"columns": list(self.columns)}

    def compute(self, y: np.ndarray, *, sr: float) -> np.ndarray:
        raise NotImplementedError

    def extract(self, samples: np.ndarray, *, sampling_rate: int) -> np.ndarray:
        """[shape=(..., n_samples)] float32 -> [shape=(..., n_columns)] float32."""
        self.check_rate(sampling_rate)
        return _extract_rows(self.compute, samples, sr=self.sample_rate, width=len(self.columns))


@register
@dataclasses.dataclass(frozen=True)
class Gtzan57(_TabularSet):
    """GTZAN's 57 Kaggle features (``features_30_sec.csv`` columns) per clip or sub-clip.

    Stored at ``tabular/gtzan57`` as float32 ``[..., 57]``. Sub-clips cut as Kaggle cut
    them (66149 samples starting every 66150) give the rows of ``features_3_sec.csv``.
    """

    kind: ClassVar[str] = "gtzan57"
    columns: ClassVar[tuple[str, ...]] = GTZAN57_COLUMNS

    def compute(self, y: np.ndarray, *, sr: float) -> np.ndarray:
        return gtzan57(y, sr=sr)


@register
@dataclasses.dataclass(frozen=True)
class Summary(_TabularSet):
    """Seed 003's summary statistics (:func:`summary`) per clip or sub-clip.

    Stored at ``tabular/summary`` as float32 ``[..., 190]``.
    """

    kind: ClassVar[str] = "summary"
    columns: ClassVar[tuple[str, ...]] = SUMMARY_COLUMNS
    min_samples: ClassVar[int] = SUMMARY_MIN_SAMPLES

    def compute(self, y: np.ndarray, *, sr: float) -> np.ndarray:
        return summary(y, sr=sr)
