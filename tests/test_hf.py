"""Recipe ``hf``: datasets written by Hugging Face ``datasets`` itself, built with the real ``pipe build hf``.

Embedded WAV and MP3 bytes (``save_to_disk`` and ``to_parquet``, which embed a path's file), audio given by
path (Parquet from datasets' own ``ParquetWriter``), labels from
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
    from datasets.arrow_writer import ParquetWriter

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
        dataset = dataset.cast_column("audio", datasets.Audio())
        # datasets' own Parquet writer, as it writes a split: save_to_disk and to_parquet would embed the files
        with ParquetWriter(features=dataset.features, path=str(data / f"{split}-00000-of-00001.parquet")) as writer:
            writer.write_table(dataset.data.table)
            writer.finalize()
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
    assert list(store.clips["path"]) == [str(files / f"{f}.wav") for f in [*freqs["train"], *freqs["test"]]]
    assert not (cache.exists() and any(cache.rglob("*.wav")))  # read where they are: nothing extracted
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


def test_multi_hot_labels_split_names_and_ids_at_index_time(tmp_path):
    import datasets

    from pipeline.datasets.hf import index_hf
    from pipeline.errors import MuzarrError

    data = tmp_path / "data"
    (data / "validation").mkdir(parents=True)
    features = datasets.Features({"audio": datasets.Audio(), "hot": datasets.Sequence(datasets.Value("int8")),
                                  "key": datasets.Value("string")})  # fmt: skip

    def write(path, hot, keys, audio):
        rows = {"audio": audio, "hot": hot, "key": keys}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))

    write(data / "validation" / "part.parquet", [[1, 0, 1]], ["a"], [{"bytes": wav_bytes(300), "path": None}])
    soundfile.write(str(tmp_path / "x.wav"), tone(400), RATE, subtype="PCM_16")
    write(data / "holdout-00000-of-00001.parquet", [[0, 1, 0], [0, 0, 0]], ["b", "c"],
          [{"bytes": None, "path": str(tmp_path / "x.wav")}, None])  # fmt: skip
    cache = tmp_path / "cache"
    index = index_hf(data, label="hot", classes="drums;bass;voice", id_column="key", cache_dir=str(cache))
    assert index.task == "multilabel" and index.classes == ("drums", "bass", "voice")
    # holdout-00000-of-00001.parquet names no split: train, as the hub reads it (train first, then validation)
    np.testing.assert_array_equal(index.labels, [[0, 1, 0], [0, 0, 0], [1, 0, 1]])
    assert list(index.clips["clip_id"]) == ["b", "c", "a"] and list(index.clips["hf_split"]) == ["train", "train", "validation"]
    assert list(index.splits["hf"]) == ["train", "train", "valid"]
    # bytes extracted by content (a WAV named .wav); a row without audio: a path that fails as "file not found"
    extracted = cache / index.clips["path"][2]
    assert extracted.suffix == ".wav" and extracted.read_bytes() == wav_bytes(300)
    assert (cache / index.clips["path"][0]).read_bytes() == (tmp_path / "x.wav").read_bytes()
    assert index.clips["path"][1] == "no-audio-in-dataset/train/1"
    assert index.info["rows_without_audio"] == 1 and index.info["missing_audio"] == 1
    assert index.info["extracted_audio"] + index.info["audio_by_path"] == 2  # x.wav: embedded or not, read the same
    unnamed = index_hf(data, label="hot", cache_dir=str(cache))
    assert unnamed.classes == ("0", "1", "2") and list(unnamed.clips["clip_id"]) == ["train/0", "train/1", "validation/0"]
    with pytest.raises(MuzarrError, match=r"hot holds 3 values, not one per class \(2 in options.classes\)"):
        index_hf(data, label="hot", classes="drums;bass", cache_dir=str(cache))
    with pytest.raises(MuzarrError, match="no ClassLabel column; columns: audio, hot, key: choose one with --set options.label"):
        index_hf(data, cache_dir=str(cache))
