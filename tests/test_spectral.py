"""Waveform and log-mel features against librosa."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import MuzarrError
from pipeline.features.base import feature_from_dict
from pipeline.features.spectral import LogMel, Waveform


def _signal(sr: int, seconds: float, *, seed: int = 0, shape=()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    chirp = np.sin(2 * np.pi * (100 + 2000 * t) * t)
    noise = 0.05 * rng.standard_normal((*shape, len(t)))
    return (0.5 * chirp + noise).astype(np.float32)


@pytest.mark.parametrize("sr, n_mels, n_fft, hop", [(12000, 96, 512, 256), (16000, 64, 1024, 512), (22050, 128, 2048, 512)])
@pytest.mark.parametrize("f_min, f_max", [(0.0, None), (50.0, 5000.0)])
@pytest.mark.parametrize("top_db", [80.0, None])
def test_logmel_equals_librosa(sr, n_mels, n_fft, hop, f_min, f_max, top_db):
    import librosa

    y = _signal(sr, 3.3)
    feature = LogMel(
        sample_rate=sr, n_mels=n_mels, n_fft=n_fft, hop_length=hop, f_min=f_min, f_max=f_max,
        top_db=top_db, storage="float32",
    )
    ours = feature.extract(y, sampling_rate=sr)
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=f_min, fmax=f_max)
    reference = librosa.power_to_db(mel, ref=1.0, top_db=top_db)
    assert ours.shape == reference.shape == feature.output_shape(len(y))
    assert np.abs(ours - reference).max() < 1e-3


def test_logmel_of_subclips_equals_librosa_per_subclip():
    import librosa

    y = _signal(16000, 2.0, shape=(3,))
    y[1] *= 0.01  # a quiet sub-clip: top_db is relative to each sub-clip's own peak
    feature = LogMel(sample_rate=16000, n_mels=64, n_fft=1024, hop_length=512, storage="float32")
    ours = feature.extract(y, sampling_rate=16000)
    for k in range(3):
        reference = librosa.power_to_db(
            librosa.feature.melspectrogram(y=y[k], sr=16000, n_fft=1024, hop_length=512, n_mels=64), ref=1.0
        )
        assert np.abs(ours[k] - reference).max() < 1e-3


def test_pad_frames_adds_zero_frames_on_both_ends():
    y = _signal(12000, 29.12)
    plain = LogMel(sample_rate=12000, n_mels=96, n_fft=512, hop_length=256, storage="float32")
    padded = LogMel(sample_rate=12000, n_mels=96, n_fft=512, hop_length=256, pad_frames=37, storage="float32")
    out = padded.extract(y, sampling_rate=12000)
    # Choi's CRNN input: 96 x 1366 frames for 29.12 s at 12 kHz, 1440 with 37 frames each side.
    assert plain.output_shape(len(y)) == (96, 1366)
    assert out.shape == (96, 1440)
    assert not out[:, :37].any() and not out[:, -37:].any()
    np.testing.assert_array_equal(out[:, 37:-37], plain.extract(y, sampling_rate=12000))


def test_log1p_compression():
    import librosa

    y = _signal(16000, 1.0)
    feature = LogMel(sample_rate=16000, n_mels=64, n_fft=512, hop_length=256, log="log1p", log_compression=100.0, storage="float32")
    mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=256, n_mels=64)
    np.testing.assert_allclose(feature.extract(y, sampling_rate=16000), np.log1p(100 * mel), rtol=1e-4, atol=1e-5)


def test_float16_storage_is_the_float32_value_rounded():
    y = _signal(16000, 1.0)
    f16 = LogMel(sample_rate=16000, n_mels=64, n_fft=1024, hop_length=512)
    f32 = LogMel(sample_rate=16000, n_mels=64, n_fft=1024, hop_length=512, storage="float32")
    assert f16.dtype == "float16"
    np.testing.assert_array_equal(f16.extract(y, sampling_rate=16000), f32.extract(y, sampling_rate=16000).astype(np.float16))


def test_variant_names_follow_parameters():
    assert LogMel(sample_rate=12000, n_mels=96, n_fft=512, hop_length=256, pad_frames=37).name == (
        "logmel/mel96_sr12000_fft512_hop256_pad37"
    )
    assert LogMel(sample_rate=16000, n_mels=128, n_fft=512, hop_length=256, f_max=8000).name == (
        "logmel/mel128_sr16000_fft512_hop256_fmax8000"
    )
    assert Waveform(sample_rate=16000).name == "waveform"


def test_waveform_int16_and_float32():
    y = np.array([0.5, -0.25, 1 / 32768], dtype=np.float32)
    np.testing.assert_array_equal(Waveform(sample_rate=8000).extract(y, sampling_rate=8000), [16384, -8192, 1])
    np.testing.assert_array_equal(Waveform(sample_rate=8000, storage="float32").extract(y, sampling_rate=8000), y)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"kind": "mfcc"}, "unknown feature kind 'mfcc'.*logmel"),
        ({"kind": "logmel", "n_mel": 96}, "unknown parameter.*n_mel"),
        ({"kind": "logmel", "n_mels": 0}, "n_mels=0"),
        ({"kind": "logmel", "hop_length": 2.5}, "hop_length=2.5"),
        ({"kind": "logmel", "sample_rate": 16000, "f_max": 9000}, "f_max"),
        ({"kind": "logmel", "pad_frames": -1}, "pad_frames"),
        ({"kind": "waveform", "storage": "int8"}, "storage"),
        ("logmel", "mapping"),
    ],
)
def test_bad_feature_specs_are_clear_errors(spec, match):
    with pytest.raises(MuzarrError, match=match):
        feature_from_dict(spec)


def test_wrong_rate_is_refused():
    with pytest.raises(MuzarrError, match="expects audio at 16000 Hz"):
        LogMel(sample_rate=16000).extract(np.zeros(1000, np.float32), sampling_rate=22050)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"top_db": -10.0}, "top_db=-10 must be a positive number of dB"),
        ({"top_db": 0.0}, "top_db=0 must be a positive number"),
        ({"n_fft": 3, "n_mels": 1, "hop_length": 2}, "n_fft=3 must be even"),
        ({"n_fft": 1 << 17}, "n_fft=131072 is more than 65536"),
        ({"hop_length": 4096}, "hop_length=4096 is longer than n_fft=512"),
        ({"log": "log1p", "log_compression": -1.0}, "log_compression=-1 must be a positive number no larger than"),
        ({"log": "log1p", "log_compression": 1e36}, "log_compression=1e\\+36 must be a positive number no larger than 3.37e\\+33"),
        ({"n_fft": 64, "hop_length": 32, "n_mels": 128}, "n_mels=128 leaves 70 mel band\\(s\\) empty.*use n_mels <= 23"),
        ({"n_mels": 4096}, "n_mels=4096 leaves 3586 mel band\\(s\\) empty.*use n_mels <= 192"),
    ],
)
def test_parameters_that_fail_or_waste_every_clip_are_refused(params, match):
    """Issue #21 items 3 and 14: each of these was accepted and then failed every clip, or stored bands of zeros."""
    with pytest.raises(MuzarrError, match=match):
        LogMel(**params).check_computable()


def test_the_catalogs_features_and_the_largest_n_mels_pass():
    from pipeline.config import config_for, load_catalog

    for name, entry in load_catalog().items():
        for feature in config_for(name, entry).features:
            feature.check_computable()
    LogMel(n_mels=192).check_computable()
    LogMel(n_fft=64, hop_length=32, n_mels=23).check_computable()


@pytest.mark.parametrize("sr, n_fft", [(8000, 64), (16000, 256), (16000, 512), (22050, 1024)])
def test_empty_bands_are_counted_as_librosa_builds_the_bank(sr, n_fft):
    import warnings

    from pipeline.features.spectral import empty_mel_bands, largest_n_mels, mel_basis, mel_edges

    for n_mels in (8, 40, 96, 128, 200, 300):
        for f_min in (0.0, 50.0):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the bank is built without librosa's warning reaching the user
                bank = mel_basis(sr, n_fft, n_mels, f_min, None)
            assert empty_mel_bands(sr, n_fft, mel_edges(sr, n_mels, f_min, None)) == int((~bank.any(axis=1)).sum())
    most = largest_n_mels(sr, n_fft, 0.0, None)
    assert mel_basis(sr, n_fft, most, 0.0, None).any(axis=1).all()
    assert not mel_basis(sr, n_fft, most + 1, 0.0, None).any(axis=1).all()


def test_the_largest_log_compression_keeps_the_loudest_clip_finite():
    from pipeline.features.spectral import HEADROOM, max_log_compression, mel_edges

    most = max_log_compression(16000, 512, mel_edges(16000, 96, 0.0, None))
    square = np.full(16000, HEADROOM, np.float32)
    square[::2] *= -1  # all the energy at the top bin; a constant puts it all at 0 Hz
    for y in (square, np.full(16000, HEADROOM, np.float32)):
        assert np.isfinite(LogMel(log="log1p", log_compression=most, storage="float32").extract(y, sampling_rate=16000)).all()
