"""The straightforward librosa computation of GTZAN's 57 Kaggle features.

One librosa call per feature, each computing its own STFT, exactly as the scripts that
made Kaggle's ``features_30_sec.csv`` and ``features_3_sec.csv`` did. Those scripts ran
librosa <= 0.9, whose defaults differ from librosa 0.11's in two places, spelled out
here so that librosa 0.11 reproduces the published rows to float rounding:

- every STFT and ``rms`` padded the signal by *reflection* (``pad_mode="reflect"``);
  librosa >= 0.10 pads with zeros, which moves 3-second rows by up to ~0.2 column std;
- ``effects.hpss`` inverted each part with ``istft`` *without* ``length`` and then
  ``fix_length``-ed it, so the last ``len(y) % 512`` samples of both parts are zero.

muzarr's fast version (:func:`pipeline.features.tabular.gtzan57`) is tested and timed
against this function.
"""

from __future__ import annotations

import librosa
import numpy as np

PAD_MODE = "reflect"  # librosa <= 0.9's default for stft and rms


def reference_gtzan57(y: np.ndarray, sr: int = 22050) -> np.ndarray:
    """GTZAN's 57 features, computed the way the Kaggle tables were.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono waveform (float32, as ``librosa.load`` returns it).
    sr : int
        Sampling rate of ``y``.

    Returns
    -------
    np.ndarray [shape=(57,), dtype=float64]
        In the order of ``pipeline.features.tabular.GTZAN57_COLUMNS``.
    """
    chroma_stft = librosa.feature.chroma_stft(y=y, sr=sr, pad_mode=PAD_MODE)
    rms = librosa.feature.rms(y=y, pad_mode=PAD_MODE)
    spectral_centroid = librosa.feature.spectral_centroid(y=y, sr=sr, pad_mode=PAD_MODE)
    spectral_bandwidth = librosa.feature.spectral_bandwidth(y=y, sr=sr, pad_mode=PAD_MODE)
    rolloff = librosa.feature.spectral_rolloff(y=y, sr=sr, pad_mode=PAD_MODE)
    zero_crossing_rate = librosa.feature.zero_crossing_rate(y)
    # librosa <= 0.9's effects.hpss(y):
    stft_harmonic, stft_percussive = librosa.decompose.hpss(librosa.stft(y, pad_mode=PAD_MODE))
    harmony = librosa.util.fix_length(librosa.istft(stft_harmonic, dtype=y.dtype), size=len(y))
    perceptr = librosa.util.fix_length(librosa.istft(stft_percussive, dtype=y.dtype), size=len(y))
    # beat_track(y=y, sr=sr) computes this onset envelope itself, but cannot be told the pad mode.
    onset_envelope = librosa.onset.onset_strength(y=y, sr=sr, aggregate=np.median, pad_mode=PAD_MODE)
    tempo, _ = librosa.beat.beat_track(onset_envelope=onset_envelope, sr=sr)
    mfcc = librosa.feature.mfcc(y=y, sr=sr, pad_mode=PAD_MODE)

    row: list[float] = []
    frame_features = (chroma_stft, rms, spectral_centroid, spectral_bandwidth, rolloff, zero_crossing_rate)
    for values in (*frame_features, harmony, perceptr):
        row += [np.mean(values), np.var(values)]
    row.append(np.asarray(tempo).item())
    for coefficient in mfcc:
        row += [np.mean(coefficient), np.var(coefficient)]
    return np.asarray(row, dtype=np.float64)
