"""Whole tracks of any length (``clip.mode=track``): exact samples, extents, padding, resume, verify, grow, copy.

The source is a folder of 12 synthesised tracks of 5 s to 10 min (WAV at 4 kHz and MP3 at 8 kHz,
both resampled to 2 kHz) plus one a little over ``clip.max_seconds``. Every build is the real
``pipe`` command on a real Dask cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
from helpers_stores import kill_when, markers, snapshot, store_files

from pipeline import open_store
from pipeline.audio import float_to_int16

BIN = Path(sys.executable).parent
SECONDS = [5, 8, 12, 20, 31, 47, 70, 105, 160, 240, 400, 600]  # one per track, 5 s to 10 min
TOO_LONG = 610.0
SR = 2000
LOGMEL = "logmel/mel16_sr2000_fft256_hop128"
SETTINGS = [
    "--set", "clip.mode=track", "--set", "clip.max_seconds=600", "--set", "batch_clips=4", "--only",
    "--waveform", f"sample_rate={SR}", "--logmel", f"sample_rate={SR},n_mels=16,n_fft=256,hop_length=128",
    "--quiet",
]  # fmt: skip


def pipe(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pipe"), *args], capture_output=True, text=True, timeout=300, env=env, check=False)


def build_args(source: Path, out, *extra: str) -> list[str]:
    return [str(BIN / "pipe"), "build", "folder", "--source", str(source), "--out", str(out), *SETTINGS, "--workers", "1", *extra]


def write_tracks(root: Path) -> list[Path]:
    """Track ``k`` is ``a/tKK`` or ``b/tKK`` (classes alternate), MP3 at 8 kHz for three short ones (encoding
    is slow), WAV at 4 kHz otherwise; the too-long one last."""
    rng = np.random.default_rng(13)
    paths = []
    for k, seconds in enumerate([*SECONDS, TOO_LONG]):
        folder = root / "ab"[k % 2]
        folder.mkdir(parents=True, exist_ok=True)
        mp3 = k in (0, 3, 6)
        rate = 8000 if mp3 else 4000
        t = np.arange(int(seconds * rate)) / rate
        y = (0.3 * np.sin(2 * np.pi * (220 + 20 * k) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        path = folder / f"t{k:02d}.{'mp3' if mp3 else 'wav'}"
        soundfile.write(path, y, rate, **({"format": "MP3"} if mp3 else {"subtype": "PCM_16"}))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracks_src")
    write_tracks(root)
    return root


@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tracks") / "tracks.zarr"
    result = subprocess.run(build_args(source, out), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stderr  # one track failed: complete, with a failure
    return out


def test_each_track_is_stored_whole_with_exact_samples(built, source):
    store = open_store(str(built))
    clips = store.clips
    assert len(clips) == 13 and store.complete
    ok = np.flatnonzero(store.ok)
    assert len(ok) == 12
    logmel = store.feature(LOGMEL)
    for row in ok:
        y, _ = librosa.load(source / clips["path"].iloc[row], sr=SR, mono=True)
        wave = store.track("waveform", row)
        np.testing.assert_array_equal(wave, float_to_int16(y))
        mel = store.track(LOGMEL, row)
        assert mel.shape == (16, 1 + len(y) // 128)
        # A Dask worker's BLAS (one thread) sums the mel filters in another order than this process: a rare
        # element rounds to the neighbouring float16 (0.03 dB at most here).
        np.testing.assert_allclose(mel.astype(np.float32), logmel.extract(y, sampling_rate=SR).astype(np.float32), rtol=0, atol=0.04)
    assert sorted(round(len(store.track("waveform", r)) / SR) for r in ok) == SECONDS
    with pytest.raises(Exception, match="holds whole tracks of different lengths: read one with Store.track"):
        store.read("waveform", [0])


def test_tabular_features_are_computed_over_the_whole_track(tmp_path):
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name, seconds in (("short", 5), ("longer", 8)):
        soundfile.write(source / "a" / f"{name}.wav", (0.2 * rng.standard_normal(seconds * 4000)).astype(np.float32), 4000)
    out = tmp_path / "tab.zarr"
    command = [str(BIN / "pipe"), "build", "folder", "--source", str(source), "--out", str(out), "--set", "clip.mode=track",
               "--only", "--waveform", f"sample_rate={SR}", "--tabular", "gtzan57", "--set", f"gtzan57.sample_rate={SR}",
               "--workers", "1", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    store = open_store(str(out))
    assert store.arrays["tabular/gtzan57"].shape == (2, 57)
    feature = store.feature("tabular/gtzan57")
    for row, path in enumerate(store.clips["path"]):
        y, _ = librosa.load(source / path, sr=SR)
        np.testing.assert_allclose(store.read("tabular/gtzan57", row), feature.extract(y, sampling_rate=SR), rtol=1e-4, atol=1e-6)


def test_the_too_long_track_fails_with_the_reason(built):
    store = open_store(str(built))
    row = int(np.flatnonzero(~store.ok)[0])
    failed = store.clips.iloc[row]
    assert failed["clip_id"] == "a/t12" and failed["status"] == "failed" and failed["stage"] == "clip"
    assert failed["error"] == (
        "track is 2440000 samples at 4000 Hz = 610 s long, over clip.max_seconds=600: raise it with --set clip.max_seconds=1200"
    )
    assert store.extents("waveform")[row, 1] == 0 and store.extents(LOGMEL)[row, 1] == 0
    with pytest.raises(Exception, match="is failed: it has no data to read"):
        store.track("waveform", row)


@pytest.mark.parametrize("name", ["waveform", LOGMEL])
def test_extents_are_contiguous_shard_aligned_and_padding_is_small(built, name):
    store = open_store(str(built))
    array, extents = store.array(name), store.extents(name)
    shard = array.shards[-1]
    starts, lengths = extents[:, 0], extents[:, 1]
    for b in range(0, len(extents), 4):
        assert starts[b] % shard == 0  # a batch's region starts on a shard boundary: its task owns whole shards
        np.testing.assert_array_equal(starts[b + 1 : b + 4], (starts + lengths)[b : b + 3][: len(starts[b + 1 : b + 4])])
    assert array.shape[-1] % shard == 0 and array.shape[-1] - (starts[-1] + lengths[-1]) < shard
    padding = 1 - lengths.sum() / array.shape[-1]
    print(f"{name}: padding {padding:.2%} of {array.shape[-1]} (shard {shard})")
    assert 0 <= padding <= 0.02
    meta = json.loads((built / name / "zarr.json").read_text())
    variant = "mel16_sr2000_fft256_hop128"
    assert meta["dimension_names"] == (["time_waveform"] if name == "waveform" else [f"mel_{variant}", f"frame_{variant}"])
    assert json.loads((built / "extents" / name / "zarr.json").read_text())["dimension_names"] == ["clip", "extent"]


def test_info_shows_the_length_distribution_and_verify_finds_a_flipped_byte(built, tmp_path):
    info = pipe("info", str(built))
    assert info.returncode == 0, info.stderr
    total = sum(SECONDS) / 3600
    assert f"tracks    12 stored: 5.0 s min, 58.5 s median, 600.0 s max, {total:.2f} h" in info.stdout
    assert "padding" in info.stdout
    assert pipe("verify", str(built)).returncode == 0
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(built, damaged)
    shard = damaged / "waveform" / "c" / "3"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = pipe("verify", str(damaged))
    assert result.returncode == 1
    assert "damaged" in result.stdout and "waveform" in result.stdout and "DAMAGED" in result.stdout


def test_a_killed_build_resumes_to_the_same_bytes(built, source, tmp_path):
    out = tmp_path / "killed.zarr"
    command = build_args(source, out)
    run = kill_when(command, lambda: len(markers(out)) >= 1)
    assert run["killed"], run
    assert len(markers(out)) < 4
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    assert_same_store_except_failed(out, built)


def assert_same_store_except_failed(out: Path, reference: Path) -> None:
    """Every file the same, the manifest too but for ``finished`` (the store has one failed clip, which
    :func:`tests.test_resume.assert_same_store` does not expect)."""
    files, manifest = snapshot(out)
    ref_files, ref_manifest = snapshot(reference)
    assert sorted(files) == sorted(ref_files)
    assert [k for k in files if files[k] != ref_files[k]] == []
    assert manifest == ref_manifest


def test_a_grow_appends_tracks(built, source, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(source, partial)
    # the index lists a/ then b/: the last two of b/ are the clips appended
    for name in ("b/t09.wav", "b/t11.wav"):
        (partial / name).unlink()
    out = tmp_path / "grown.zarr"
    first = subprocess.run(build_args(partial, out), capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 1, first.stderr
    before = open_store(str(out)).array("waveform").shape[-1]
    for name in ("b/t09.wav", "b/t11.wav"):
        shutil.copy(source / name, partial / name)
    grown = subprocess.run(build_args(partial, out), capture_output=True, text=True, timeout=300, check=False)
    assert grown.returncode == 1, grown.stderr
    store = open_store(str(out))
    assert store.n_clips == 13 and store.array("waveform").shape[-1] > before
    reference = open_store(str(built))
    for row in np.flatnonzero(reference.ok):
        np.testing.assert_array_equal(store.track("waveform", row), reference.track("waveform", row))
    for name in reference.arrays:
        if name.startswith("extents/"):
            # a grow keeps the shard size the store was planned with (a from-scratch build of all 13 tracks
            # may choose another): the tracks are the same, where their regions start may differ
            np.testing.assert_array_equal(store.extents(name[8:])[:, 1], reference.extents(name[8:])[:, 1])
        else:  # per-clip digests: every track's own bytes
            assert store.arrays[name].checksum == reference.arrays[name].checksum, name
    assert pipe("verify", str(out)).returncode == 0


def test_copy_to_s3_and_back_is_byte_identical(built, s3, tmp_path):
    to_s3 = pipe("copy", str(built), "s3://tracks/store.zarr", env=s3)
    assert to_s3.returncode == 0, to_s3.stderr
    back = tmp_path / "back.zarr"
    home = pipe("copy", "s3://tracks/store.zarr", str(back), env=s3)
    assert home.returncode == 0, home.stderr
    files, copied = store_files(built), store_files(back)
    assert sorted(copied) == sorted(files)
    assert [k for k in files if files[k] != copied[k]] == []
