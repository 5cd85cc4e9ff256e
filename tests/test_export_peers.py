"""``pipe export --format datasets|webdataset``: a store's split read back equal by the peers' own readers.

``datasets.load_from_disk`` and ``webdataset.WebDataset`` read what the real ``pipe export`` wrote; every
array value and label must equal the store's. Without the packages the tests are skipped, unless
MUZARR_REQUIRE_PEERS=1.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pipeline import open_store

LOGMEL = "logmel/mel96_sr12000_fft512_hop256_pad37"


@pytest.fixture(autouse=True)
def _needs_peers():
    missing = [m for m in ("datasets", "webdataset") if importlib.util.find_spec(m) is None]
    if missing:
        message = f"pipe export's peer formats need {', '.join(missing)}: pip install -e '.[peers]'"
        if os.environ.get("MUZARR_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def run_pipe(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, check=False)


MANIFEST = """path,label,split
jazz/0.wav,jazz,train
jazz/1.wav,jazz,train
jazz/2.wav,jazz,valid
rock/0.wav,rock,train
rock/1.wav,rock,valid
rock/2.wav,rock,test
rock/broken.wav,rock,valid
"""


@pytest.fixture(scope="module")
def genre_store(tmp_path_factory):
    """A multiclass store of the csv recipe: 6 one-second tones in 2 classes, given splits, and a file that is not audio."""
    source = tmp_path_factory.mktemp("genres")
    for k, genre in enumerate(("jazz", "rock")):
        (source / genre).mkdir(parents=True)
        for i in range(3):
            t = np.arange(16000) / 16000
            soundfile.write(str(source / genre / f"{i}.wav"), 0.2 * np.sin(2 * np.pi * (200 + 100 * i + 50 * k) * t), 16000)
    (source / "rock" / "broken.wav").write_bytes(b"not a wav file" * 10)
    (source / "manifest.csv").write_text(MANIFEST)
    out = source / "genres.zarr"
    result = run_pipe("build", "csv", "--source", str(source), "--out", str(out), "--workers", "1", "--quiet",
                      "--set", "clip.seconds=1", "--set", "batch_clips=4")  # fmt: skip
    assert result.returncode == 1, result.stderr  # broken.wav is recorded as failed
    return str(out)


def test_datasets_export_of_a_multilabel_split_reads_back_equal(small_store, tmp_path):
    import datasets

    out = tmp_path / "demo-hf"
    result = run_pipe("export", small_store, "--format", "datasets", "--split", "train", "--arrays", f"waveform,{LOGMEL}",
                      "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    store = open_store(small_store)
    rows = store.split("random", "train")
    assert result.stdout.strip() == f"{out}: datasets, train {len(rows)} clip(s)"
    loaded = datasets.load_from_disk(str(out))
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train.column_names == ["clip_id", "waveform", LOGMEL, "labels"]
    assert train.features["labels"].feature.names == store.classes
    assert train.features[LOGMEL].dtype == "float16" and train.features[LOGMEL].shape == tuple(store.arrays[LOGMEL].shape[1:])
    assert train["clip_id"] == list(store.clips["clip_id"].iloc[rows])
    numpy = train.with_format("numpy")
    np.testing.assert_array_equal(np.stack(numpy["waveform"]), store.read("waveform", rows))
    np.testing.assert_array_equal(np.stack(numpy[LOGMEL]), store.read(LOGMEL, rows))
    hot = np.zeros((len(rows), len(store.classes)), np.float32)
    for i, on in enumerate(train["labels"]):
        hot[i, on] = 1
    np.testing.assert_array_equal(hot, store.label_matrix[rows])

    again = run_pipe("export", small_store, "--format", "datasets", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and again.stderr.count("\n") == 1
    assert datasets.load_from_disk(str(out))["train"].num_rows == len(rows)  # nothing replaced


def test_webdataset_export_reads_back_equal(genre_store, tmp_path):
    import webdataset

    out = tmp_path / "shards"
    result = run_pipe("export", genre_store, "--format", "webdataset", "--split", "given:valid", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{out}: webdataset, validation 2 clip(s); 1 clip(s) left out (failed, or failed an exported array)"
    every = tmp_path / "every"
    assert run_pipe("export", genre_store, "--format", "webdataset", "--split", "given:train", "--out", str(every)).returncode == 0
    store = open_store(genre_store)
    for folder, name, rows in [(out, "validation", [2, 4]), (every, "train", [0, 1, 3])]:
        assert [p.name for p in folder.iterdir()] == [f"{name}-000000.tar"]
        samples = list(webdataset.WebDataset(str(folder / f"{name}-000000.tar"), shardshuffle=False).decode())
        assert [int(s["__key__"]) for s in samples] == rows
        for sample, row in zip(samples, rows):
            record = sample["json"]
            assert record["clip_id"] == store.clips["clip_id"].iloc[row] and record["row"] == row
            assert record["label_index"] == store.label_matrix[row]
            assert record["label"] == store.classes[record["label_index"]] == record["clip_id"].split("/")[0]
            for array in store.arrays:
                value = sample[f"{array.replace('/', '.')}.npy"]
                assert value.dtype == store.read(array, row).dtype
                np.testing.assert_array_equal(value, store.read(array, row))


def test_multiclass_datasets_export_holds_a_class_label(genre_store, tmp_path):
    import datasets

    out = tmp_path / "genres-hf"
    result = run_pipe("export", genre_store, "--format", "datasets", "--split", "given:valid", "--arrays", "waveform",
                      "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    store = open_store(genre_store)
    rows = store.split("given", "valid")
    assert list(rows) == [2, 4]
    valid = datasets.load_from_disk(str(out))["validation"]
    assert valid.features["label"] == datasets.ClassLabel(names=["jazz", "rock"])
    assert valid["label"] == list(store.label_matrix[rows])
    np.testing.assert_array_equal(np.stack(valid.with_format("numpy")["waveform"]), store.read("waveform", rows))

    every = tmp_path / "every"  # no --split: every part of the first scheme that holds a stored clip
    result = run_pipe("export", genre_store, "--format", "datasets", "--arrays", "waveform", "--out", str(every))
    assert result.returncode == 0, result.stderr
    loaded = datasets.load_from_disk(str(every))
    parts = {name: store.split("random", part) for part, name in (("train", "train"), ("valid", "validation"), ("test", "test"))}
    assert list(loaded) == [name for name, rows in parts.items() if len(rows)]
    for name in loaded:
        assert loaded[name]["clip_id"] == list(store.clips["clip_id"].iloc[parts[name]])


def test_bad_export_options_are_one_line(genre_store, tmp_path):
    for args, message in [
        (["--format", "datasets", "--arrays", "nothing"], "has no array 'nothing'"),
        (["--format", "webdataset", "--split", "holdout"], "the part must be one of train, valid, test"),
        (["--format", "webdataset", "--split", "other:train"], "has no split scheme 'other'"),
        (["--format", "datasets", "--features", "gtzan57"], "use --arrays"),
        (["--format", "csv", "--split", "train"], "needs --features SET"),
    ]:
        result = run_pipe("export", genre_store, *args, "--out", str(tmp_path / "x"))
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, (args, result.stderr)
        assert not (tmp_path / "x").exists()


def test_a_track_store_exports_whole_tracks(tmp_path):
    import datasets

    out = tmp_path / "tracks.zarr"
    built = run_pipe("build", "demo", "--source", str(tmp_path / "audio"), "--out", str(out), "--workers", "1", "--quiet",
                     "--set", "options.n_clips=10", "--set", "options.seconds=2", "--set", "clip.mode=track",
                     "--set", "clip.max_seconds=10", "--set", "batch_clips=5", "--only", "--waveform", "sample_rate=8000")  # fmt: skip
    assert built.returncode == 0, built.stderr
    result = run_pipe("export", str(out), "--format", "datasets", "--split", "train", "--out", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    store = open_store(str(out))
    train = datasets.load_from_disk(str(tmp_path / "hf"))["train"]
    assert train.column_names == ["clip_id", "waveform", "labels"]  # not the extents that place the tracks in the store
    assert str(train.data.schema.field("waveform").type) == "list<item: int16>"
    for row, values in zip(store.split("random", "train"), train["waveform"]):
        np.testing.assert_array_equal(np.asarray(values, dtype=np.int16), store.track("waveform", int(row)))
