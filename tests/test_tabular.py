"""GTZAN's 57 Kaggle features and seed 003's summary set (pipeline/features/tabular.py).

Fidelity is measured in units of each column's standard deviation over the 1000 rows of
Kaggle's real ``features_30_sec.csv``: a difference of 1e-3 std is invisible to any model
trained on that table. Measured: fast vs librosa and fast vs the published tables both
agree to ~2e-6 std (float32 rounding), with identical tempo.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import soundfile as sf

from pipeline.errors import MuzarrError
from pipeline.features import fast_spectral as fs
from pipeline.features.base import FEATURES, feature_from_dict
from pipeline.features.tabular import (
    GTZAN57_COLUMNS,
    SUMMARY_COLUMNS,
    SUMMARY_MIN_SAMPLES,
    Gtzan57,
    Summary,
    gtzan57,
    summary,
)

ROOT = Path(__file__).resolve().parents[1]
SR = 22050
TEMPO = GTZAN57_COLUMNS.index("tempo")
READABLE_CLIPS = ("blues.00000", "classical.00000", "country.00000", "jazz.00000", "rock.00000")
# Segments of the 3-second table: 66149 samples (its `length` column) every 66150 samples.
SEGMENT_STRIDE, SEGMENT_LENGTH = 66150, 66149
# The brief allowed 5 % of std against the published tables; they are reproduced to ~2e-6.
# 1e-3 still fails on librosa >= 0.10's zero padding (1.7e-2 std on 30 s rows, 0.2 on 3 s).
TABLE_TOLERANCE = 1e-3
LIBROSA_TOLERANCE = 1e-3


def _load_reference():
    spec = importlib.util.spec_from_file_location("tabular_reference", ROOT / "benchmarks" / "tabular_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_gtzan57


reference_gtzan57 = _load_reference()


@pytest.fixture(scope="module")
def gtzan_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "gtzan"


@pytest.fixture(scope="module")
def table_30s(gtzan_dir: Path) -> pd.DataFrame:
    return pd.read_csv(gtzan_dir / "features_30_sec.csv")


@pytest.fixture(scope="module")
def column_std(table_30s: pd.DataFrame) -> np.ndarray:
    return table_30s[list(GTZAN57_COLUMNS)].std().to_numpy()


@pytest.fixture(scope="module")
def clips(gtzan_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in READABLE_CLIPS:
        y, sr = sf.read(gtzan_dir / "genres_original" / name.split(".")[0] / f"{name}.wav", dtype="float32")
        assert sr == SR and y.ndim == 1
        out[name] = y
    return out


@pytest.fixture(scope="module")
def fast_rows(clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: gtzan57(y, sr=SR) for name, y in clips.items()}


def _synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    t = np.arange(5 * SR) / SR
    tones = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t)
    clicks = librosa.clicks(times=np.arange(0.25, 5.0, 0.5), sr=SR, length=t.size)
    return {
        "clicks+tones": (clicks + tones).astype(np.float32),
        "noise": (0.1 * rng.standard_normal(4 * SR)).astype(np.float32),
        "silence-then-tone": np.concatenate([np.zeros(SR), tones[: 2 * SR]]).astype(np.float32),
        "silence": np.zeros(2 * SR, dtype=np.float32),
        "3 s odd length": tones[:SEGMENT_LENGTH].astype(np.float32),
        "0.2 s": tones[:4410].astype(np.float32),
    }


def _worst(values: np.ndarray, expected: np.ndarray, std: np.ndarray) -> tuple[float, str]:
    scaled = np.abs(values - expected) / std
    scaled[TEMPO] = 0.0  # tempo is compared for equality
    i = int(np.argmax(scaled))
    return float(scaled[i]), GTZAN57_COLUMNS[i]


# (a) fidelity against the straightforward librosa computation ---------------------------


def test_columns_match_the_published_header(table_30s: pd.DataFrame, gtzan_dir: Path) -> None:
    assert len(GTZAN57_COLUMNS) == 57
    assert tuple(table_30s.columns) == ("filename", "length", *GTZAN57_COLUMNS, "label")
    three_sec = pd.read_csv(gtzan_dir / "features_3_sec.subset.csv", nrows=0)
    assert tuple(three_sec.columns) == ("filename", "length", *GTZAN57_COLUMNS, "label")


@pytest.mark.parametrize("name", READABLE_CLIPS)
def test_gtzan57_matches_librosa_on_real_clips(name, clips, fast_rows, column_std) -> None:
    expected = reference_gtzan57(clips[name], sr=SR)
    worst, column = _worst(fast_rows[name], expected, column_std)
    assert worst < LIBROSA_TOLERANCE, f"{name}: {column} differs by {worst:.2e} std"
    assert fast_rows[name][TEMPO] == expected[TEMPO]


@pytest.mark.parametrize("name", list(_synthetic()))
def test_gtzan57_matches_librosa_on_synthetic_signals(name, column_std) -> None:
    y = _synthetic()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa: n_fft too large for 0.2 s
        expected = reference_gtzan57(y, sr=SR)
    values = gtzan57(y, sr=SR)
    worst, column = _worst(values, expected, column_std)
    assert worst < LIBROSA_TOLERANCE, f"{name}: {column} differs by {worst:.2e} std"
    assert values[TEMPO] == expected[TEMPO]


# (b) fidelity against the published 30-second table --------------------------------------


@pytest.mark.parametrize("name", READABLE_CLIPS)
def test_gtzan57_reproduces_the_published_30s_rows(name, clips, fast_rows, table_30s, column_std) -> None:
    row = table_30s.loc[table_30s["filename"] == f"{name}.au"]
    assert len(row) == 1
    assert int(row["length"].iloc[0]) == clips[name].size
    expected = row[list(GTZAN57_COLUMNS)].to_numpy(dtype=np.float64)[0]
    worst, column = _worst(fast_rows[name], expected, column_std)
    assert worst < TABLE_TOLERANCE, f"{name}: {column} differs from the published row by {worst:.2e} std"
    assert fast_rows[name][TEMPO] == expected[TEMPO]


def test_wav_named_table_holds_the_same_rows(gtzan_dir: Path, table_30s: pd.DataFrame) -> None:
    wav_named = pd.read_csv(gtzan_dir / "features_30_sec.3genres_wavnames.csv")
    assert len(wav_named) == 300
    for name in ("classical.00000", "jazz.00000", "rock.00000"):
        a = wav_named.loc[wav_named["filename"] == f"{name}.wav", list(GTZAN57_COLUMNS)].to_numpy()
        b = table_30s.loc[table_30s["filename"] == f"{name}.au", list(GTZAN57_COLUMNS)].to_numpy()
        np.testing.assert_array_equal(a, b)


# (c) the 3-second table ------------------------------------------------------------------


def test_gtzan57_reproduces_the_published_3s_rows(gtzan_dir, clips, column_std) -> None:
    table = pd.read_csv(gtzan_dir / "features_3_sec.subset.csv")
    assert set(table["length"]) == {SEGMENT_LENGTH}
    feature = Gtzan57()
    compared = 0
    for name in ("classical.00000", "jazz.00000", "rock.00000"):
        rows = table.loc[table["filename"].str.startswith(f"{name}.")]
        assert list(rows["filename"]) == [f"{name}.{i}.wav" for i in range(10)]
        y = clips[name]
        segments = np.stack([y[i * SEGMENT_STRIDE : i * SEGMENT_STRIDE + SEGMENT_LENGTH] for i in range(10)])
        values = feature.extract(segments, sampling_rate=SR).astype(np.float64)
        expected = rows[list(GTZAN57_COLUMNS)].to_numpy(dtype=np.float64)
        for i in range(10):
            worst, column = _worst(values[i], expected[i], column_std)
            assert worst < TABLE_TOLERANCE, f"{name} segment {i}: {column} differs by {worst:.2e} std"
        # Short segments could flip the beat tracker's octave; on these 30 none does, so
        # every tempo must agree, to the float32 the store keeps.
        np.testing.assert_array_equal(values[:, TEMPO], expected[:, TEMPO].astype(np.float32))
        compared += 10
    assert compared == 30


# (d) the Feature classes -----------------------------------------------------------------


@pytest.mark.parametrize(("kind", "cls", "width"), [("gtzan57", Gtzan57, 57), ("summary", Summary, 190)])
def test_feature_registry_and_metadata(kind, cls, width) -> None:
    feature = feature_from_dict({"kind": kind})
    assert type(feature) is cls and FEATURES[kind] is cls
    assert feature.name == f"tabular/{kind}"
    assert feature.sample_rate == SR and feature.dtype == "float32"
    assert feature.output_shape(SEGMENT_LENGTH) == (width,)
    columns = feature.attrs()["columns"]
    assert len(columns) == width == len(set(columns))
    assert feature_from_dict(feature.to_dict()) == feature


@pytest.mark.parametrize("lead", [(), (2,), (2, 1)])
def test_extract_loops_over_leading_dimensions(lead) -> None:
    rng = np.random.default_rng(5)
    samples = (0.1 * rng.standard_normal((*lead, 3 * SR))).astype(np.float32)
    flat = samples.reshape(-1, samples.shape[-1])
    for feature, compute in ((Gtzan57(), gtzan57), (Summary(), summary)):
        out = feature.extract(samples, sampling_rate=SR)
        assert out.shape == (*lead, *feature.output_shape(samples.shape[-1]))
        assert out.dtype == np.float32
        for row, waveform in zip(out.reshape(-1, out.shape[-1]), flat):
            np.testing.assert_array_equal(row, compute(waveform, sr=SR).astype(np.float32))


def test_feature_errors_name_the_bad_value() -> None:
    with pytest.raises(MuzarrError, match="16000 Hz"):
        Gtzan57().extract(np.zeros(SR, dtype=np.float32), sampling_rate=16000)
    with pytest.raises(MuzarrError, match="sample_rate=0"):
        feature_from_dict({"kind": "gtzan57", "sample_rate": 0})
    with pytest.raises(MuzarrError, match="n_mels"):
        feature_from_dict({"kind": "summary", "n_mels": 64})
    with pytest.raises(MuzarrError, match="got 100"):
        Summary().output_shape(100)


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (np.zeros((2, 100), dtype=np.float32), r"shape \(2, 100\)"),
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.0, np.nan, 0.0], dtype=np.float32), "non-finite value nan at sample 1"),
        (np.zeros(100, dtype=np.int16), "dtype int16"),
    ],
)
def test_bad_waveforms_raise(y, match) -> None:
    with pytest.raises(MuzarrError, match=match):
        gtzan57(y)


def test_bad_rate_and_short_summary_raise() -> None:
    with pytest.raises(MuzarrError, match="sr=-1"):
        gtzan57(np.zeros(SR, dtype=np.float32), sr=-1)
    with pytest.raises(MuzarrError, match=f"at least {SUMMARY_MIN_SAMPLES} samples.*got 4000"):
        summary(np.zeros(4000, dtype=np.float32))


# (e) summary -----------------------------------------------------------------------------


def test_summary_columns() -> None:
    assert len(SUMMARY_COLUMNS) == 190 == len(set(SUMMARY_COLUMNS))
    assert SUMMARY_COLUMNS[:4] == ("mfcc1_mean", "mfcc1_std", "mfcc2_mean", "mfcc2_std")
    assert SUMMARY_COLUMNS[-2:] == ("contrast7_mean", "contrast7_std")
    families = [c.rsplit("_", 1)[0].rstrip("0123456789") for c in SUMMARY_COLUMNS]
    assert [families.count(f) for f in ("mfcc", "delta_mfcc", "delta2_mfcc", "stft_band", "chroma", "contrast")] == [
        40,
        40,
        40,
        32,
        24,
        14,
    ]


def test_summary_equals_straightforward_librosa() -> None:
    y = _synthetic()["clicks+tones"]
    values = summary(y, sr=SR)
    assert values.shape == (len(SUMMARY_COLUMNS),) and values.dtype == np.float64

    mfcc = librosa.feature.mfcc(y=y, sr=SR)
    power = np.abs(librosa.stft(y)) ** 2
    bands = librosa.power_to_db(power[:1024].reshape(16, 64, -1).mean(axis=1))
    families = [
        mfcc,
        librosa.feature.delta(mfcc),
        librosa.feature.delta(mfcc, order=2),
        bands,
        librosa.feature.chroma_stft(y=y, sr=SR),
        librosa.feature.spectral_contrast(y=y, sr=SR),
    ]
    expected = np.concatenate([np.stack([f.mean(axis=1), f.std(axis=1)], axis=1).ravel() for f in families])
    # Per-column scale: float32 features, so compare relative to each family's magnitude.
    scale = np.concatenate([np.full(2 * f.shape[0], np.abs(f).max()) for f in families])
    np.testing.assert_array_less(np.abs(values - expected), 1e-5 * scale)


# the exact kernels behind the speed ------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(1293, 300), (40, 37), (4, 5), (1, 4)])
def test_median_filter_is_exactly_scipys(axis, shape) -> None:
    rng = np.random.default_rng(7)
    x = rng.random(shape).astype(np.float32) ** 3
    x[rng.random(shape) < 0.2] = 0.0  # ties
    size = (31, 1) if axis == 0 else (1, 31)
    expected = scipy.ndimage.median_filter(x, size=size, mode="reflect")
    np.testing.assert_array_equal(fs.median_filter(x, axis=axis), expected)


def test_median_filter_reflects_periodically_on_short_lines() -> None:
    x = np.array([[1.0], [2.0]], dtype=np.float32)
    # Extended by period-4 reflection: ...2 2 1 1 [1 2] 2 1 1 2 2...; 31 taps centred on
    # sample 0 hold sixteen 2s and fifteen 1s, on sample 1 fifteen 2s and sixteen 1s.
    np.testing.assert_array_equal(fs.median_filter(x, axis=0), [[2.0], [1.0]])


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("n", [SEGMENT_LENGTH, 1000, 1])
def test_stft_and_istft_are_librosas_bit_for_bit(pad_mode, n) -> None:
    y = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = librosa.stft(y, pad_mode=pad_mode)
    spectrogram = fs.stft(y, pad_mode=pad_mode)
    np.testing.assert_array_equal(spectrogram, expected.T)
    np.testing.assert_array_equal(fs.istft(spectrogram, length=n), librosa.istft(expected, length=n, dtype=np.float32))


def test_hpss_masks_are_librosas_bit_for_bit(clips) -> None:
    y = clips["rock.00000"][:SEGMENT_LENGTH]
    spectrogram = fs.stft(y, pad_mode="reflect")
    magnitude = np.abs(spectrogram)
    mask_h, mask_p = librosa.decompose.hpss(magnitude.T, mask=True)
    harmonic, percussive = fs.hpss_spectrograms(spectrogram, magnitude)
    np.testing.assert_array_equal(harmonic, spectrogram * mask_h.T)
    np.testing.assert_array_equal(percussive, spectrogram * mask_p.T)
