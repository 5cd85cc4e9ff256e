"""Fast, exact building blocks for librosa-compatible spectral features.

Every function here computes the same quantity as the librosa 0.11 call named in its
docstring, from one shared STFT, with the same float32/float64 choices, so results agree
with librosa to float rounding. Spectrograms are laid out ``[shape=(n_frames, n_bins)]``
(time first, the transpose of librosa's), because that is the order ``rfft`` produces and
the order the time-axis median filter wants in memory.

The compiled kernels (numba, ``nogil``: the exact running median, the soft mask, the
overlap-add, the spectral shape) are deliberately not ``cache=True``: numba's on-disk
cache races when several Dask workers compile at once (librosa #1998, numba #10128), so
each process compiles them once (one to a few seconds) instead. For the same reason
nothing here calls librosa's own disk-cached numba kernels (``piptrack``'s parabolic
interpolation, ``zero_crossings``, ``istft``'s overlap-add, ``util.abs2``).
"""

from __future__ import annotations

import functools

import librosa
import numba
import numpy as np
import scipy.fft
import scipy.signal

from pipeline.errors import MuzarrError
from pipeline.features.base import n_frames

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


def _check_pad_mode(pad_mode: str) -> None:
    if pad_mode not in ("constant", "reflect"):
        raise MuzarrError(f"pad_mode={pad_mode!r} must be 'constant' (librosa >= 0.10) or 'reflect' (librosa <= 0.9)")


def stft(y: np.ndarray, *, pad_mode: str = "constant") -> np.ndarray:
    """``librosa.stft(y, pad_mode=pad_mode).T``: centred, Hann, n_fft 2048, hop 512.

    Like librosa, frames are windowed in float64 and transformed with ``scipy.fft``, and
    the result is stored as complex64 (the complex type matching float32 input).

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
    pad_mode : {"constant", "reflect"}
        How the signal is extended by n_fft/2 at both ends: zeros (librosa's default
        since 0.10) or mirrored (its default before, which Kaggle's GTZAN tables used).

    Returns
    -------
    np.ndarray [shape=(1 + n // 512, 1025), dtype=complex64]
    """
    _check_pad_mode(pad_mode)
    padded = np.pad(y, N_FFT // 2, mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    out = np.empty((frames.shape[0], N_FFT // 2 + 1), dtype=np.complex64)
    for start in range(0, frames.shape[0], _BLOCK_FRAMES):
        stop = start + _BLOCK_FRAMES
        out[start:stop] = scipy.fft.rfft(frames[start:stop] * _HANN, axis=-1)
    return out


@numba.njit(nogil=True)
def _overlap_add(frames: np.ndarray, window: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[t * 512 + j] += frames[t, j] * window[j]``, frame by frame, like librosa.

    The product is float64 (float32 frame, float64 window) and each sum is rounded to
    float32, which is what librosa's ``y[...] += ifft_window * irfft(...)`` does.
    """
    count, width = frames.shape
    for t in range(count):
        base = t * HOP_LENGTH
        for j in range(width):
            out[base + j] = out[base + j] + frames[t, j] * window[j]


@functools.lru_cache(maxsize=8)
def _window_envelope(count: int) -> np.ndarray:
    """``librosa.filters.window_sumsquare`` for ``count`` Hann frames: float32, read-only.

    Block ``b`` of 512 samples receives quarter ``k`` of frame ``b - k``; adding k = 3..0
    adds frames in increasing order, float64 terms rounded into float32 as librosa does.
    """
    squared = _HANN**2
    blocks = np.zeros((count + 3, HOP_LENGTH), dtype=np.float32)
    for k in (3, 2, 1, 0):
        target = blocks[k : k + count]
        np.add(target, squared[k * HOP_LENGTH : (k + 1) * HOP_LENGTH], out=target, casting="unsafe")
    envelope = blocks.reshape(-1)
    envelope.flags.writeable = False
    return envelope


def istft(spectrogram: np.ndarray, *, length: int) -> np.ndarray:
    """``librosa.istft(spectrogram.T, length=length, dtype=np.float32)`` for n_fft 2048, hop 512.

    Parameters
    ----------
    spectrogram : np.ndarray [shape=(n_frames, 1025), dtype=complex64]
        Frames of a centred STFT of a signal of ``length`` samples.
    length : int

    Returns
    -------
    np.ndarray [shape=(length,), dtype=float32]
    """
    count = spectrogram.shape[0]
    padded = np.zeros(N_FFT + HOP_LENGTH * (count - 1), dtype=np.float32)
    for start in range(0, count, _BLOCK_FRAMES):
        frames = scipy.fft.irfft(spectrogram[start : start + _BLOCK_FRAMES], n=N_FFT, axis=-1)  # float32
        _overlap_add(frames, _HANN, padded[start * HOP_LENGTH :])
    y = padded[N_FFT // 2 : N_FFT // 2 + length]
    envelope = _window_envelope(count)[N_FFT // 2 : N_FFT // 2 + length]
    np.divide(y, envelope, out=y, where=envelope > _TINY32)
    return y


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
            window[0, lane] = min(r, n)
            carry[lane] = r
        for j in range(1, width - 1):
            for lane in range(lanes):
                wj = window[j, lane]
                r = wj if wj < old[lane] else window[j + 1, lane]
                n = new[lane]
                m = min(r, n)
                c = carry[lane]
                window[j, lane] = max(c, m)
                carry[lane] = r
        for lane in range(lanes):
            c = carry[lane]
            n = new[lane]
            window[width - 1, lane] = max(c, n)
        for lane in range(lanes):
            out[t, lane] = window[half, lane]


def _reflect_index(n: int, half: int) -> np.ndarray:
    """Indices of ``x`` extended by ``half`` on each side in scipy.ndimage's ``reflect`` mode."""
    extended = np.mod(np.arange(-half, n + half), 2 * n)
    return np.where(extended < n, extended, 2 * n - 1 - extended)


def median_filter(x: np.ndarray, *, width: int = 31, axis: int, lanes_per_block: int = 128) -> np.ndarray:
    """Exactly ``scipy.ndimage.median_filter(x, size=..., mode="reflect")`` along one axis, fast.

    Lines shorter than the window are extended by repeated reflection (period ``2 n``),
    the documented ``reflect`` rule. scipy 1.17 departs from it for lines of 2 or 3
    values, where its extension reads a stray value (sometimes NaN): a clip under 1536
    samples (3 STFT frames) is where muzarr's HPSS and librosa's can disagree.

    Parameters
    ----------
    x : np.ndarray [shape=(n, m), dtype=float32]
        Finite values (NaN has no place in a sorted window).
    width : int
        Odd window length.
    axis : {0, 1}
        Axis the window slides along; every line along it is filtered independently.

    Returns
    -------
    np.ndarray [shape=(n, m), dtype=float32]
    """
    if width % 2 != 1 or width < 1:
        raise MuzarrError(f"median width={width} must be a positive odd integer")
    if axis not in (0, 1):
        raise MuzarrError(f"median axis={axis} must be 0 or 1 for a 2-D array")
    length = x.shape[axis]
    taps = _reflect_index(length, width // 2)
    out = np.empty_like(x)
    # Lanes (the lines being filtered) must be the contiguous axis of the kernel's
    # input for it to vectorise; blocks of lanes keep each sorted window in L1 cache.
    n_lanes = x.shape[1 - axis]
    for start in range(0, n_lanes, lanes_per_block):
        stop = min(start + lanes_per_block, n_lanes)
        target = np.empty((length, stop - start), dtype=x.dtype)  # contiguous: one compiled variant
        if axis == 0:
            _slide_median(np.ascontiguousarray(x[taps, start:stop]), width, target)
            out[:, start:stop] = target
        else:
            _slide_median(np.ascontiguousarray(x[start:stop, taps].T), width, target)
            out[start:stop, :] = target.T
    return out


@numba.njit(nogil=True)
def _apply_soft_mask(  # pragma: no cover - compiled
    spectrogram: np.ndarray, keep: np.ndarray, other: np.ndarray, out: np.ndarray
) -> None:
    """``out = spectrogram * softmask(keep, other)``, complex64 arrays viewed as float32.

    The mask is ``librosa.util.softmask(keep, other, power=2, split_zeros=True)`` in the
    same float32 steps: ``z = max(k, o)``, ``(k/z)^2 / ((k/z)^2 + (o/z)^2)``, and 0.5 where
    ``z`` is below float32's smallest normal number. ``spectrogram`` and ``out`` are
    [shape=(frames, 2 * bins)] (real and imaginary parts interleaved).
    """
    frames, bins = keep.shape
    tiny = np.float32(_TINY32)
    for t in range(frames):
        for f in range(bins):
            k = keep[t, f]
            o = other[t, f]
            z = max(k, o)
            if z < tiny:
                mask = np.float32(0.5)
            else:
                a = k / z
                b = o / z
                a = a * a
                mask = a / (a + b * b)
            out[t, 2 * f] = spectrogram[t, 2 * f] * mask
            out[t, 2 * f + 1] = spectrogram[t, 2 * f + 1] * mask


def hpss_spectrograms(
    spectrogram: np.ndarray, magnitude: np.ndarray, *, kernel_size: int = 31, percussive: bool = True
) -> np.ndarray:
    """``librosa.decompose.hpss(D)`` (margin 1, power 2), in frames-first layout.

    Parameters
    ----------
    spectrogram : np.ndarray [shape=(n_frames, n_bins), dtype=complex64]
    magnitude : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        ``np.abs(spectrogram)``.
    kernel_size : int
        Median filter length, in frames (harmonic) and in bins (percussive).
    percussive : bool
        Also return the percussive part (else only the harmonic one).

    Returns
    -------
    np.ndarray [shape=(2 or 1, n_frames, n_bins), dtype=complex64]
        Harmonic (and percussive) spectrogram; the two sum to ``spectrogram``.
    """
    along_time = median_filter(magnitude, width=kernel_size, axis=0)
    along_frequency = median_filter(magnitude, width=kernel_size, axis=1)
    parts = np.empty((2 if percussive else 1, *spectrogram.shape), dtype=np.complex64)
    pairs = np.ascontiguousarray(spectrogram).view(np.float32)
    _apply_soft_mask(pairs, along_time, along_frequency, parts[0].view(np.float32))
    if percussive:
        _apply_soft_mask(pairs, along_frequency, along_time, parts[1].view(np.float32))
    return parts


def hpss_waveforms(y: np.ndarray, spectrogram: np.ndarray, magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic and percussive waveforms of ``y`` as librosa <= 0.9's ``effects.hpss`` made them.

    That version inverted each part with ``istft`` *without* ``length`` (which returns
    ``512 * (n_frames - 1)`` samples) and zero-padded the result to ``y.size``, so the last
    ``y.size % 512`` samples of both parts are zero; Kaggle's GTZAN tables include them.

    Only the harmonic part is inverted: the two soft masks sum to one and the centred
    Hann STFT at hop n_fft/4 reconstructs ``y`` exactly, so the percussive waveform
    ``istft(D * mask_p)`` equals ``y - istft(D * mask_h)`` up to float32 rounding.

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
    spectrogram : np.ndarray [shape=(1 + n // 512, 1025), dtype=complex64]
        ``stft(y)``.
    magnitude : np.ndarray [shape=(1 + n // 512, 1025), dtype=float32]
        ``np.abs(spectrogram)``.

    Returns
    -------
    harmonic, percussive : np.ndarray [shape=(n,), dtype=float32]
    """
    kept = HOP_LENGTH * (spectrogram.shape[0] - 1)
    harmonic = np.zeros(y.size, dtype=np.float32)
    percussive = np.zeros(y.size, dtype=np.float32)
    if kept > 0:
        harmonic[:kept] = istft(hpss_spectrograms(spectrogram, magnitude, percussive=False)[0], length=kept)
        np.subtract(y[:kept], harmonic[:kept], out=percussive[:kept])
    return harmonic, percussive


def _frame_block_sums(values: np.ndarray, count: int) -> np.ndarray:
    """Sums of ``values`` over frames of 2048 at hop 512, via 512-sample block sums."""
    blocks = np.zeros((count + 3) * HOP_LENGTH, dtype=values.dtype)
    used = min(values.size, blocks.size)
    blocks[:used] = values[:used]
    sums = blocks.reshape(-1, HOP_LENGTH).sum(axis=1)
    return sums[0:count] + sums[1 : count + 1] + sums[2 : count + 2] + sums[3 : count + 3]


def rms(y: np.ndarray, *, pad_mode: str = "constant") -> np.ndarray:
    """``librosa.feature.rms(y=y, pad_mode=pad_mode)[0]``: centred frames of 2048 at hop 512.

    Sums are accumulated in float64, a little more precisely than librosa's float32 mean.

    Returns
    -------
    np.ndarray [shape=(1 + n // 512,), dtype=float64]
    """
    _check_pad_mode(pad_mode)
    count = n_frames(y.size, hop_length=HOP_LENGTH)
    squares = np.pad(y, N_FFT // 2, mode=pad_mode).astype(np.float64) ** 2
    return np.sqrt(_frame_block_sums(squares, count) / N_FFT)


def zero_crossing_rate(y: np.ndarray, *, threshold: float = 1e-10) -> np.ndarray:
    """``librosa.feature.zero_crossing_rate(y)[0]``: edge-padded frames of 2048 at hop 512.

    A crossing is a change of sign bit between neighbours within a frame, after values of
    magnitude at most ``threshold`` are set to +0.

    Returns
    -------
    np.ndarray [shape=(1 + n // 512,), dtype=float64]
    """
    count = n_frames(y.size, hop_length=HOP_LENGTH)
    negative = np.pad(y, N_FFT // 2, mode="edge") < -threshold
    # crossing[j]: sign change between samples j and j + 1; a frame starting at s counts
    # crossing[s : s + 2047], i.e. its 2048-block sum minus the pair that leaves the frame.
    crossing = np.zeros(negative.size, dtype=np.int64)
    crossing[:-1] = negative[1:] != negative[:-1]
    last_pair = crossing[np.arange(count) * HOP_LENGTH + N_FFT - 1]
    return (_frame_block_sums(crossing, count) - last_pair) / N_FFT


@numba.njit(nogil=True)
def _spectral_shape_rows(  # pragma: no cover - compiled
    magnitude: np.ndarray, freq: np.ndarray, out: np.ndarray
) -> None:
    """Per frame: centroid, bandwidth (p=2) and 85 % rolloff frequency into ``out[t, :3]``."""
    frames, bins = magnitude.shape
    tiny = _TINY32
    for t in range(frames):
        m0 = 0.0
        m1 = 0.0
        m2 = 0.0
        running = np.float32(0.0)
        for f in range(bins):
            v = magnitude[t, f]
            weighted = v * freq[f]
            m0 += v
            m1 += weighted
            m2 += weighted * freq[f]
            running += v
        if m0 < tiny:  # librosa.util.normalize leaves such frames unscaled: all ~0
            m0 = 1.0
        centroid = m1 / m0
        spread = m2 / m0 - centroid * centroid
        out[t, 0] = centroid
        out[t, 1] = np.sqrt(spread) if spread > 0.0 else 0.0
        # librosa: the first bin whose float32 running sum reaches 0.85 of the float32 total.
        threshold = np.float32(0.85) * running
        running = np.float32(0.0)
        index = bins - 1
        for f in range(bins):
            running += magnitude[t, f]
            if running >= threshold:
                index = f
                break
        out[t, 2] = freq[index]


def spectral_shape(magnitude: np.ndarray, *, sr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectral centroid, bandwidth (p=2) and 85 % rolloff of ``|STFT|``, per frame.

    Same as ``librosa.feature.spectral_centroid / spectral_bandwidth / spectral_rolloff``
    with default arguments. Centroid and bandwidth come from the first three moments in
    float64: ``sum(S (f - c)^2) / sum(S) = m2 / m0 - c^2``, one pass instead of three.

    Parameters
    ----------
    magnitude : np.ndarray [shape=(n_frames, 1025), dtype=float32]
    sr : float

    Returns
    -------
    centroid, bandwidth, rolloff : np.ndarray [shape=(n_frames,), dtype=float64]
    """
    freq = np.fft.rfftfreq(N_FFT, d=1.0 / sr)  # librosa.fft_frequencies
    out = np.empty((magnitude.shape[0], 3), dtype=np.float64)
    _spectral_shape_rows(np.ascontiguousarray(magnitude), freq, out)
    return out[:, 0], out[:, 1], out[:, 2]


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
    freq = np.fft.rfftfreq(N_FFT, d=1.0 / sr)
    band = np.flatnonzero((150.0 <= freq) & (freq < min(4000.0, sr / 2)))
    if band.size == 0:  # sr below 300 Hz: no pitch range, librosa warns and returns 0
        return 0.0
    lo, hi = band[0], band[-1] + 1  # fmin > 0 and fmax < sr/2 keep both neighbours in range
    near = power[:, lo - 1 : hi + 1]  # the band and one neighbour either side
    thresholded = near * (near > 0.1 * power.max(axis=1, keepdims=True))
    centre = thresholded[:, 1:-1]
    peaks = (centre > thresholded[:, :-2]) & (centre >= thresholded[:, 2:])
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
    selected = pitch[(mag >= threshold) & voiced]
    if selected.size == 0:  # silence: librosa warns and returns 0
        return 0.0
    return float(librosa.pitch_tuning(selected, bins_per_octave=bins_per_octave))


def tempo(onset_envelope: np.ndarray, *, sr: float, start_bpm: float = 120.0) -> float:
    """``librosa.feature.tempo(onset_envelope=onset_envelope, sr=sr)``, the tempo ``beat_track`` reports.

    The same autocorrelation tempogram (8 s Hann windows centred on every frame, FFT
    length ``next_fast_len(2 * win - 1)``, each frame scaled to max 1, averaged over
    frames) and log-normal prior around ``start_bpm`` (1 octave std, nothing above
    320 BPM), laid out frames-first so the FFTs run along contiguous memory.

    Parameters
    ----------
    onset_envelope : np.ndarray [shape=(n_frames,)]
        ``librosa.onset.onset_strength(..., aggregate=np.median)``.

    Returns
    -------
    float
        Beats per minute.
    """
    win_length = int(librosa.time_to_frames(8.0, sr=sr, hop_length=HOP_LENGTH))
    count = onset_envelope.shape[-1]
    padded = np.pad(onset_envelope, win_length // 2, mode="linear_ramp", end_values=(0, 0))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win_length)[:count]
    windowed = frames * scipy.signal.get_window("hann", win_length, fftbins=True)
    n_pad = scipy.fft.next_fast_len(2 * win_length - 1, real=True)
    spectrum = scipy.fft.rfft(windowed, n=n_pad, axis=-1)
    autocorr = scipy.fft.irfft(spectrum.real**2 + spectrum.imag**2, n=n_pad, axis=-1)[:, :win_length]
    peak = np.abs(autocorr).max(axis=-1, keepdims=True)
    peak[peak < np.finfo(peak.dtype).tiny] = 1.0  # librosa.util.normalize leaves such frames as they are
    tempogram = (autocorr / peak).mean(axis=0)
    bpms = librosa.tempo_frequencies(win_length, hop_length=HOP_LENGTH, sr=sr)
    with np.errstate(divide="ignore"):  # bpms[0] is inf: lag 0
        logprior = -0.5 * ((np.log2(bpms) - np.log2(start_bpm)) / 1.0) ** 2
    logprior[: int(np.argmax(bpms < 320.0))] = -np.inf
    return float(bpms[np.argmax(np.log1p(1e6 * tempogram) + logprior)])
