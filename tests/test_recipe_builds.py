"""Every real-dataset recipe built end to end from the real fixture audio (issue 3).

Each test builds a store on a real Dask cluster (the ``pipe`` CLI in a subprocess, or
:func:`pipeline.build.build` with one shared worker) and checks what was stored, what
failed and why, and what ``pipe info`` tells a person about it. Metadata files that are
not in the fixtures (MTAT's ``annotations_final.csv``, FMA's ``tracks.csv``, a CSV
manifest) are written by the tests in their exact real formats; audio is symlinked from
``../shared/fixtures``, never copied into the repository.
"""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from helpers_datasets import (
    MTAT_TAG_COLUMNS,
    fma_track,
    read_mtat_fixture,
    write_annotations_final,
    write_tracks_csv,
)

from pipeline import MuzarrError, open_store
from pipeline.audio import float_to_int16, resample, to_mono
from pipeline.build import build, build_index, make_client
from pipeline.config import BuildConfig, apply_overrides, config_for, load_catalog
from pipeline.describe import describe

ROOT = Path(__file__).resolve().parents[1]
MTAT_CLIP = "e/joram-moments_of_clarity-08-solipsism-59-88.mp3"
MEL96 = "logmel/mel96_sr12000_fft512_hop256_pad37"
UNRECOGNISED = "soundfile: Format not recognised; PyAV: Invalid data found when processing input"


def run_pipe(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd)


def assert_no_crash(result: subprocess.CompletedProcess) -> None:
    """Exit status 0 (all stored) or 1 (some clips failed): never 2 (bad input) or a traceback."""
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout


def catalog_config(name: str, **settings):
    config = config_for(name, load_catalog()[name])
    return apply_overrides(config, settings=settings) if settings else config


def row_of(store, clip_id: str) -> int:
    return int(np.flatnonzero(store.clips["clip_id"].to_numpy() == clip_id)[0])


def expected_int16(path: Path, *, sample_rate: int, n_samples: int, samples: np.ndarray | None = None,
                   rate: int | None = None) -> np.ndarray:
    """The waveform a store must hold: decoded (soundfile unless given), mono, soxr HQ, zero-padded, int16."""
    if samples is None:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        samples = data.T
    y = resample(to_mono(samples), orig_sr=rate, target_sr=sample_rate)[:n_samples]
    return float_to_int16(np.pad(y, (0, n_samples - len(y))))


def pyav_decode(path: Path) -> tuple[np.ndarray, int]:
    """Decode with PyAV directly: ``[shape=(channels, n)]`` float32 and the rate (an independent reading)."""
    import av

    blocks = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            if not frame.format.is_planar:
                data = data.reshape(-1, len(frame.layout.channels)).T
            scale = {"s16": 32768.0, "s32": 2147483648.0}.get(frame.format.name.rstrip("p"), 1.0)
            blocks.append(data.astype(np.float64) / scale)
        return np.concatenate(blocks, axis=1).astype(np.float32), stream.codec_context.sample_rate


@pytest.fixture(scope="module")
def client():
    """One Dask worker process shared by the library-level builds of this module."""
    client = make_client(workers=1)
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


# --------------------------------------------------------------------------- GTZAN


def test_gtzan_cli_build_stores_the_readable_clips_and_reports_the_broken_one(fixtures_dir, gtzan_cli_build):
    result, out = gtzan_cli_build  # `pipe build gtzan --source ../shared/fixtures/gtzan` from the repo root
    assert_no_crash(result)
    assert result.returncode == 1  # documented: the store is complete, some clips failed
    assert "5 of 6 clips stored, 1 failed" in result.stdout
    assert "failed jazz.00054 (" in result.stdout and "jazz/jazz.00054.wav) at decode: soundfile: " in result.stdout

    store = open_store(out)
    assert store.complete and store.task == "multiclass" and len(store.classes) == 10
    # The Kaggle layout is genres_original/: other_formats/blues.00099.mp3 is not part of it.
    assert sorted(store.clips["clip_id"]) == [
        "blues.00000", "classical.00000", "country.00000", "jazz.00000", "jazz.00054", "rock.00000",
    ]
    assert store.clips["path"].str.startswith("genres_original/").all()
    status = dict(zip(store.clips["clip_id"], store.clips["status"]))
    assert [c for c, s in status.items() if s != "ok"] == ["jazz.00054"]
    failure = store.clips.set_index("clip_id").loc["jazz.00054"]
    assert failure["stage"] == "decode"
    assert failure["error"] == UNRECOGNISED
    with pytest.raises(MuzarrError, match="jazz.00054.*failed"):
        store.read("waveform", row_of(store, "jazz.00054"))

    # 22050 Hz int16 PCM in, 22050 Hz int16 out: the stored clip is the file's samples, exactly.
    blues = fixtures_dir / "gtzan" / "genres_original" / "blues" / "blues.00000.wav"
    pcm, rate = soundfile.read(str(blues), dtype="int16")
    wave = store.read("waveform", row_of(store, "blues.00000"))
    assert rate == 22050 and wave.shape == (661500,)  # 30 s of the file's 661,794 samples
    np.testing.assert_array_equal(wave, pcm[:661500])

    labels = store.labels()
    assert list(labels.columns) == ["clip_id", "label", "label_index"]
    by_id = labels.set_index("clip_id")
    assert by_id.loc["rock.00000", "label"] == "rock" and by_id.loc["rock.00000", "label_index"] == 9
    assert (by_id["label"] == [c.split(".")[0] for c in by_id.index]).all()
    assert "random" in store.splits().columns
    assert sorted(store.split("random", "all")) == sorted(row_of(store, c) for c, s in status.items() if s == "ok")

    info = run_pipe("info", str(out))
    assert info.returncode == 0, info.stderr
    assert "6 total, 5 ok, 1 failed" in info.stdout
    assert "failed clips (1 at decode)" in info.stdout
    broken = fixtures_dir.resolve() / "gtzan" / "genres_original" / "jazz" / "jazz.00054.wav"
    assert f"  jazz.00054  {broken}\n      [decode] {UNRECOGNISED}" in info.stdout


# --------------------------------------------------------------------------- MTAT


@pytest.fixture(scope="module")
def mtat_store(fixtures_dir, tmp_path_factory, client):
    """The real clip, a zero-byte clip, a clip cut inside its ID3 tag and a clip cut at 40 % of its bytes."""
    root = tmp_path_factory.mktemp("mtat")
    real = fixtures_dir / "mtat" / MTAT_CLIP
    data = real.read_bytes()
    id3_size = 10 + ((data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9])  # syncsafe tag size
    assert data[:3] == b"ID3" and data[id3_size : id3_size + 2] == b"\xff\xf3"  # MPEG-2 layer III sync
    files = {
        MTAT_CLIP: None,  # symlink to the real clip
        "6/norine_braun-now_and_zen-08-gently-117-146.mp3": b"",  # zero bytes, as in the real release
        "d/electric_frankenstein-sick_songs-01-action_high-117-146.mp3": data[: id3_size // 2],  # no audio at all
        "d/seismic_anamoly-afterburner-01-afterburner-0-29.mp3": data[: int(len(data) * 0.4)],  # cut mid-frame
    }
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(exist_ok=True)
        if content is None:
            path.symlink_to(real)
        else:
            path.write_bytes(content)
    _, truth = read_mtat_fixture(fixtures_dir / "mtat")
    tags = {  # clip_id -> tags; 37386 carries its real top-50 label (techno) plus two of the 188
        "37386": ["techno", "electronica", "trance"],
        "35644": ["guitar", "slow"],
        "224": ["rock", "loud", "guitar"],
        "234": [],
    }
    paths = {"37386": MTAT_CLIP, "35644": "6/norine_braun-now_and_zen-08-gently-117-146.mp3",
             "224": "d/electric_frankenstein-sick_songs-01-action_high-117-146.mp3",
             "234": "d/seismic_anamoly-afterburner-01-afterburner-0-29.mp3"}
    rows = [(cid, [int(t in tags[cid]) for t in MTAT_TAG_COLUMNS], paths[cid]) for cid in paths]
    write_annotations_final(root / "annotations_final.csv", rows, MTAT_TAG_COLUMNS)
    config = catalog_config("mtat")
    report = build(config, source=str(root), out=str(root / "mtat.zarr"), client=client, progress=False)
    return {"root": root, "report": report, "tags": tags, "truth": truth}


def test_mtat_catalog_recipe_stores_the_real_clip_with_labels_and_splits(mtat_store, fixtures_dir):
    report, tags = mtat_store["report"], mtat_store["tags"]
    assert (report.n_clips, report.n_ok, report.n_failed, report.exit_code) == (4, 2, 2, 1)
    store = open_store(report.url)
    assert set(store.arrays) == {"waveform", MEL96, "logmel/mel64_sr16000_fft1024_hop512"}
    row = row_of(store, "37386")
    labels = store.labels().set_index("clip_id")
    assert len(store.classes) == 50
    # Multi-hot exactly as written, and 37386's real top-50 ground truth agrees (techno).
    for tag in store.classes:
        assert labels.loc["37386", tag] == int(tag in tags["37386"])
    assert set(tags["37386"]) <= set(store.classes)
    text = (fixtures_dir / "mtat" / "metadata" / "output_labels_mtt.txt").read_text()
    top50 = ast.literal_eval(text.split("=", 1)[1].strip())
    real_positive = [top50[i] for i in np.flatnonzero(mtat_store["truth"][37386])]
    assert real_positive == ["techno"] and labels.loc["37386", "techno"] == 1

    splits = store.splits().set_index("clip_id")
    assert splits.loc["37386", "dieleman"] == "test" and splits.loc["37386", "clean"] == "test"
    assert splits.loc["234", "dieleman"] == "test" and pd.isna(splits.loc["234", "clean"])  # no top-50 tag
    assert splits.loc["35644", "dieleman"] == "train"
    assert row in store.split("dieleman", "test") and row in store.split("clean", "test")

    wave = store.read("waveform", row)
    assert wave.shape == (465920,)  # 29.12 s at 16 kHz
    np.testing.assert_array_equal(
        wave, expected_int16(fixtures_dir / "mtat" / MTAT_CLIP, sample_rate=16000, n_samples=465920)
    )


def test_mtat_log_mel_96_matches_librosa(mtat_store, fixtures_dir):
    import librosa

    store = open_store(mtat_store["report"].url)
    stored = store.read(MEL96, row_of(store, "37386")).astype(np.float32)
    y, _ = librosa.load(fixtures_dir / "mtat" / MTAT_CLIP, sr=12000)
    y = np.pad(y, (0, max(0, 349440 - len(y))))[:349440]  # 29.12 s at 12 kHz
    mel = librosa.feature.melspectrogram(y=y, sr=12000, n_fft=512, hop_length=256, n_mels=96)
    reference = np.pad(librosa.power_to_db(mel, ref=1.0), ((0, 0), (37, 37)))
    assert stored.shape == reference.shape == (96, 1366 + 74)
    # float16 storage: a step of 0.0625 dB between 64 and 128 dB, so rounding is <= 0.031 dB
    np.testing.assert_allclose(stored, reference, atol=0.07, rtol=0)
    assert (stored[:, :37] == 0).all() and (stored[:, -37:] == 0).all()


def test_mtat_broken_clips_fail_at_decode_and_are_never_read(mtat_store):
    store = open_store(mtat_store["report"].url)
    clips = store.clips.set_index("clip_id")
    assert clips.loc["35644", "status"] == "failed" and clips.loc["35644", "stage"] == "decode"
    assert clips.loc["35644", "error"].startswith("empty file (0 bytes): soundfile: ")
    # Cut inside the ID3 tag: no MPEG frame at all, neither libsndfile nor FFmpeg finds audio.
    assert clips.loc["224", "status"] == "failed" and clips.loc["224", "stage"] == "decode"
    assert clips.loc["224", "error"] == UNRECOGNISED
    for clip_id in ("35644", "224"):
        with pytest.raises(MuzarrError, match=f"{clip_id}.*failed"):
            store.read("waveform", row_of(store, clip_id))
        with pytest.raises(MuzarrError, match="failed"):
            store.read(MEL96, [row_of(store, "37386"), row_of(store, clip_id)])
    failed = {f.clip_id for f in store.manifest.failures}
    assert failed == {"35644", "224"}
    assert store.manifest.split_counts["dieleman"] == {"train": 0, "valid": 0, "test": 2}


def test_mtat_clip_cut_mid_frame_is_a_short_clip_stored_zero_padded(mtat_store, fixtures_dir):
    """An MP3 cut at 40 % of its bytes decodes to the frames present (libsndfile/mpg123 stops at
    the cut): a legitimately short clip, stored like any clip shorter than 29.12 s."""
    store = open_store(mtat_store["report"].url)
    row = row_of(store, "234")
    assert store.clips["status"].iloc[row] == "ok"
    wave = store.read("waveform", row)
    cut = mtat_store["root"] / "d" / "seismic_anamoly-afterburner-01-afterburner-0-29.mp3"
    present = soundfile.read(str(cut), dtype="float32")[0]
    assert 0.35 < len(present) / 465984 < 0.41  # ~40 % of the full clip's samples
    np.testing.assert_array_equal(wave, expected_int16(cut, sample_rate=16000, n_samples=465920))
    assert (wave[len(present):] == 0).all() and np.abs(wave[: len(present)]).max() > 1000
    # The frames present decode exactly as the same frames of the whole file.
    full = store.read("waveform", row_of(store, "37386"))
    np.testing.assert_array_equal(wave[: len(present)], full[: len(present)])


# --------------------------------------------------------------------------- FMA


@pytest.fixture(scope="module")
def fma_store(fixtures_dir, tmp_path_factory, client):
    root = tmp_path_factory.mktemp("fma")
    audio = root / "fma_small" / "000"
    audio.mkdir(parents=True)
    (audio / "000010.mp3").symlink_to(fixtures_dir / "fma" / "fma_small" / "000" / "000010.mp3")
    (audio / "000002.mp3").write_bytes(b"")  # listed, present, broken
    tracks = {
        2: fma_track("Hip-Hop", "training", "small", "Food"),
        5: fma_track("Hip-Hop", "training", "medium", "This World"),  # not in fma_small
        10: fma_track("Pop", "training", "small", "Freeway"),
        99134: fma_track("Rock", "test", "small", "no audio in the release"),
        108925: fma_track("Electronic", "validation", "small", "no audio in the release"),
    }
    write_tracks_csv(root / "fma_metadata" / "tracks.csv", tracks)
    report = build(catalog_config("fma_small"), source=str(root), out=str(root / "fma.zarr"), client=client,
                   progress=False)
    return report


def test_fma_small_build_stores_the_track_and_fails_the_broken_one(fma_store, fixtures_dir):
    report = fma_store
    assert (report.n_clips, report.n_ok, report.n_failed) == (2, 1, 1)
    store = open_store(report.url)
    assert store.classes == ["Electronic", "Hip-Hop", "Pop", "Rock"]  # genres of the subset, listed or not
    clips = store.clips.set_index("clip_id")
    assert clips.loc["000010", "status"] == "ok" and clips.loc["000002", "status"] == "failed"
    assert clips.loc["000002", "stage"] == "decode" and clips.loc["000002", "error"].startswith("empty file (0 bytes)")
    labels = store.labels().set_index("clip_id")
    assert labels.loc["000010", "label"] == "Pop" and labels.loc["000010", "label_index"] == 2
    assert store.splits().set_index("clip_id").loc["000010", "official"] == "train"
    info = store.manifest.index_info
    assert info["tracks_in_subset"] == 4 and info["missing_audio"] == 2
    assert info["missing_audio_examples"] == ["099134", "108925"]

    # The 2 s fixture under the catalog's "full 30 s" policy: stored, then zeros to 30 s.
    wave = store.read("waveform", row_of(store, "000010"))
    path = fixtures_dir / "fma" / "fma_small" / "000" / "000010.mp3"
    assert wave.shape == (661500,)
    np.testing.assert_array_equal(wave, expected_int16(path, sample_rate=22050, n_samples=661500))
    assert np.abs(wave[:44100]).max() > 100 and not wave[44100:].any()

    text = describe(report.url)
    assert "2 clip(s) listed in the metadata have no audio file (e.g. 099134, 108925)" in text
    assert "  000002  " in text and "      [decode] empty file (0 bytes): soundfile: " in text


# --------------------------------------------------------------------------- folder


def manifest_rows(fixtures_dir: Path, folder: str) -> dict[str, dict]:
    with open(fixtures_dir / "MANIFEST.tsv", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {r["path"][len(folder) + 1 :]: r for r in rows if r["path"].startswith(folder + "/")}


def test_folder_build_of_edge_cases_stores_or_explains_every_file(fixtures_dir, tmp_path):
    source = fixtures_dir / "edge_cases"
    out = tmp_path / "edge.zarr"
    result = run_pipe("build", "folder", "--source", str(source), "--out", str(out), "--workers", "1",
                      "--set", "clip.seconds=1", "--quiet")
    assert_no_crash(result)
    store = open_store(out)
    clips = store.clips.set_index("path")
    listed = manifest_rows(fixtures_dir, "edge_cases")
    assert set(clips.index) == set(listed)  # every file is in the store, stored or failed

    failed = dict(zip(clips.index[clips["status"] == "failed"], clips["error"][clips["status"] == "failed"]))
    assert failed == {
        "mirdata/10161_chorus.wav": UNRECOGNISED,
        "pydub/test1_empty.wav": "file holds no audio samples (0 frames)",
        "scipy/test-44100Hz-le-1ch-4bytes-early-eof-no-data.wav":
            "soundfile: Error in WAV file. No 'data' chunk marker; PyAV: Invalid data found when processing input",
        "scipy/test-44100Hz-le-1ch-4bytes-incomplete-chunk.wav":
            "soundfile: Error in WAV file. No 'data' chunk marker; PyAV: Invalid data found when processing input",
    }
    assert (clips.loc[list(failed), "stage"] == "decode").all()
    n = len(listed)
    assert result.returncode == 1 and f"{n - 4} of {n} clips stored, 4 failed" in result.stdout
    # Each failure is what MANIFEST.tsv says soundfile does with the file: no audio, or no format it knows.
    for path in failed:
        check = listed[path]["decode_check"]
        assert "ERROR" in check or "decoded 0 frames" in check, (path, check)
    # ... and everything soundfile decodes, or FFmpeg opens (M4A, Ogg-FLAC), is stored.
    for path, row in listed.items():
        if path not in failed:
            assert "soundfile OK" in row["decode_check"] or path in ("pydub/wrong_extension.aac", "pydub/bach.ogg")

    def stored(path: str) -> np.ndarray:
        return store.read("waveform", int(np.flatnonzero(store.clips["path"] == path)[0]))

    # libsndfile's own decode + our mono mix and soxr resample, for the awkward encodings.
    for path in ("scipy/test-1234Hz-le-1ch-10S-20bit-extra.wav", "scipy/test-8000Hz-le-3ch-5S-24bit.wav",
                 "scipy/test-44100Hz-le-1ch-4bytes-rf64.wav", "scipy/test-8000Hz-le-1ch-1byte-ulaw.wav",
                 "scipy/test-44100Hz-2ch-32bit-float-be.wav", "scipy/test-8000Hz-le-2ch-1byteu.wav",
                 "scipy/test-44100Hz-le-1ch-4bytes-early-eof.wav", "pydub/test1-8bit.wav",
                 "pydub/test-192khz-32bit.flac", "python-soundfile/mono.wav"):
        np.testing.assert_array_equal(stored(path), expected_int16(source / path, sample_rate=16000, n_samples=16000),
                                      err_msg=path)
        assert np.abs(stored(path)).max() > 0, path
    # What libsndfile cannot open goes through PyAV: the same samples as PyAV gives directly.
    for path in ("pydub/wrong_extension.aac", "pydub/bach.ogg"):
        with pytest.raises(soundfile.LibsndfileError):
            soundfile.info(str(source / path))
        samples, rate = pyav_decode(source / path)
        wave = stored(path)
        assert clips.loc[path, "status"] == "ok" and np.abs(wave).max() > 300, path  # not silence
        np.testing.assert_array_equal(wave, expected_int16(source / path, sample_rate=16000, n_samples=16000,
                                                           samples=samples, rate=rate), err_msg=path)

    info = run_pipe("info", str(out))
    assert info.returncode == 0 and f"{n} total, {n - 4} ok, 4 failed" in info.stdout
    assert "failed clips (4 at decode)" in info.stdout
    for path, message in failed.items():
        assert f"  {source.resolve() / path}\n      [decode] {message}\n" in info.stdout + "\n"


def test_folder_build_of_misc_stores_everything(fixtures_dir, tmp_path, client):
    source = fixtures_dir / "misc"
    config = catalog_config("folder", **{"clip.seconds": 1.0})
    report = build(config, source=str(source), out=str(tmp_path / "misc.zarr"), client=client, progress=False)
    assert report.exit_code == 0, report.failures
    store = open_store(report.url)
    audio = [p for p in manifest_rows(fixtures_dir, "misc") if not p.endswith(".txt")]
    assert sorted(store.clips["path"]) == sorted(audio) and len(audio) == 20
    assert (store.clips["status"] == "ok").all()
    assert store.classes == ["librosa_data", "librosa_tests", "mirdata", "pydub"]
    waves = store.read("waveform", slice(None))
    assert waves.shape == (20, 16000) and (np.abs(waves).max(axis=1) > 0).all()
    for path in ("librosa_tests/test1_44100.wav", "mirdata/candombe/csic.1995_ansina1_01.flac",
                 "librosa_tests/test2_8000.wav", "pydub/party.mp3"):
        row = int(np.flatnonzero(store.clips["path"] == path)[0])
        np.testing.assert_array_equal(waves[row], expected_int16(source / path, sample_rate=16000, n_samples=16000))


def test_folder_of_bytes_that_only_look_like_audio(fixtures_dir, tmp_path, client):
    """Random bytes named .au, text named .mp3, a dangling link: each fails with its reason, the rest is stored."""
    root = tmp_path / "collection"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    trumpet = fixtures_dir / "misc" / "librosa_data" / "sorohanro_-_solo-trumpet-06.ogg"
    (root / "good" / "trumpet.ogg").symlink_to(trumpet)
    # libsndfile reads any header-less .au as 8 kHz mu-law: this used to be stored as 12 s of noise.
    (root / "bad" / "noise.au").write_bytes(np.random.default_rng(0).bytes(100_000))
    (root / "bad" / "notes.mp3").write_text("track list\n" * 100)
    (root / "bad" / "moved.wav").symlink_to(tmp_path / "nowhere.wav")
    config = catalog_config("folder", **{"clip.seconds": 1.0})
    report = build(config, source=str(root), out=str(tmp_path / "c.zarr"), client=client, progress=False)
    store = open_store(report.url)
    clips = store.clips.set_index("path")
    assert clips.loc["good/trumpet.ogg", "status"] == "ok"
    failed = clips[clips["status"] == "failed"]
    assert dict(zip(failed.index, failed["error"])) == {
        "bad/moved.wav": "file not found",
        "bad/noise.au": "soundfile: no audio header (libsndfile would guess header-less ULAW at 8000 Hz from the "
                        "file name); PyAV: Invalid data found when processing input",
        "bad/notes.mp3": UNRECOGNISED,
    }


# --------------------------------------------------------------------------- csv


def test_csv_manifest_with_tags_builds_a_multilabel_store(fixtures_dir, tmp_path, client):
    source = fixtures_dir / "misc"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,tags,split\n"
        "librosa_data/sorohanro_-_solo-trumpet-06.ogg,trumpet;solo,train\n"
        f"{source / 'mirdata' / 'salami' / '2.mp3'},rock;drums,train\n"  # absolute, inside the root
        f"{source / 'pydub' / 'party.mp3'},speech,valid\n"
        "librosa_tests/test1_22050.wav,,test\n"  # no tags: an all-zero row
    )
    config = catalog_config("csv", **{"options.manifest": str(manifest), "clip.seconds": 2.0})
    assert config.task == "auto"  # the catalog lets the manifest decide
    report = build(config, source=str(source), out=str(tmp_path / "csv.zarr"), client=client, progress=False)
    assert (report.n_ok, report.n_failed) == (4, 0)
    store = open_store(report.url)
    assert store.task == "multilabel" and store.classes == ["drums", "rock", "solo", "speech", "trumpet"]
    assert store.clips["path"].tolist() == [
        "librosa_data/sorohanro_-_solo-trumpet-06.ogg", "mirdata/salami/2.mp3", "pydub/party.mp3",
        "librosa_tests/test1_22050.wav",
    ]
    np.testing.assert_array_equal(
        store.label_matrix, [[0, 0, 1, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    )
    assert store.splits()["given"].tolist() == ["train", "train", "valid", "test"]
    assert store.read("waveform", slice(None)).shape == (4, 32000)

    # An explicit catalog task still has to agree with the manifest.
    strict = {**config.to_dict(), "task": "multiclass"}
    with pytest.raises(MuzarrError, match="gives a multilabel index but the catalog says multiclass"):
        build_index(BuildConfig.from_dict(strict), str(source))


def test_csv_manifest_with_labels_is_multiclass_under_task_auto(fixtures_dir, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\npydub/party.mp3,speech\nmirdata/salami/2.mp3,music\n")
    config = catalog_config("csv", **{"options.manifest": str(manifest)})
    index = build_index(config, str(fixtures_dir / "misc"))
    assert index.task == "multiclass" and index.classes == ("music", "speech")


def test_newlines_in_clip_ids_labels_and_paths_are_printed_escaped(tmp_path):
    """Issue #21 item 13: a CSV's quoted cells may hold newlines; every line pipe prints about a clip stays one
    line (`\\n` escaped) in the build summary, `pipe info` and `pipe verify`; the store keeps the true values."""
    source = tmp_path / "audio"
    source.mkdir()
    for i in range(4):
        soundfile.write(source / f"{i}.wav", np.random.default_rng(i).uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
    (source / "bro\nken.wav").write_bytes(b"not audio")
    (source / "manifest.csv").write_text(
        'path,label,clip_id\n0.wav,rock,a\n1.wav,"ja\nzz",b\n2.wav,rock,"c\nd"\n3.wav,"ja\nzz",e\n"bro\nken.wav",rock,"f\ng"\n'
    )
    out = tmp_path / "nl.zarr"
    built = run_pipe("build", "csv", "--source", str(source), "--out", str(out), "--set", "clip.seconds=1.0",
                     "--set", "batch_clips=4", "--workers", "1", "--quiet")  # fmt: skip
    assert built.returncode == 1, built.stderr
    assert built.stdout.splitlines()[-1] == (f"  failed f\\ng ({source}/bro\\nken.wav) at decode: {UNRECOGNISED}")
    store = open_store(str(out))
    assert store.clips["clip_id"].tolist() == ["a", "b", "c\nd", "e", "f\ng"] and store.classes == ["ja\nzz", "rock"]

    info = run_pipe("info", str(out)).stdout.splitlines()
    assert "  ja\\nzz 2, rock 2" in info
    assert info[-2:] == [f"  f\\ng  {source}/bro\\nken.wav", f"      [decode] {UNRECOGNISED}"]

    (out / "waveform" / "c" / "1" / "0").unlink()  # row 4: clip f\ng
    verified = run_pipe("verify", str(out))
    assert verified.returncode == 1
    damage = "damaged shard  waveform shard 1: the file is missing (waveform/c/1/0; clip f\\ng, row 4)"
    assert damage in verified.stdout.splitlines()
