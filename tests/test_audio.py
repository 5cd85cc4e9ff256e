"""Decoding, scaling, resampling and clip policies against their references."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import soxr

from pipeline.audio import (
    ClipPolicy,
    DecodeError,
    decode,
    float_to_int16,
    int16_overflow,
    int16_to_float,
    load_clip,
    resample,
    to_mono,
)
from pipeline.errors import MuzarrError


def test_int16_pcm_is_scaled_exactly(tmp_path):
    ints = np.array([-32768, -16384, -1, 0, 1, 12345, 32767], dtype=np.int16)
    path = tmp_path / "pcm16.wav"
    soundfile.write(path, ints, 8000, subtype="PCM_16")
    samples, rate = decode(str(path))
    assert rate == 8000
    np.testing.assert_array_equal(samples[0], ints.astype(np.float32) / 32768)
    np.testing.assert_array_equal(float_to_int16(samples[0]), ints)
    np.testing.assert_array_equal(int16_to_float(ints), ints / np.float32(32768))


def test_float_to_int16_clips_and_rounds():
    y = np.array([-1.5, -1.0, -0.5 / 32768, 0.4 / 32768, 0.6 / 32768, 0.99999, 1.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(float_to_int16(y), [-32768, -32768, 0, 0, 1, 32767, 32767, 32767])


def test_int16_overflow_counts_exactly_the_samples_float_to_int16_clips():
    step = np.float32(1 / 32768)
    # around both edges of the int16 range: ±half a step decides, ties round to even
    edges = np.array([32767.4, 32767.5, 32767.6, -32768.4, -32768.5, -32768.6, -32769], dtype=np.float64) / 32768
    rng = np.random.default_rng(0)
    y = np.concatenate([edges.astype(np.float32), rng.uniform(-1.3, 1.3, 10_000).astype(np.float32), [step, -1, 1]])
    reference = np.rint(y.astype(np.float64) * 32768)
    expected = int(np.count_nonzero((reference > 32767) | (reference < -32768)))
    assert int16_overflow(y) == expected > 0
    assert int16_overflow(y[:3]) == 2 and int16_overflow(y[3:6]) == 1  # 32767.5 and 32767.6; -32768.6
    quantised = float_to_int16(y.copy())
    assert np.count_nonzero(quantised.astype(np.float64) != reference) == expected
    assert int16_overflow(np.zeros(0, np.float32)) == 0 and int16_overflow(rng.uniform(-1, 0.99, 500).astype(np.float32)) == 0


def test_stereo_is_averaged_like_librosa(tmp_path):
    import librosa

    rng = np.random.default_rng(0)
    stereo = (rng.uniform(-0.5, 0.5, size=(2, 1000))).astype(np.float32)
    mono = to_mono(stereo)
    np.testing.assert_allclose(mono, librosa.to_mono(stereo), atol=1e-7)


@pytest.mark.parametrize("orig_sr", [8000, 22050, 44100])
@pytest.mark.parametrize("target_sr", [12000, 16000, 22050])
def test_resample_equals_soxr_and_librosa(orig_sr, target_sr):
    import librosa

    rng = np.random.default_rng(orig_sr + target_sr)
    y = rng.standard_normal(orig_sr // 2).astype(np.float32) * 0.1
    ours = resample(y, orig_sr=orig_sr, target_sr=target_sr)
    if orig_sr == target_sr:
        assert ours is y
        return
    reference = soxr.resample(y, orig_sr, target_sr, quality="HQ")
    n = min(len(reference), len(ours))
    np.testing.assert_array_equal(ours[:n], reference[:n])
    np.testing.assert_allclose(ours, librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr), atol=1e-6)


def test_load_clip_matches_librosa_load(fixtures_dir):
    import librosa

    path = str(fixtures_dir / "mtat" / "e" / "joram-moments_of_clarity-08-solipsism-59-88.mp3")
    policy = ClipPolicy(mode="full", seconds=29.12)
    audio = load_clip(path, rates=(12000, 16000), policy=policy).audio
    for sr in (12000, 16000):
        reference, _ = librosa.load(path, sr=sr)
        expected = np.pad(reference, (0, max(0, policy.n_samples(sr) - len(reference))))[: policy.n_samples(sr)]
        assert audio[sr].shape == (policy.n_samples(sr),)
        np.testing.assert_allclose(audio[sr], expected, atol=1e-6)


class TestClipPolicy:
    y = np.arange(1, 101, dtype=np.float32)  # 100 samples at 10 Hz = 10 s

    def test_pad_crop_start(self):
        out = ClipPolicy(mode="pad_crop", seconds=3).apply(self.y, sample_rate=10)
        np.testing.assert_array_equal(out, self.y[:30])

    def test_pad_crop_centre(self):
        out = ClipPolicy(mode="pad_crop", seconds=3, anchor="centre").apply(self.y, sample_rate=10)
        np.testing.assert_array_equal(out, self.y[35:65])

    def test_pad_crop_pads_short_clips_with_zeros(self):
        out = ClipPolicy(mode="pad_crop", seconds=12, anchor="centre").apply(self.y, sample_rate=10)
        assert out.shape == (120,)
        np.testing.assert_array_equal(out[:100], self.y)
        assert not out[100:].any()

    def test_full(self):
        out = ClipPolicy(mode="full", seconds=10.5).apply(self.y, sample_rate=10)
        assert out.shape == (105,) and out[99] == 100 and not out[100:].any()

    @pytest.mark.parametrize(
        "seconds, hop, total, partial, starts",
        [
            (3, None, 10, "drop", [0, 30, 60]),
            (3, None, 10, "pad", [0, 30, 60, 90]),
            (3, 2, 10, "drop", [0, 20, 40, 60]),
            (3, 2, 10, "pad", [0, 20, 40, 60, 80]),
            (2.5, None, 10, "drop", [0, 25, 50, 75]),
        ],
    )
    def test_split(self, seconds, hop, total, partial, starts):
        policy = ClipPolicy(mode="split", seconds=seconds, hop_seconds=hop, total_seconds=total, partial=partial)
        out = policy.apply(self.y, sample_rate=10)
        length = int(seconds * 10)
        assert policy.n_subclips == len(starts)
        assert out.shape == (len(starts), length)
        for row, start in zip(out, starts):
            expected = np.zeros(length, np.float32)
            chunk = self.y[start : start + length]
            expected[: len(chunk)] = chunk
            np.testing.assert_array_equal(row, expected)

    def test_split_of_29_1_seconds_into_ten(self):
        policy = ClipPolicy(mode="split", seconds=2.91, total_seconds=29.1)
        assert policy.n_subclips == 10
        assert policy.apply(np.ones(465600, np.float32), sample_rate=16000).shape == (10, 46560)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"mode": "chop"}, "clip mode"),
            ({"seconds": 0}, "positive"),
            ({"seconds": -1.0}, "positive"),
            ({"anchor": "end"}, "anchor"),
            ({"mode": "split", "seconds": 3}, "total_seconds"),
            ({"mode": "split", "seconds": 3, "total_seconds": 2}, "total_seconds"),
            ({"mode": "split", "seconds": 3, "total_seconds": 9, "hop_seconds": 0}, "hop_seconds"),
            ({"partial": "keep"}, "partial"),
        ],
    )
    def test_bad_policies_are_clear_errors(self, kwargs, match):
        with pytest.raises(MuzarrError, match=match):
            ClipPolicy(**kwargs)

    def test_a_track_over_the_maximum_says_by_how_much(self):
        """Issue #21 item 13: "track is 5.0 s long, over clip.max_seconds=5" hid the one sample too many."""
        policy = ClipPolicy(mode="track", max_seconds=5)
        assert policy.track_problem(80000, 16000) is None
        assert policy.track_problem(80001, 16000) == (
            "track is 80001 samples at 16000 Hz = 5.0000625 s long, over clip.max_seconds=5: "
            "raise it with --set clip.max_seconds=600"
        )


def test_pyav_fallback_decodes_what_libsndfile_cannot(fixtures_dir):
    path = fixtures_dir / "edge_cases" / "pydub" / "wrong_extension.aac"
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.info(str(path))
    samples, rate = decode(str(path))
    assert rate > 0 and samples.shape[1] > rate  # more than a second of audio
    assert np.abs(samples).max() > 0.01


@pytest.mark.parametrize(
    "content, match",
    [(b"", "soundfile"), (b"not audio at all" * 10, "PyAV"), (bytes(range(256)) * 4, "soundfile")],
)
def test_undecodable_files_raise_decode_error(tmp_path, content, match):
    path = tmp_path / "bad.mp3"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=match):
        decode(str(path))


def test_empty_wav_is_an_error_not_silence(fixtures_dir):
    with pytest.raises(DecodeError, match="no audio samples"):
        decode(str(fixtures_dir / "edge_cases" / "pydub" / "test1_empty.wav"))
