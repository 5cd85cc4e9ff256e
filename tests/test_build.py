"""End-to-end builds on a real Dask cluster, real MP3/WAV files and real Zarr/Parquet output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import MuzarrError, open_store
from pipeline.build import build
from pipeline.config import apply_overrides, config_for, load_catalog
from pipeline.features.spectral import LogMel

N_CLIPS = 24


def demo_config(**settings):
    catalog = load_catalog()
    base = config_for("demo", catalog["demo"])
    return apply_overrides(
        base,
        settings={"options.n_clips": N_CLIPS, "options.seconds": 2.0, "clip.seconds": 2.0, "batch_clips": 8, **settings},
    )


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo_audio")


@pytest.fixture(scope="module")
def built(demo_source, tmp_path_factory):
    """The demo store built with one and with two workers."""
    out = tmp_path_factory.mktemp("stores")
    reports = {}
    for workers in (1, 2):
        reports[workers] = build(
            demo_config(), source=str(demo_source), out=str(out / f"w{workers}.zarr"), workers=workers, progress=False
        )
    return reports


def test_demo_store_contents(built, demo_source):
    report = built[1]
    assert (report.n_clips, report.n_ok, report.n_failed) == (N_CLIPS, N_CLIPS, 0)
    store = open_store(report.url)
    assert store.complete and store.task == "multilabel"
    assert store.classes == ["drums", "bass", "melody", "noise", "fast", "slow"]
    assert set(store.arrays) == {
        "waveform",
        "logmel/mel64_sr16000_fft1024_hop512",
        "logmel/mel96_sr12000_fft512_hop256_pad37",
    }
    wave = store.read("waveform", slice(None))
    assert wave.shape == (N_CLIPS, 32000) and wave.dtype == np.int16
    mel = store.read("logmel/mel96_sr12000_fft512_hop256_pad37", [0, 5])
    assert mel.shape == (2, 96, 1 + 24000 // 256 + 74) and mel.dtype == np.float16
    # Files on disk: half MP3, half WAV; every clip's waveform is its decoded file at 16 kHz.
    clips = store.clips
    assert clips["path"].str.endswith(".mp3").sum() == N_CLIPS // 2
    import librosa

    for row in (0, 1):
        reference, _ = librosa.load(demo_source / clips["path"][row], sr=16000)
        expected = np.clip(np.rint(reference[:32000] * 32768), -32768, 32767)
        np.testing.assert_array_equal(wave[row][: len(expected)], expected)
        logmel = LogMel(sample_rate=12000, n_mels=96, n_fft=512, hop_length=256, pad_frames=37, storage="float32")
        y12, _ = librosa.load(demo_source / clips["path"][row], sr=12000)
        y12 = np.pad(y12, (0, max(0, 24000 - len(y12))))[:24000]
        np.testing.assert_allclose(store.read(logmel.name, row), logmel.extract(y12, sampling_rate=12000), atol=0.07)


def test_labels_and_splits_are_plain_parquet(built):
    url = built[1].url
    labels = pd.read_parquet(f"{url}/tables/labels.parquet")
    splits = pd.read_parquet(f"{url}/tables/splits.parquet")
    assert list(labels.columns) == ["clip_id", "drums", "bass", "melody", "noise", "fast", "slow"]
    assert len(labels) == len(splits) == N_CLIPS
    assert set(splits["random"]) == {"train", "valid", "test"}
    assert not (labels.iloc[:, 1:].to_numpy() & labels[["fast"]].to_numpy() & labels[["slow"]].to_numpy()).any()
    store = open_store(url)
    counts = store.manifest.split_counts["random"]
    assert sum(counts.values()) == N_CLIPS and counts == {p: len(store.split("random", p)) for p in counts}


def test_one_and_two_workers_write_identical_content(built):
    one, two = (open_store(built[w].url) for w in (1, 2))
    assert {n: a.checksum for n, a in one.arrays.items()} == {n: a.checksum for n, a in two.arrays.items()}
    for name in one.arrays:
        np.testing.assert_array_equal(one.array(name)[:], two.array(name)[:])
    for table in ("labels", "splits", "checksums", "clips"):
        pd.testing.assert_frame_equal(one.table(table), two.table(table))


def test_manifest_records_how_the_store_was_made(built):
    manifest = open_store(built[1].url).manifest.to_dict()  # as the store holds it
    assert manifest["config"]["features"][2] == {
        "kind": "logmel", "sample_rate": 12000, "n_mels": 96, "n_fft": 512, "hop_length": 256, "f_min": 0.0,
        "f_max": None, "log": "db", "top_db": 80.0, "log_compression": 10000.0, "pad_frames": 37, "storage": "float16",
    }
    assert {"librosa", "soxr", "zarr", "numpy", "libsndfile", "dask"} <= set(manifest["versions"])
    assert manifest["counts"] == {"ok": N_CLIPS, "failed": 0}
    arrays = manifest["arrays"]
    assert arrays["waveform"]["shards"][0] == 8 and len(arrays["waveform"]["checksum"]) == 64


def test_checksums_table_matches_the_data(built):
    from pipeline.store.layout import clip_digests, combine_digests

    store = open_store(built[2].url)
    table = store.table("checksums")
    for name in store.arrays:
        digests = table.loc[table["array"] == name, "digest"].tolist()
        assert digests == clip_digests(store.array(name)[:])
        assert combine_digests(digests) == store.arrays[name].checksum


def test_corrupt_files_are_recorded_and_the_build_goes_on(demo_source, tmp_path):
    from pipeline.datasets.demo import index_demo
    from pipeline.index import DatasetIndex

    config = demo_config()
    index = index_demo(str(demo_source), **config.options)
    broken = tmp_path / "src"
    broken.mkdir()
    paths = []
    for i, path in enumerate(index.clips["path"]):
        target = broken / path.replace("/", "_")
        data = (demo_source / path).read_bytes()
        if i == 3:
            data = b""  # zero-byte file, like three clips of the real MTAT release
        elif i == 10:
            data = b"this is not audio" * 50
        target.write_bytes(data)
        paths.append(target.name)
    clips = index.clips.assign(path=paths)
    index = DatasetIndex(str(broken), clips, index.task, index.classes, index.labels, index.splits)
    report = build(config, source=str(broken), out=str(tmp_path / "s.zarr"), index=index, workers=2, progress=False)
    assert (report.n_ok, report.n_failed, report.exit_code) == (N_CLIPS - 2, 2, 1)
    failed = {f.clip_id: f for f in report.failures}
    assert set(failed) == {"demo_00003", "demo_00010"}
    assert failed["demo_00003"].stage == "decode" and "soundfile" in failed["demo_00003"].message
    store = open_store(report.url)
    assert store.status.tolist().count(2) == 2
    assert store.clips.set_index("clip_id").loc["demo_00010", "status"] == "failed"
    # A failed clip is never read back as silence, and splits leave it out.
    with pytest.raises(MuzarrError, match="demo_00003.*failed"):
        store.read("waveform", 3)
    with pytest.raises(MuzarrError, match="failed"):
        store.read("waveform", [1, 2, 3])
    assert 3 not in store.split("random", "all") and 10 not in store.split("random", "all")
    # Every good clip is stored exactly as in the clean build.
    good = np.flatnonzero(store.ok)
    assert len(good) == N_CLIPS - 2 and np.abs(store.read("waveform", good)).max(axis=1).min() > 0


def test_strict_stops_at_the_first_failure(demo_source, tmp_path):
    from pipeline.datasets.demo import index_demo
    from pipeline.index import DatasetIndex

    config = demo_config()
    index = index_demo(str(demo_source), **config.options)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....")
    clips = index.clips.copy()
    clips.loc[0, "path"] = str(tmp_path / "bad.wav")
    index = DatasetIndex(str(demo_source), clips, index.task, index.classes, index.labels, index.splits)
    with pytest.raises(MuzarrError, match="--strict: clip demo_00000"):
        build(config, source=str(demo_source), out=str(tmp_path / "s.zarr"), index=index, workers=1, strict=True, progress=False)


def run_pipe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_build_info_and_rerun(demo_source, tmp_path):
    out = tmp_path / "cli.zarr"
    common = ["build", "demo", "--source", str(demo_source), "--out", str(out), "--workers", "1", "--quiet",
              "--set", f"options.n_clips={N_CLIPS}", "--set", "options.seconds=2.0", "--set", "clip.seconds=2.0",
              "--set", "batch_clips=8", "--tabular", "gtzan57"]
    first = run_pipe(*common)
    assert first.returncode == 0, first.stderr
    assert f"{N_CLIPS} of {N_CLIPS} clips stored, 0 failed" in first.stdout
    again = run_pipe(*common)
    assert again.returncode == 0 and "0 batches run, 3 reused" in again.stdout
    info = run_pipe("info", str(out))
    assert info.returncode == 0
    assert f"clips     {N_CLIPS} total, {N_CLIPS} ok, 0 failed" in info.stdout
    assert "tabular/gtzan57" in info.stdout and f"shape ({N_CLIPS}, 57) float32" in info.stdout
    assert "random     train" in info.stdout and "drums" in info.stdout
    changed = run_pipe(*common[:-2], "--set", "logmel.top_db=60")
    assert changed.returncode == 2
    assert "different configuration" in changed.stderr
    assert (
        "feature logmel/mel96_sr12000_fft512_hop256_pad37: changed by this build to "
        "logmel/mel96_sr12000_fft512_hop256_topdb60_pad37:\n      top_db: store has 80.0, this build asks for 60"
    ) in changed.stderr
    assert "Traceback" not in changed.stderr


def test_command_line_features_replace_the_catalogs_of_the_same_name():
    # One store holds one `waveform`: the option must change the catalog's, not be dropped.
    catalog = load_catalog()
    base = config_for("demo", catalog["demo"])
    changed = apply_overrides(
        base,
        add_features=[
            {"kind": "waveform", "sample_rate": 22050, "storage": "float32"},
            {"kind": "logmel", "sample_rate": 12000, "n_mels": 96, "n_fft": 512, "hop_length": 256, "pad_frames": 37,
             "storage": "float32"},
            {"kind": "logmel", "n_mels": 128, "sample_rate": 16000},
        ],
    )
    before, after = [f.name for f in base.features], [f.name for f in changed.features]
    assert after == before + ["logmel/mel128_sr16000_fft512_hop256"]  # same places, one new variant
    features = {f.name: f for f in changed.features}
    assert (features["waveform"].sample_rate, features["waveform"].storage) == (22050, "float32")
    assert features["logmel/mel96_sr12000_fft512_hop256_pad37"].storage == "float32"
    assert features["logmel/mel64_sr16000_fft1024_hop512"] == {f.name: f for f in base.features}["logmel/mel64_sr16000_fft1024_hop512"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "nosuch"], "unknown dataset 'nosuch'"),
        (["build", "demo", "--logmel", "n_mels"], "not KEY=VALUE"),
        (["build", "demo", "--logmel", "n_mels=0"], "n_mels=0 must be a positive integer"),
        (["build", "demo", "--set", "clip.length=3"], "clip has no parameter 'length'"),
        (["build", "demo", "--set", "mfcc.n=3"], "no setting or feature named 'mfcc'"),
        (["build", "demo", "--tabular", "nosuch"], "unknown feature kind 'nosuch'"),
        (["build", "demo", "--only"], "--only needs"),
        (["build", "demo", "--workers", "0"], "--workers"),
        (["info", "/nonexistent/x.zarr"], "no muzarr store"),
    ],
)
def test_cli_errors_are_one_clear_line(args, message):
    result = run_pipe(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, line",
    [
        (["--set", "clip.secnds=3"], ("error: --set clip.secnds: clip has no parameter 'secnds' (did you mean clip.seconds?); "
         "its keys: clip.anchor, clip.hop_seconds, clip.max_seconds, clip.mode, clip.partial, clip.seconds, clip.total_seconds")),
        (["--set", "clipp.seconds=3"], ("error: --set clipp.seconds: no setting or feature named 'clipp' (did you mean clip?); "
         "--set takes clip.<parameter>, options.<recipe option>, batch_clips or <feature>.<parameter>, for a feature here: "
         "logmel, logmel/mel64_sr16000_fft1024_hop512, logmel/mel96_sr12000_fft512_hop256_pad37, waveform")),
        (["--logmel", "n_mel=128"], ("error: --logmel n_mel=128: unknown parameter(s) ['n_mel'] for feature 'logmel' "
         "(did you mean n_mels?); known: ['f_max', 'f_min', 'hop_length', 'log', 'log_compression', 'n_fft', 'n_mels', "
         "'pad_frames', 'sample_rate', 'storage', 'top_db']")),
        (["--set", "logmel.n_mel=128"], ("error: --set logmel.n_mel: logmel has no parameter 'n_mel' (did you mean logmel.n_mels?)")),
        (["--set", "batch_clip=4"], ("error: --set batch_clip: no setting named 'batch_clip' (did you mean batch_clips?)")),
        (["--set", "options.n_clip=8"], ("error: recipe 'demo' has no option(s) ['n_clip'] (did you mean n_clips?); "
         "its options: ['n_clips', 'seconds', 'seed', 'split_sizes']")),
    ],
)
def test_a_misspelt_setting_gets_one_line_with_a_suggestion(tmp_path, args, line):
    """Issue #22, newcomer item 6: a misspelt --set key, feature parameter or recipe option is refused in one
    line that blames the option that gave it, suggests the closest valid name and lists the valid ones."""
    result = run_pipe("build", "demo", "--source", str(tmp_path / "audio"), "--out", str(tmp_path / "s.zarr"), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert errors == [x for x in result.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and errors[0].startswith(line), errors
    assert "--feature" not in result.stderr and "no feature named" not in result.stderr
    assert not (tmp_path / "s.zarr").exists()  # refused before anything is written


def test_cli_help_has_examples():
    for command in ("build", "info", "ls"):
        result = run_pipe(command, "--help")
        assert result.returncode == 0 and "Example" in result.stdout


def test_pipe_ls_lists_the_catalog():
    result = run_pipe("ls")
    assert result.returncode == 0
    for name in ("demo", "mtat", "gtzan", "fma_small", "folder", "csv"):
        assert f"{name}  (" in result.stdout
    assert "logmel/mel96_sr12000_fft512_hop256_pad37" in result.stdout
    # a track store has no clip length (issue #21 item 13: it said "clip track 3 s")
    assert "clip track (whole files, at most 1800 s each)" in result.stdout and "clip track 3 s" not in result.stdout


def test_loud_clips_are_stored_clipped_and_the_store_says_so(tmp_path):
    # Decoded MP3s and resampled loud masters overshoot ±1; int16 storage clips them, and the
    # build must say which clips lost what instead of clipping silently.
    import soundfile

    from pipeline.config import BuildConfig
    from pipeline.describe import describe
    from pipeline.index import DatasetIndex

    sr, n = 16000, 8000
    t = np.arange(n) / sr
    waves = {"quiet": 0.5 * np.sin(2 * np.pi * 440 * t), "loud": 1.5 * np.sin(2 * np.pi * 440 * t)}
    for name, wave in waves.items():
        soundfile.write(tmp_path / f"{name}.wav", wave.astype(np.float32), sr, subtype="FLOAT")
    index = DatasetIndex(
        root=str(tmp_path), clips=pd.DataFrame({"clip_id": list(waves), "path": [f"{k}.wav" for k in waves]}),
        task="multiclass", classes=("x",), labels=np.zeros(2, np.int16), splits=pd.DataFrame({"random": ["train", "test"]}),
    )
    expected = int(np.count_nonzero(np.abs(np.rint(waves["loud"].astype(np.float32).astype(np.float64) * 32768)) > 32767.5))

    def store_with(storage, *more):
        config = BuildConfig.from_dict({
            "dataset": "loud", "recipe": "folder", "task": "multiclass", "splits": ["random"],
            "clip": {"mode": "full", "seconds": n / sr}, "batch_clips": 2,
            "features": [{"kind": "waveform", "sample_rate": sr, "storage": storage}, *more],
        })
        report = build(config, source=str(tmp_path), out=str(tmp_path / f"{storage}.zarr"), index=index, workers=1, progress=False)
        return report, open_store(report.url)

    report, store = store_with("int16")
    assert report.n_failed == 0 and report.exit_code == 0  # a note is not a failure
    note = store.clips.set_index("clip_id")["note"]
    assert pd.isna(note["quiet"])
    assert note["loud"] == f"waveform: {expected} sample(s) beyond ±1 (peak 1.500) clipped by int16 storage; --waveform storage=float32 keeps them"
    assert store.manifest.to_dict()["notes"] == {a: x.to_dict() for a, x in report.notes.items()} == {
        "waveform": {"clips": 1, "examples": [{"clip_id": "loud", "message": note["loud"].removeprefix("waveform: ")}]}
    }
    loud = store.read("waveform", 1)
    assert loud.max() == 32767 and loud.min() == -32768 and np.count_nonzero(np.abs(loud.astype(int)) >= 32767) >= expected
    assert "waveform: 1 clip(s) noted (the clips table's 'note' column), e.g. loud: " in describe(report.url)
    # Growing the store by a log-mel keeps the waveform's notes (the waveform is not recomputed).
    grown, store = store_with("int16", {"kind": "logmel", "n_mels": 32, "sample_rate": sr})
    assert grown.batches_run == 1 and grown.notes == report.notes
    assert store.clips.set_index("clip_id")["note"]["loud"] == note["loud"]

    report, store = store_with("float32")
    assert report.notes == {} and store.clips["note"].isna().all()
    assert store.read("waveform", 1).max() == pytest.approx(1.5, abs=1e-4)


# Issue #21 items 3, 6, 13 and 14: each was accepted and then failed every clip (or wrote a store no reader
# takes); each must now be one line, exit 2, before anything is written.
REFUSED = [
    (["--logmel", "top_db=-10"], "feature logmel/mel96_sr16000_fft512_hop256_topdb-10: top_db=-10 must be a positive number of dB"),
    (["--logmel", "n_fft=3,n_mels=1"], "n_fft=3 must be even (a power of two is fastest), e.g. n_fft=4"),
    (["--logmel", "n_fft=1000000000"], "n_fft=1000000000 is more than 65536 samples per frame (4.1 s at 16000 Hz)"),
    (["--logmel", "log_compression=-1,log=log1p"], ("log_compression=-1 must be a positive number no larger than 3.37e+33, "
     "which keeps log(1 + C·x) finite in float32")),
    (["--logmel", "hop_length=4096"], "hop_length=4096 is longer than n_fft=512: frames would skip 3584 samples"),
    (["--logmel", "n_fft=64,n_mels=128,hop_length=32"], ("n_mels=128 leaves 70 mel band(s) empty (no FFT bin of n_fft=64 "
     "at 16000 Hz falls inside them, between 0 and 8000 Hz): use n_mels <= 23")),
    (["--logmel", "n_mels=4096"], "n_mels=4096 leaves 3586 mel band(s) empty"),
    (["--set", "clip.seconds=10000", "--only", "--waveform", "sample_rate=48000,storage=float32"],
     ("batch_clips=4 makes every shard of waveform 7.2 GiB (4 clips of 1.8 GiB), more than the 4.0 GiB a reader holds in "
     "memory: use --set batch_clips=")),
    (["--set", "batch_clips=1000000000000"], "batch_clips=1000000000000 makes every shard of waveform 29103.8 TiB (1000000000000 clips of 32000 bytes)"),
    (["--set", "clip.mode=track", "--set", "clip.seconds=3"], ("--set clip.seconds=3: clip.mode=track stores every file "
     "whole, at its own length, so clip.seconds does nothing there: drop it")),
]  # fmt: skip


def test_options_that_cannot_work_are_refused_before_anything_is_written(tmp_path):
    import soundfile

    from pipeline.datasets.demo import index_demo

    guard = Path(__file__).with_name("_guarded.py")
    source, out = tmp_path / "audio", tmp_path / "tg.zarr"
    common = ["--source", str(source), "--set", "options.n_clips=16", "--set", "options.seconds=1", "--set", "clip.seconds=1",
              "--set", "batch_clips=4", "--workers", "1", "--quiet"]  # fmt: skip
    assert run_pipe("build", "demo", "--out", str(out), *common).returncode == 0
    # A second source whose first clip does not decode and whose second (a float WAV) overflows every log-mel.
    loud_source = tmp_path / "loud"
    index = index_demo(str(loud_source), n_clips=16, seconds=1.0)
    first, second = (loud_source / p for p in index.clips["path"].iloc[:2])
    first.write_bytes(b"not audio")
    samples, rate = soundfile.read(second, dtype="float32")
    soundfile.write(second, samples * np.float32(1e30), rate, subtype="FLOAT")
    fresh = tmp_path / "fresh.zarr"
    commands = [["pipe", "build", "demo", "--out", str(out), *common, *args] for args, _ in REFUSED]
    commands += [["pipe", "build", "demo", "--out", str(fresh), *common, *args] for args, _ in REFUSED[:1] + REFUSED[7:9]]
    probe = ["--source", str(loud_source), *common[2:], "--only", "--waveform", "sample_rate=16000", "--logmel", "n_mels=32,sample_rate=16000"]
    commands += [["pipe", "build", "demo", "--out", str(target), *probe] for target in (out, fresh)]
    before = {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    report = tmp_path / "report.json"
    words = [w for command in commands for w in (*command, ";;")][:-1]
    guarded = subprocess.run([sys.executable, str(guard), str(report), str(tmp_path / "outside"), str(64 << 30), "--", *words],
                             capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    import json

    results = json.loads(report.read_text())["results"]
    probe_message = (f"feature logmel/mel32_sr16000_fft512_hop256 fails on the first clip, {index.clips['clip_id'].iloc[1]} "
                     f"({second}): its values are not finite (NaN or infinity); nothing was written")  # fmt: skip
    messages = [m for _, m in REFUSED] + [m for _, m in REFUSED[:1] + REFUSED[7:9]] + [probe_message] * 2
    for result, message in zip(results, messages, strict=True):
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
        assert message in lines[0], (message, lines[0])
    after = {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert after == before  # not a byte, not an mtime: not even the lock was taken
    assert not fresh.exists()
