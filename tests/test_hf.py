"""Recipe ``hf``: datasets written by Hugging Face ``datasets`` itself, built with the real ``pipe build hf``.

Embedded WAV and MP3 bytes (``save_to_disk``), audio given by path (Parquet files), labels from
``ClassLabel`` and lists of ``ClassLabel``, the dataset's splits as the ``hf`` scheme, and a row whose
bytes are not audio recorded as a failure. ``datasets`` is a peer of muzarr, not a dependency: without
it these tests are skipped, unless MUZARR_REQUIRE_PEERS=1.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline import open_store
from pipeline.features.spectral import LogMel

RATE = 16000
NAMES = ["blues", "jazz", "rock"]


@pytest.fixture(autouse=True)
def _needs_datasets():
    if importlib.util.find_spec("datasets") is None:
        message = "recipe hf needs the datasets package: pip install -e '.[peers]'"
        if os.environ.get("MUZARR_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def run_pipe(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})  # fmt: skip


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(freq: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(freq), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def mp3_bytes(freq: float, folder: Path) -> bytes:
    path = folder / f"tone{freq:g}.mp3"
    soundfile.write(str(path), tone(freq), RATE, format="MP3", subtype="MPEG_LAYER_III")
    return path.read_bytes()


def pcm(data: bytes) -> np.ndarray:
    """The int16 samples muzarr must store for a 16 kHz file: the file decoded directly, scaled as int16."""
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE
    return np.clip(np.rint(samples[:RATE] * 32768), -32768, 32767).astype(np.int16)


def build(source: Path, out: Path, cache: Path, *settings: str):
    return run_pipe("build", "hf", "--source", str(source), "--out", str(out), "--workers", "1", "--quiet",
                    "--set", f"options.cache_dir={cache}", "--set", "clip.seconds=1", "--set", "batch_clips=4",
                    *(arg for s in settings for arg in ("--set", s)))  # fmt: skip


def test_save_to_disk_with_embedded_wav_and_mp3_bytes(tmp_path):
    import datasets

    features = datasets.Features({"audio": datasets.Audio(), "genre": datasets.ClassLabel(names=NAMES),
                                  "title": datasets.Value("string")})  # fmt: skip
    audio = {
        "train": [wav_bytes(220), wav_bytes(330), wav_bytes(440)],
        "validation": [mp3_bytes(550, tmp_path)],
        "test": [wav_bytes(660), b"these bytes are not audio at all" * 8],
    }
    genres = {"train": [0, 1, 2], "validation": [1], "test": [2, 0]}

    def split(name):
        suffix = "mp3" if name == "validation" else "wav"
        rows = {"audio": [{"bytes": b, "path": f"{name}{i}.{suffix}"} for i, b in enumerate(audio[name])],
                "genre": genres[name], "title": [f"{name} song {i}" for i in range(len(audio[name]))]}
        return datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio()).cast_column("genre", features["genre"])

    source = tmp_path / "saved"
    datasets.DatasetDict({name: split(name) for name in audio}).save_to_disk(str(source))
    out, cache = tmp_path / "hf.zarr", tmp_path / "cache"
    result = build(source, out, cache)
    assert result.returncode == 1, result.stderr  # one row is not audio: recorded, the rest stored
    store = open_store(str(out))
    clips = store.clips.set_index("clip_id")
    assert list(clips.index) == ["train/0", "train/1", "train/2", "validation/0", "test/0", "test/1"]
    assert clips.loc["test/1", "status"] == "failed" and clips.loc["test/1", "stage"] == "decode"
    assert (clips.drop(index="test/1")["status"] == "ok").all()
    assert list(clips["title"]) == [f"{s} song {i}" for s in audio for i in range(len(audio[s]))]
    assert list(clips["audio_path"]) == ["train0.wav", "train1.wav", "train2.wav", "validation0.mp3", "test0.wav", "test1.wav"]

    assert store.task == "multiclass" and store.classes == NAMES
    labels = store.labels().set_index("clip_id")
    assert list(labels["label"]) == [NAMES[g] for s in audio for g in genres[s]]
    assert list(store.splits()["hf"]) == ["train"] * 3 + ["valid", "test", "test"]
    assert list(store.split("hf", "test")) == [4]

    # The stored waveform is each row's bytes decoded directly (WAV: exactly; MP3: the same decoder, to one step)
    wave = store.read("waveform", [0, 1, 2, 4])
    for row, data in zip(wave, [*audio["train"], audio["test"][0]]):
        np.testing.assert_array_equal(row, pcm(data))
    mp3 = store.read("waveform", 3)
    expected = pcm(audio["validation"][0])
    np.testing.assert_allclose(mp3[: len(expected)], expected, atol=1)
    logmel = LogMel(sample_rate=RATE, n_mels=96, n_fft=512, hop_length=256, storage="float32")
    samples = soundfile.read(io.BytesIO(audio["train"][1]), dtype="float32")[0]
    np.testing.assert_allclose(store.read(logmel.name, 1), logmel.extract(samples, sampling_rate=RATE), atol=0.07)

    # Embedded bytes were written once each, by content: a second build (a resume, a repair) reuses them.
    extracted = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(extracted) == 6 and not [p for p in extracted if p.name.startswith(".")]
    assert sorted(p.suffix for p in extracted) == [".mp3", ".wav", ".wav", ".wav", ".wav", ".wav"]


def test_parquet_with_paths_and_a_list_of_class_labels(tmp_path):
    import datasets

    files = tmp_path / "audio"
    files.mkdir()
    freqs = {"train": [200, 300, 400], "test": [500]}
    tags = {"train": [[0, 2], [1], []], "test": [[0, 1, 2]]}
    for split, fs in freqs.items():
        for f in fs:
            soundfile.write(str(files / f"{f}.wav"), tone(f), RATE, subtype="PCM_16")
    features = datasets.Features({"audio": datasets.Audio(), "tags": datasets.Sequence(datasets.ClassLabel(names=NAMES)),
                                  "mood": datasets.ClassLabel(names=["calm", "loud"])})  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    for split, fs in freqs.items():
        rows = {"audio": [str(files / f"{f}.wav") for f in fs], "tags": tags[split], "mood": [0] * len(fs)}
        dataset = datasets.Dataset.from_dict(rows, features=datasets.Features({**features, "audio": datasets.Value("string")}))
        dataset.cast_column("audio", datasets.Audio()).to_parquet(str(data / f"{split}-00000-of-00001.parquet"))
    out, cache = tmp_path / "tags.zarr", tmp_path / "cache"

    ambiguous = build(data, out, cache)
    assert ambiguous.returncode == 2 and not out.exists()
    assert ambiguous.stderr.count("\n") == 1 and "2 label columns (tags, mood)" in ambiguous.stderr
    assert "--set options.label=COLUMN" in ambiguous.stderr

    result = build(data, out, cache, "options.label=tags")
    assert result.returncode == 0, result.stderr
    store = open_store(str(out))
    assert store.task == "multilabel" and store.classes == NAMES
    np.testing.assert_array_equal(store.label_matrix, [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]])
    assert list(store.splits()["hf"]) == ["train", "train", "train", "test"]
    assert "mood" not in store.clips.columns  # another label column is not kept as metadata
    for row, f in enumerate([*freqs["train"], *freqs["test"]]):
        expected, _ = soundfile.read(str(files / f"{f}.wav"), dtype="int16")
        np.testing.assert_array_equal(store.read("waveform", row), expected)


def test_datasets_missing_is_one_line(tmp_path):
    shadow = tmp_path / "shadow" / "datasets"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named datasets')\n")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    result = run_pipe("build", "hf", "--source", str(tmp_path / "saved"), "--out", str(tmp_path / "s.zarr"),
                      env={"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: recipe 'hf' reads Hugging Face datasets with the datasets package: pip install datasets"
    ]


def test_hub_out_of_reach_is_one_line(tmp_path):
    result = run_pipe("build", "hf", "--set", "options.name=muzarr-tests/no-such-dataset", "--out", str(tmp_path / "s.zarr"),
                      "--set", f"options.cache_dir={tmp_path / 'cache'}", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load hub dataset 'muzarr-tests/no-such-dataset' from the Hugging Face hub" in lines[0]
    assert not (tmp_path / "s.zarr").exists()
