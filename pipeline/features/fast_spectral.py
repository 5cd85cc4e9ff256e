"""Fast, exact building blocks for librosa-compatible spectral features.

Every function here computes the same quantity as the librosa 0.11 call named in its
docstring, from one shared STFT, with the same float32/float64 choices, so results agree
with librosa to float rounding. Spectrograms are laid out ``[shape=(n_frames, n_bins)]``
(time first, the transpose of librosa's), because that is the order ``rfft`` produces and
the order the time-axis median filter wants in memory.

The only compiled code is :func:`_slide_median` (numba, ``nogil``). It is deliberately
not ``cache=True``: numba's on-disk cache races when several Dask workers compile at once
(librosa #1998, numba #10128), so each process compiles it once (about a second) instead.
For the same reason nothing here calls librosa's own cached numba kernels (``piptrack``'s
parabolic interpolation, ``zero_crossings``, ``istft``'s overlap-add).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.signal

from pipeline.errors import MuzarrError

N_FFT = 2048
HOP_LENGTH = 512
_HANN = scipy.signal.get_window("hann", N_FFT, fftbins=True)  # float64, as librosa.filters.get_window
_TINY32 = np.finfo(np.float32).tiny
# Frames per rfft/irfft call: big enough to amortise the call, small enough to stay in cache.
_BLOCK_FRAMES = 256


def check_waveform(y: np.ndarray) -> np.ndarray:
    """Return ``y`` as a contiguous float32 1-D array, or raise :class:`MuzarrError`.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        A mono waveform with at least one sample, all finite.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise MuzarrError(f"expected a mono waveform of shape (n,), got shape {y.shape}")
    if y.size == 0:
        raise MuzarrError("expected at least one sample, got an empty waveform")
    if not np.issubdtype(y.dtype, np.floating):
        raise MuzarrError(f"expected a floating-point waveform, got dtype {y.dtype}")
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not np.isfinite(y).all():
        bad = int(np.flatnonzero(~np.isfinite(y))[0])
        raise MuzarrError(f"waveform has a non-finite value {y[bad]} at sample {bad}; clean or skip the clip")
    return y


def n_frames(n_samples: int, *, hop_length: int = HOP_LENGTH) -> int:
    """Frames of a centred STFT or framing of ``n_samples`` samples: ``1 + n // hop``."""
    return 1 + n_samples // hop_length


def stft(y: np.ndarray) -> np.ndarray:
    """``librosa.stft(y).T``: centred, zero-padded, Hann, n_fft 2048, hop 512.

    Like librosa, frames are windowed in float64 and transformed with ``scipy.fft``, and
    the result is stored as complex64 (the complex type matching float32 input).

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]

    Returns
    -------
    np.ndarray [shape=(1 + n // 512, 1025), dtype=complex64]
    """
    padded = np.pad(y, N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    out = np.empty((frames.shape[0], N_FFT // 2 + 1), dtype=np.complex64)
    for start in range(0, frames.shape[0], _BLOCK_FRAMES):
        stop = start + _BLOCK_FRAMES
        out[start:stop] = scipy.fft.rfft(frames[start:stop] * _HANN, axis=-1)
    return out


def _overlap_add(frames: np.ndarray, out: np.ndarray, *, weights: np.ndarray) -> None:
    """Add ``frames * weights`` (hop 512 = n_fft / 4) into ``out`` in increasing frame order.

    ``frames`` has shape (..., count, 2048) (count may be 1 and broadcast); ``out`` has
    shape (..., count + 3, 512): block ``b`` receives quarter ``k`` of frame ``b - k``.
    Adding quarters k = 3, 2, 1, 0 adds frames in increasing order, the order in which
    librosa's sequential overlap-add rounds (float64 products into a float32 sum).
    """
    count = out.shape[-2] - 3
    for k in (3, 2, 1, 0):
        quarter = slice(k * HOP_LENGTH, (k + 1) * HOP_LENGTH)
        target = out[..., k : k + count, :]
        np.add(target, frames[..., quarter] * weights[quarter], out=target, casting="unsafe")


def istft(spectrogram: np.ndarray, *, length: int) -> np.ndarray:
    """``librosa.istft(spectrogram.T, length=length, dtype=np.float32)`` for n_fft 2048, hop 512.

    Parameters
    ----------
    spectrogram : np.ndarray [shape=(..., n_frames, 1025), dtype=complex64]
    length : int
        Samples of the original signal.

    Returns
    -------
    np.ndarray [shape=(..., length), dtype=float32]
    """
    count = spectrogram.shape[-2]
    lead = spectrogram.shape[:-2]
    blocks = np.zeros((*lead, count + 3, HOP_LENGTH), dtype=np.float32)
    for start in range(0, count, _BLOCK_FRAMES):
        stop = min(start + _BLOCK_FRAMES, count)
        frames = scipy.fft.irfft(spectrogram[..., start:stop, :], n=N_FFT, axis=-1)
        _overlap_add(frames, blocks[..., start : stop + 3, :], weights=_HANN)
    # librosa.filters.window_sumsquare, accumulated the same way.
    envelope = np.zeros((count + 3, HOP_LENGTH), dtype=np.float32)
    _overlap_add(np.ones((1, N_FFT)), envelope, weights=_HANN**2)
    y = blocks.reshape(*lead, -1)[..., N_FFT // 2 : N_FFT // 2 + length]
    envelope = envelope.reshape(-1)[N_FFT // 2 : N_FFT // 2 + length]
    nonzero = envelope > _TINY32
    y[..., nonzero] /= envelope[nonzero]
    return np.ascontiguousarray(y)


@numba.njit(nogil=True)
def _slide_median(padded: np.ndarray, width: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Running median of ``width`` rows, independently for every column (lane).

    ``padded`` is [shape=(n + width - 1, lanes)], ``out`` [shape=(n, lanes)]. Each lane
    keeps its window sorted. Sliding replaces ``old`` by ``new`` with a branch-free merge
    that the compiler vectorises across lanes: dropping ``old`` from sorted ``w`` gives
    ``r[j] = w[j] if w[j] < old else w[j + 1]``, and inserting ``new`` gives
    ``w'[j] = max(r[j - 1], min(r[j], new))``. The median is read exactly, no approximation.
    """
    n_out, lanes = out.shape
    half = width // 2
    window = np.empty((width, lanes), dtype=padded.dtype)
    carry = np.empty(lanes, dtype=padded.dtype)
    for lane in range(lanes):
        for j in range(width):
            value = padded[j, lane]
            i = j - 1
            while i >= 0 and window[i, lane] > value:
                window[i + 1, lane] = window[i, lane]
                i -= 1
            window[i + 1, lane] = value
        out[0, lane] = window[half, lane]
    for t in range(1, n_out):
        old = padded[t - 1]
        new = padded[t + width - 1]
        for lane in range(lanes):
            w0 = window[0, lane]
            r = w0 if w0 < old[lane] else window[1, lane]
            n = new[lane]
            window[0, lane] = r if r < n else n
            carry[lane] = r
        for j in range(1, width - 1):
            for lane in range(lanes):
                wj = window[j, lane]
                r = wj if wj < old[lane] else window[j + 1, lane]
                n = new[lane]
                m = r if r < n else n
                c = carry[lane]
                window[j, lane] = c if c > m else m
                carry[lane] = r
        for lane in range(lanes):
            c = carry[lane]
            n = new[lane]
            window[width - 1, lane] = c if c > n else n
        for lane in range(lanes):
            out[t, lane] = window[half, lane]


def _reflect_index(n: int, half: int) -> np.ndarray:
    """Indices of ``x`` extended by ``half`` on each side in scipy.ndimage's ``reflect`` mode."""
    extended = np.mod(np.arange(-half, n + half), 2 * n)
    return np.where(extended < n, extended, 2 * n - 1 - extended)


def median_filter_rows(x: np.ndarray, *, width: int = 31, lanes_per_block: int = 128) -> np.ndarray:
    """``scipy.ndimage.median_filter(x, size=(width, 1), mode="reflect")``, exactly, fast.

    Parameters
    ----------
    x : np.ndarray [shape=(n, m), dtype=float32]
        Filtered along axis 0 (n), independently for each of the m columns. Must be
        finite (NaN has no place in a sorted window).
    width : int
        Odd window length.

    Returns
    -------
    np.ndarray [shape=(n, m), dtype=float32]
    """
    if width % 2 != 1 or width < 1:
        raise MuzarrError(f"median width={width} must be a positive odd integer")
    n = x.shape[0]
    if n < width:
        # Windows wider than the data reflect more than once; scipy is cheap at this size
        # and defines the edge behaviour we must match.
        return scipy.ndimage.median_filter(x, size=(width, 1), mode="reflect")
    rows = _reflect_index(n, width // 2)
    out = np.empty_like(x)
    block_out = np.empty((n, lanes_per_block), dtype=x.dtype)
    for start in range(0, x.shape[1], lanes_per_block):
        stop = min(start + lanes_per_block, x.shape[1])
        padded = np.ascontiguousarray(x[rows, start:stop])
        target = block_out[:, : stop - start]
        _slide_median(padded, width, target)
        out[:, start:stop] = target
    return out


def hpss_masks(magnitude: np.ndarray, *, kernel_size: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """The soft masks of ``librosa.decompose.hpss`` (margin 1, power 2).

    Parameters
    ----------
    magnitude : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        ``|STFT|``.

    Returns
    -------
    mask_harmonic, mask_percussive : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        Sum to 1; both 0.5 where both median-filtered spectra vanish (librosa's
        ``split_zeros``).
    """
    harmonic = median_filter_rows(magnitude, width=kernel_size)  # along time
    percussive = median_filter_rows(np.ascontiguousarray(magnitude.T), width=kernel_size).T  # along frequency
    # util.softmask, in the same float32 steps.
    scale = np.maximum(harmonic, percussive)
    silent = scale < _TINY32
    scale[silent] = 1
    mask_harmonic = (harmonic / scale) ** 2
    mask_percussive = (percussive / scale) ** 2
    total = mask_harmonic + mask_percussive
    total[silent] = 1
    mask_harmonic /= total
    mask_percussive /= total
    mask_harmonic[silent] = 0.5
    mask_percussive[silent] = 0.5
    return mask_harmonic, mask_percussive


def hpss_waveforms(spectrogram: np.ndarray, magnitude: np.ndarray, *, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``librosa.effects.hpss(y)`` from ``y``'s STFT: harmonic and percussive waveforms.

    Parameters
    ----------
    spectrogram : np.ndarray [shape=(n_frames, 1025), dtype=complex64]
    magnitude : np.ndarray [shape=(n_frames, 1025), dtype=float32]
        ``np.abs(spectrogram)``.
    length : int

    Returns
    -------
    harmonic, percussive : np.ndarray [shape=(length,), dtype=float32]
    """
    mask_harmonic, mask_percussive = hpss_masks(magnitude)
    parts = np.empty((2, *spectrogram.shape), dtype=np.complex64)
    np.multiply(spectrogram, mask_harmonic, out=parts[0])
    np.multiply(spectrogram, mask_percussive, out=parts[1])
    harmonic, percussive = istft(parts, length=length)
    return harmonic, percussive


def _frame_block_sums(values: np.ndarray, count: int) -> np.ndarray:
    """Sums of ``values`` over frames of 2048 at hop 512, via 512-sample block sums."""
    blocks = np.zeros((count + 3) * HOP_LENGTH, dtype=values.dtype)
    used = min(values.size, blocks.size)
    blocks[:used] = values[:used]
    sums = blocks.reshape(-1, HOP_LENGTH).sum(axis=1)
    return sums[0:count] + sums[1 : count + 1] + sums[2 : count + 2] + sums[3 : count + 3]


def rms(y: np.ndarray) -> np.ndarray:
    """``librosa.feature.rms(y=y)[0]``: centred (zero-padded) frames of 2048 at hop 512.

    Sums are accumulated in float64, a little more precisely than librosa's float32 mean.

    Returns
    -------
    np.ndarray [shape=(1 + n // 512,), dtype=float64]
    """
    count = n_frames(y.size)
    squares = np.pad(y.astype(np.float64) ** 2, N_FFT // 2)
    return np.sqrt(_frame_block_sums(squares, count) / N_FFT)


def zero_crossing_rate(y: np.ndarray, *, threshold: float = 1e-10) -> np.ndarray:
    """``librosa.feature.zero_crossing_rate(y)[0]``: edge-padded frames of 2048 at hop 512.

    A crossing is a change of sign bit between neighbours within a frame, after values of
    magnitude at most ``threshold`` are set to +0.

    Returns
    -------
    np.ndarray [shape=(1 + n // 512,), dtype=float64]
    """
    count = n_frames(y.size)
    negative = np.pad(y, N_FFT // 2, mode="edge") < -threshold
    # crossing[j]: sign change between samples j and j + 1; a frame starting at s counts
    # crossing[s : s + 2047], i.e. its 2048-block sum minus the pair that leaves the frame.
    crossing = np.zeros(negative.size, dtype=np.int64)
    crossing[:-1] = negative[1:] != negative[:-1]
    last_pair = crossing[np.arange(count) * HOP_LENGTH + N_FFT - 1]
    return (_frame_block_sums(crossing, count) - last_pair) / N_FFT


def spectral_shape(magnitude: np.ndarray, *, sr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectral centroid, bandwidth (p=2) and 85 % rolloff of ``|STFT|``, per frame.

    Same as ``librosa.feature.spectral_centroid / spectral_bandwidth / spectral_rolloff``
    with default arguments. Centroid and bandwidth come from the first three moments in
    one float64 matrix product: ``sum(S (f - c)^2) / sum(S) = m2 / m0 - c^2``.

    Parameters
    ----------
    magnitude : np.ndarray [shape=(n_frames, 1025), dtype=float32]

    Returns
    -------
    centroid, bandwidth, rolloff : np.ndarray [shape=(n_frames,), dtype=float64]
    """
    freq = np.fft.rfftfreq(N_FFT, d=1.0 / sr)  # librosa.fft_frequencies
    moments = magnitude.astype(np.float64) @ np.stack([np.ones_like(freq), freq, freq**2], axis=1)
    total = moments[:, 0]
    silent = total < _TINY32  # librosa.util.normalize leaves these frames unscaled (all ~0)
    total = np.where(silent, 1.0, total)
    centroid = moments[:, 1] / total
    bandwidth = np.sqrt(np.maximum(moments[:, 2] / total - centroid**2, 0.0))
    # librosa: first bin whose float32 running sum reaches 0.85 of the frame's total.
    running = np.cumsum(magnitude, axis=1)
    threshold = np.float32(0.85) * running[:, -1:]
    rolloff = freq[np.argmax(running >= threshold, axis=1)]
    return centroid, bandwidth, rolloff


def estimate_tuning(power: np.ndarray, *, sr: float, bins_per_octave: int = 12) -> float:
    """``librosa.estimate_tuning(S=power.T, sr=sr)``: what ``chroma_stft`` tunes its filters by.

    A numpy transcription of ``librosa.piptrack`` (defaults: fmin 150 Hz, fmax 4 kHz,
    threshold 0.1 of each frame's peak) followed by ``librosa.pitch_tuning``.

    Parameters
    ----------
    power : np.ndarray [shape=(n_frames, 1025), dtype=float32]
        ``|STFT|**2`` (chroma_stft hands piptrack the power spectrogram).

    Returns
    -------
    float
        Tuning deviation in fractions of a bin, in [-0.5, 0.5).
    """
    import librosa  # noqa: PLC0415 - heavy; only needed here and at call time

    freq = np.fft.rfftfreq(N_FFT, d=1.0 / sr)
    band = np.flatnonzero((150.0 <= freq) & (freq < min(4000.0, sr / 2)))
    lo, hi = band[0], band[-1] + 1  # fmin > 0 and fmax < sr/2 keep both neighbours in range
    thresholded = power * (power > 0.1 * power.max(axis=1, keepdims=True))
    centre = thresholded[:, lo:hi]
    peaks = (centre > thresholded[:, lo - 1 : hi - 1]) & (centre >= thresholded[:, lo + 1 : hi + 1])
    frame_idx, bin_offset = np.nonzero(peaks)
    bins = bin_offset + lo
    below, at, above = power[frame_idx, bins - 1], power[frame_idx, bins], power[frame_idx, bins + 1]
    # librosa's parabolic-interpolation stencil: float32 sums, float64 arithmetic after.
    a = (above + below).astype(np.float64) - 2 * at.astype(np.float64)
    b = (above - below).astype(np.float64) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(np.abs(b) >= np.abs(a), 0.0, -b / a).astype(np.float32)
    pitch = ((bins + shift) * float(sr) / N_FFT).astype(np.float32)
    gradient = (above - below) / np.float32(2.0)  # np.gradient, interior points
    mag = at + np.float32(0.5) * gradient * shift
    voiced = pitch > 0
    threshold = np.median(mag[voiced]) if voiced.any() else 0.0
    return float(librosa.pitch_tuning(pitch[(mag >= threshold) & voiced], bins_per_octave=bins_per_octave))
