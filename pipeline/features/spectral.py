"""Waveform and log-mel features.

The log-mel is librosa's computation (centred, zero-padded frames, periodic Hann window,
power 2, Slaney mel filters, ``power_to_db``) in float32, a block of frames at a time so that
the frames, their spectra and their mel projection stay in the CPU cache, with the log, the
padding and the cast done in place. It agrees with ``librosa.feature.melspectrogram`` to ~1e-4
dB and takes about half of its time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.fft

from pipeline.audio import float_to_int16, int16_overflow
from pipeline.errors import MuzarrError
from pipeline.features.base import Feature, n_frames, register


@register
@dataclasses.dataclass(frozen=True)
class Waveform(Feature):
    """The clip itself at ``sample_rate``; int16 by default (exact for PCM16 sources, half of float32)."""

    kind: ClassVar[str] = "waveform"
    axes: ClassVar[tuple[str, ...]] = ("time",)
    sample_rate: int = 16000
    storage: Literal["int16", "float32"] = "int16"

    def __post_init__(self) -> None:
        _check_positive_int("sample_rate", self.sample_rate)
        if self.storage not in ("int16", "float32"):
            raise MuzarrError(f"waveform storage={self.storage!r} must be 'int16' or 'float32'")

    @property
    def variant(self) -> str:
        return "waveform"

    def frame_rate(self) -> float:
        return float(self.sample_rate)

    @property
    def dtype(self) -> str:
        return self.storage

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        return (n_samples,)

    def extract(self, samples: np.ndarray, *, sampling_rate: int) -> np.ndarray:
        self.check_rate(sampling_rate)
        return float_to_int16(samples) if self.storage == "int16" else samples.astype(np.float32)

    def storage_note(self, samples: np.ndarray) -> str | None:
        # A decoded MP3 or a resampled loud master can overshoot full scale; int16 cannot hold it.
        clipped = int16_overflow(samples) if self.storage == "int16" else 0
        if not clipped:
            return None
        peak = float(np.abs(samples).max())
        return (
            f"{clipped} sample(s) beyond ±1 (peak {peak:.3f}) clipped by int16 storage; "
            "--waveform storage=float32 keeps them"
        )

    def attrs(self) -> dict[str, Any]:
        # scale_factor is the CF convention (xarray decodes int16 to float32 in [-1, 1] by it);
        # "scale" is what stores before it carried and their readers look for.
        scale = {"scale": 1 / 32768, "scale_factor": 1 / 32768} if self.storage == "int16" else {}
        return {"sample_rate": self.sample_rate, **scale}


@register
@dataclasses.dataclass(frozen=True)
class LogMel(Feature):
    """Log-scaled mel spectrogram ``[shape=(n_mels, n_frames + 2 * pad_frames)]``.

    Parameters follow ``librosa.feature.melspectrogram`` (centred frames, zero padding,
    periodic Hann window, power 2, Slaney filters). ``log="db"`` is ``librosa.power_to_db``
    with ``ref=1.0``, ``amin=1e-10`` and ``top_db``; ``log="log1p"`` is ``log(1 + C·x)`` with
    ``C = log_compression``. ``pad_frames`` frames of zeros are added at both ends of time
    *after* the log, as the Choi CRNN of seed 001 was trained with (37 frames).
    """

    kind: ClassVar[str] = "logmel"
    group: ClassVar[str] = "logmel"
    axes: ClassVar[tuple[str, ...]] = ("mel", "frame")
    sample_rate: int = 16000
    n_mels: int = 96
    n_fft: int = 512
    hop_length: int = 256
    f_min: float = 0.0
    f_max: float | None = None
    log: Literal["db", "log1p"] = "db"
    top_db: float | None = 80.0
    log_compression: float = 10000.0
    pad_frames: int = 0
    storage: Literal["float16", "float32"] = "float16"

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length"):
            _check_positive_int(name, getattr(self, name))
        if not isinstance(self.pad_frames, int) or self.pad_frames < 0:
            raise MuzarrError(f"logmel pad_frames={self.pad_frames!r} must be a non-negative integer")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= nyquist:
            raise MuzarrError(
                f"logmel needs 0 <= f_min < f_max <= sample_rate/2; got f_min={self.f_min}, "
                f"f_max={self.f_max}, sample_rate={self.sample_rate}"
            )
        if self.log not in ("db", "log1p"):
            raise MuzarrError(f"logmel log={self.log!r} must be 'db' or 'log1p'")
        if self.storage not in ("float16", "float32"):
            raise MuzarrError(f"logmel storage={self.storage!r} must be 'float16' or 'float32'")

    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def variant(self) -> str:
        name = f"mel{self.n_mels}_sr{self.sample_rate}_fft{self.n_fft}_hop{self.hop_length}"
        if self.f_min:
            name += f"_fmin{_num(self.f_min)}"
        if self.f_max is not None:
            name += f"_fmax{_num(self.f_max)}"
        if self.log != "db":
            name += f"_log1p{_num(self.log_compression)}"
        elif self.top_db != 80.0:
            name += f"_topdb{_num(self.top_db) if self.top_db is not None else 'none'}"
        if self.pad_frames:
            name += f"_pad{self.pad_frames}"
        return name

    @property
    def dtype(self) -> str:
        return self.storage

    def n_frames(self, n_samples: int) -> int:
        return n_frames(n_samples, hop_length=self.hop_length, pad_frames=self.pad_frames)

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        return (self.n_mels, self.n_frames(n_samples))

    def extract(self, samples: np.ndarray, *, sampling_rate: int) -> np.ndarray:
        self.check_rate(sampling_rate)
        # samples far beyond full scale overflow float32: the build refuses non-finite values itself, in one line
        with np.errstate(over="ignore", invalid="ignore"):
            return self._extract(samples)

    def _extract(self, samples: np.ndarray) -> np.ndarray:
        power = mel_power(
            samples,
            sr=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            f_min=self.f_min,
            f_max=self.f_max,
        )
        if self.log == "db":
            logged = power_to_db(power, top_db=self.top_db, out=power)
        else:
            logged = np.log1p(np.multiply(power, np.float32(self.log_compression), out=power), out=power)
        pad = self.pad_frames
        out = np.zeros((*logged.shape[:-1], logged.shape[-1] + 2 * pad), dtype=self.storage)
        out[..., pad : pad + logged.shape[-1]] = logged
        return out

    def attrs(self) -> dict[str, Any]:
        return self.to_dict()

    def check_computable(self) -> None:
        """Refuse parameters that fail, or silently waste, every clip (see :meth:`Feature.check_computable`)."""
        where = f"feature {self.name}"
        if self.n_fft % 2:
            # centred frames take n_fft // 2 samples of padding each side: an odd n_fft gives one frame
            # fewer than the 1 + n // hop every store and model plans with
            raise MuzarrError(f"{where}: n_fft={self.n_fft} must be even (a power of two is fastest), e.g. n_fft={self.n_fft + 1}")
        if self.n_fft > MAX_N_FFT:
            raise MuzarrError(
                f"{where}: n_fft={self.n_fft} is more than {MAX_N_FFT} samples per frame "
                f"({MAX_N_FFT / self.sample_rate:.1f} s at {self.sample_rate} Hz): choose a smaller n_fft"
            )
        if self.hop_length > self.n_fft:
            raise MuzarrError(
                f"{where}: hop_length={self.hop_length} is longer than n_fft={self.n_fft}: frames would skip "
                f"{self.hop_length - self.n_fft} samples between them; use hop_length <= n_fft (n_fft / 2 or n_fft / 4 is usual)"
            )
        if self.log == "db" and self.top_db is not None and not (math.isfinite(self.top_db) and self.top_db > 0):
            raise MuzarrError(
                f"{where}: top_db={self.top_db:g} must be a positive number of dB (the range kept below each clip's "
                "peak), or none for no floor"
            )
        edges = mel_edges(self.sample_rate, self.n_mels, self.f_min, self.f_max)
        empty = empty_mel_bands(self.sample_rate, self.n_fft, edges)
        if empty:
            most = largest_n_mels(self.sample_rate, self.n_fft, self.f_min, self.f_max)
            f_max = self.sample_rate / 2 if self.f_max is None else self.f_max
            raise MuzarrError(
                f"{where}: n_mels={self.n_mels} leaves {empty} mel band(s) empty (no FFT bin of n_fft={self.n_fft} at "
                f"{self.sample_rate} Hz falls inside them, between {self.f_min:g} and {f_max:g} Hz): use n_mels <= {most}, "
                "or a larger n_fft"
            )
        if self.log == "log1p":
            most = max_log_compression(self.sample_rate, self.n_fft, edges)
            if not (math.isfinite(self.log_compression) and 0 < self.log_compression <= most):
                raise MuzarrError(
                    f"{where}: log_compression={self.log_compression:g} must be a positive number no larger than "
                    f"{most:.3g}, which keeps log(1 + C·x) finite in float32 for samples up to ±{HEADROOM:g} "
                    f"(n_fft={self.n_fft})"
                )


#: the longest frame a log-mel takes (4.1 s at 16 kHz): a frame, its spectrum and its filter bank stay in memory
MAX_N_FFT = 1 << 16
#: the sample magnitude a log-mel's log1p must stay finite for (decoded MP3s and float WAVs overshoot ±1)
HEADROOM = 4.0


def mel_edges(sr: int, n_mels: int, f_min: float, f_max: float | None) -> np.ndarray:
    """The ``n_mels + 2`` corner frequencies of the Slaney filter bank :func:`mel_basis` builds (librosa's own)."""
    import librosa

    return librosa.mel_frequencies(n_mels + 2, fmin=f_min, fmax=sr / 2 if f_max is None else f_max, htk=False)


def empty_mel_bands(sr: int, n_fft: int, edges: np.ndarray) -> int:
    """How many bands of the filter bank with corners ``edges`` (:func:`mel_edges`) hold no FFT bin of ``n_fft``.

    librosa's band ``m`` weighs bin ``f`` by ``max(0, min(f - e[m], e[m+2] - f))`` (scaled): it is
    empty, all zeros in every clip, when no bin lies strictly between ``e[m]`` and ``e[m + 2]``.
    Counted from the corners, without building the bank (n_mels x n_fft / 2 weights).
    """
    bins = np.arange(n_fft // 2 + 1) * (sr / n_fft)  # librosa.fft_frequencies
    inside = np.searchsorted(bins, edges[2:], side="left") - np.searchsorted(bins, edges[:-2], side="right")
    return int((inside <= 0).sum())


def largest_n_mels(sr: int, n_fft: int, f_min: float, f_max: float | None) -> int:
    """The most mel bands with no empty one (:func:`empty_mel_bands`) for ``n_fft`` at ``sr``."""
    lo, hi = 1, 2 * (n_fft // 2 + 1)  # a bin lies inside at most two triangles: no more bands can all be filled
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if empty_mel_bands(sr, n_fft, mel_edges(sr, mid, f_min, f_max)):
            hi = mid - 1
        else:
            lo = mid
    while lo > 1 and empty_mel_bands(sr, n_fft, mel_edges(sr, lo, f_min, f_max)):
        lo -= 1  # bands narrow as n_mels grows, but their corners move: make sure of the one named
    return lo


def max_log_compression(sr: int, n_fft: int, edges: np.ndarray) -> float:
    """The largest ``C`` for which ``C`` times any mel band's power stays below float32's maximum.

    ``|X_k|`` is at most the window's sum (``n_fft / 2`` for the periodic Hann) times the largest
    sample, :data:`HEADROOM`; a band's power is at most its weights' sum times the largest ``|X_k|²``,
    and a Slaney band (a triangle of area 1 and height ``2 / (e[m+2] - e[m])``) sums to at most
    ``2 n_fft / sr`` plus its height.
    """
    weight = 2 * n_fft / sr + float((2 / (edges[2:] - edges[:-2])).max())
    return float(np.finfo(np.float32).max) / ((HEADROOM * n_fft / 2) ** 2 * weight)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MuzarrError(f"{name}={value!r} must be a positive integer")


def _num(value: float) -> str:
    return f"{value:g}"


@functools.lru_cache(maxsize=16)
def mel_basis(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None) -> np.ndarray:
    """librosa's Slaney mel filter bank ``[shape=(n_mels, 1 + n_fft // 2)]`` in float32."""
    import librosa  # imported here: the filter bank is built once per process

    with warnings.catch_warnings():
        # "Empty filters detected": a build refuses such a bank itself, in one line (LogMel.check_computable)
        warnings.simplefilter("ignore", UserWarning)
        return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int) -> np.ndarray:
    # scipy.signal.get_window("hann", n, fftbins=True): the periodic window librosa uses.
    n = np.arange(n_fft)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)).astype(np.float32)


def mel_power(
    y: np.ndarray,
    *,
    sr: int,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> np.ndarray:
    """``librosa.feature.melspectrogram`` (power 2) for ``[shape=(..., n)]`` → float32 ``(..., n_mels, frames)``.

    A block of frames at a time (~512 KiB of them): window into one reused buffer, real FFT,
    square the interleaved real and imaginary parts in place, and project them onto the mel
    filters (each filter row is repeated for the real and imaginary part, so
    ``re² · w + im² · w`` is the filter applied to ``|X|²``). Working on whole clips instead
    streams every intermediate through main memory and runs ~1.4x slower.

    The projection is one small product per group of 8 consecutive mel bands over only the
    bins their filters cover (:func:`_mel_groups`): the filter bank is ~97 % zeros, and a dense
    product spends most of its multiply-adds on them.
    """
    flat = y.reshape(-1, y.shape[-1])
    half = n_fft // 2
    padded = _workspace("padded", (flat.shape[0], flat.shape[1] + 2 * half))
    padded[:, :half] = 0
    padded[:, half : half + flat.shape[1]] = flat
    padded[:, half + flat.shape[1] :] = 0
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[:, ::hop_length]
    n_rows, n_frames = frames.shape[:2]
    window = _hann(n_fft)
    groups = _mel_groups(sr, n_fft, n_mels, f_min, f_max)
    out = np.zeros((n_rows, n_mels, n_frames), dtype=np.float32)  # bands with empty filters stay 0
    block = max(1, _BLOCK_BYTES // (4 * n_fft))
    work = _workspace("frames", (min(block, n_frames), n_fft))
    for row in range(n_rows):
        for start in range(0, n_frames, block):
            stop = min(n_frames, start + block)
            windowed = work[: stop - start]
            np.multiply(frames[row, start:stop], window, out=windowed)
            parts = scipy.fft.rfft(windowed, axis=-1, workers=1).view(np.float32)
            np.square(parts, out=parts)
            for first, last, lo, hi, weights in groups:
                np.matmul(weights, parts[:, lo:hi].T, out=out[row, first:last, start:stop])
    return out.reshape(*y.shape[:-1], n_mels, n_frames)


_BLOCK_BYTES = 1 << 19
_WORKSPACE = threading.local()


def _workspace(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 scratch buffer of this thread for ``(name, shape)``, reused from call to call.

    Fresh multi-megabyte arrays cost page faults on every clip; a build computes the same
    few shapes clip after clip.
    """
    buffers = getattr(_WORKSPACE, "buffers", None)
    if buffers is None or len(buffers) > 8:
        buffers = _WORKSPACE.buffers = {}
    key = (name, shape)
    if key not in buffers:
        buffers[key] = np.empty(shape, dtype=np.float32)
    return buffers[key]


@functools.lru_cache(maxsize=16)
def _mel_groups(
    sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None, size: int = 8
) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The filter bank cut into groups of ``size`` consecutive mel bands.

    Each group is ``(first band, last band + 1, lo, hi, weights)``: ``lo:hi`` is the range of
    interleaved (re, im) spectrum values its filters cover and ``weights`` the filters over
    that range, each bin's weight twice ``[shape=(bands, hi - lo)]``. Groups whose filters are
    all empty (librosa's "empty filters" at low rates) are left out: those bands are zero.
    """
    basis = mel_basis(sr, n_fft, n_mels, f_min, f_max)
    groups = []
    for first in range(0, n_mels, size):
        last = min(n_mels, first + size)
        covered = np.flatnonzero(basis[first:last].any(axis=0))
        if len(covered) == 0:
            continue
        lo, hi = int(covered[0]), int(covered[-1]) + 1
        weights = np.ascontiguousarray(np.repeat(basis[first:last, lo:hi], 2, axis=1))
        groups.append((first, last, 2 * lo, 2 * hi, weights))
    return tuple(groups)


def power_to_db(
    power: np.ndarray, *, top_db: float | None = 80.0, amin: float = 1e-10, out: np.ndarray | None = None
) -> np.ndarray:
    """``librosa.power_to_db(power, ref=1.0, amin=amin, top_db=top_db)`` per (sub-)clip, in float32.

    ``top_db`` is applied against each (sub-)clip's own maximum, exactly as calling librosa
    on that (sub-)clip would. ``out=power`` computes in place.
    """
    if top_db is not None and top_db < 0:
        raise MuzarrError(f"top_db={top_db} must be non-negative")
    db = np.maximum(power, np.float32(amin), out=out, dtype=np.float32)
    np.log10(db, out=db)
    db *= np.float32(10.0)
    if top_db is not None:
        peak = db.max(axis=(-2, -1), keepdims=True)
        np.maximum(db, peak - np.float32(top_db), out=db)
    return db
