"""Whole tracks from files real encoders made (issue #21, item 1): every file that decodes is stored whole, at
the length it decodes to, whatever its header says.

Two sources, each built by the real ``pipe build folder`` in clip mode and in track mode:

* every audio file of ``../shared/fixtures`` (real recordings: WAV, FLAC, OGG, MP3 of many encoders,
  the broken ones of real datasets);
* MP3s made in the test by ``lame`` and ``ffmpeg`` (libmp3lame): CBR, ABR, VBR, with and without a
  Xing/Info header, a large ID3v2 tag, at 16, 22.05, 44.1 and 48 kHz, mono and stereo, a VBR file with a
  dense start and no length header (libsndfile estimates it at a sixth of its length and, before this
  issue, stopped decoding there), two MP3s concatenated (the first one's header covers half the file) and
  a VBR download stopped at 60 % (its header still claims the whole length).

The reference for a file's length is FFmpeg's own decoder (PyAV, every frame): a stored track is never
shorter than FFmpeg's count by more than the encoder delay and padding a gapless decoder trims (< 2 frames),
and equals what muzarr's decoder returns, sample for sample.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_stores import snapshot

from pipeline import open_store
from pipeline.audio import float_to_int16, read_audio, resample, resampled_length, to_mono

BIN = Path(sys.executable).parent
SR = 16000
TRACK = ["--set", "clip.mode=track", "--set", "batch_clips=4", "--waveform", f"sample_rate={SR}", "--only", "--quiet"]
CLIP = ["--set", "clip.mode=pad_crop", "--set", "clip.seconds=2", "--set", "batch_clips=4", "--waveform", f"sample_rate={SR}",
        "--only", "--quiet"]  # fmt: skip
AUDIO = {".wav", ".mp3", ".flac", ".ogg", ".aac", ".au", ".m4a"}
GAPLESS_SLACK = 2 * 1152  # samples a gapless decoder may trim beyond what FFmpeg does (encoder delay and padding)


def pipe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pipe"), *map(str, args)], capture_output=True, text=True, timeout=600, check=False)


def ffmpeg_samples(path: Path) -> int:
    """Every sample FFmpeg's decoder gives for the file (PyAV), or -1 when it cannot decode it."""
    import av

    try:
        with av.open(str(path)) as container:
            return sum(frame.samples for frame in container.decode(container.streams.audio[0]))
    except Exception:  # noqa: BLE001 - an undecodable file
        return -1


def encoders_or_skip() -> None:
    missing = [tool for tool in ("lame", "ffmpeg") if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install lame ffmpeg)"
        if os.environ.get("MUZARR_REQUIRE_ENCODERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def write_encoded(folder: Path) -> dict[str, str]:
    """MP3s from lame and ffmpeg, every setting the issue names; returns name -> what it is."""
    rng = np.random.default_rng(5)
    made = {}
    sources = {}
    for rate, channels in ((22050, 1), (44100, 2), (48000, 1)):
        t = np.arange(int(rate * 3.3)) / rate
        y = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(t)) + 0.05 * rng.standard_normal(len(t))
        wav = folder / "src" / f"tone_{rate}_{channels}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        _write_wav(wav, np.repeat(y[:, None], channels, axis=1), rate)
        sources[rate, channels] = wav
    out = folder / "mp3"
    out.mkdir()
    for (rate, channels), wav in sources.items():
        stem = f"{rate}_{'stereo' if channels == 2 else 'mono'}"
        for name, args, what in (
            ("cbr", ["-b", "128"], "lame CBR 128 kbps with its Info header"),
            ("abr", ["--abr", "96"], "lame ABR 96 kbps"),
            ("vbr", ["-V", "4"], "lame VBR -V 4 with its Xing header"),
            ("notag", ["-t", "-b", "64"], "lame CBR without a Xing/Info header"),
            ("id3", ["-V", "2", "--add-id3v2", "--pad-id3v2-size", "70000", "--tt", "title"], "lame VBR after a 70 kB ID3v2 tag"),
        ):
            _run(["lame", "--quiet", *args, str(wav), str(out / f"lame_{name}_{stem}.mp3")])
            made[f"lame_{name}_{stem}"] = what
        _run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "libmp3lame", "-q:a", "5", str(out / f"ff_vbr_{stem}.mp3")])
        made[f"ff_vbr_{stem}"] = "ffmpeg libmp3lame VBR"
        _run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "96k", "-write_xing", "0",
              str(out / f"ff_noxing_{stem}.mp3")])  # fmt: skip
        made[f"ff_noxing_{stem}"] = "ffmpeg CBR without a Xing header"
    # a dense start and no length header: libsndfile's estimate is a sixth of the file
    rate = 44100
    y = np.concatenate([0.5 * rng.standard_normal(rate * 1), np.zeros(rate * 7)])
    _write_wav(folder / "src" / "loud_first.wav", y[:, None], rate)
    _run(["lame", "--quiet", "-t", "-V", "0", str(folder / "src" / "loud_first.wav"), str(out / "loud_first_noxing.mp3")])
    made["loud_first_noxing"] = "VBR, no length header, a dense start"
    vbr = out / "lame_vbr_22050_mono.mp3"
    (out / "concatenated.mp3").write_bytes(vbr.read_bytes() * 2)
    made["concatenated"] = "two MP3s one after the other"
    data = (out / "lame_vbr_44100_stereo.mp3").read_bytes()
    (out / "stopped_download.mp3").write_bytes(data[: len(data) * 6 // 10])
    made["stopped_download"] = "a VBR download stopped at 60 %"
    return made


def _write_wav(path: Path, y: np.ndarray, rate: int) -> None:
    import soundfile

    soundfile.write(path, np.clip(y, -1, 1).astype(np.float32), rate, subtype="PCM_16")


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command[0]} failed: {result.stderr}"


def audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO)


def build_both(source: Path, work: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
    clips, tracks = work / "clips.zarr", work / "tracks.zarr"
    done = pipe("build", "folder", "--source", source, "--out", clips, *CLIP, "--workers", "2")
    assert done.returncode in (0, 1), done.stderr
    done = pipe("build", "folder", "--source", source, "--out", tracks, *TRACK, "--workers", "2")
    assert done.returncode in (0, 1), done.stderr
    return clips, tracks, done


def assert_every_clip_stores_whole(source: Path, clips: Path, tracks: Path) -> pd.DataFrame:
    """Every file stored in clip mode is stored in track mode, at the length it decodes to, sample for sample."""
    by_clip, by_track = open_store(str(clips)), open_store(str(tracks))
    stored = by_clip.clips.set_index("path")
    table = by_track.clips.set_index("path")
    assert sorted(stored.index) == sorted(table.index)
    rows = []
    extents = by_track.extents("waveform")
    for path, clip in stored.iterrows():
        if clip["status"] != "ok":
            continue
        track = table.loc[path]
        assert track["status"] == "ok", f"{path} stores as a clip but fails as a track: {track['error']}"
        row = int(np.flatnonzero(by_track.clips["path"] == path)[0])
        decoded = read_audio(str(source / path))
        want = resampled_length(decoded.samples.shape[-1], orig_sr=decoded.rate, target_sr=SR)
        assert int(extents[row, 1]) == want, path
        assert track["seconds"] == pytest.approx(decoded.samples.shape[-1] / decoded.rate)
        expected = float_to_int16(resample(to_mono(decoded.samples), orig_sr=decoded.rate, target_sr=SR))
        np.testing.assert_array_equal(by_track.track("waveform", row), expected, err_msg=path)
        # the clip is the track's first seconds: one decoder, one resampler for both
        head = min(want, 2 * SR)
        first = by_clip.read("waveform", int(np.flatnonzero(by_clip.clips["path"] == path)[0]))
        np.testing.assert_array_equal(first[:head], expected[:head], err_msg=path)
        rows.append({"path": path, "samples": decoded.samples.shape[-1], "rate": decoded.rate,
                     "ffmpeg": ffmpeg_samples(source / path), "note": track["note"]})  # fmt: skip
    return pd.DataFrame(rows)


def test_every_fixture_that_stores_as_a_clip_stores_whole_as_a_track(fixtures_dir, tmp_path):
    clips, tracks, done = build_both(fixtures_dir, tmp_path)
    files = audio_files(fixtures_dir)
    assert len(open_store(str(tracks)).clips) == len(files)
    found = assert_every_clip_stores_whole(fixtures_dir, clips, tracks)
    assert len(found) >= 40  # the fixtures' good files: most of the 49
    mp3 = found[found["path"].str.endswith(".mp3")]
    assert len(mp3) == 9
    # the three whose headers overstate their length (2.mp3, party.mp3, the MTAT clip) are stored at what decodes
    assert (mp3["samples"] <= mp3["ffmpeg"] + GAPLESS_SLACK).all() and (mp3["samples"] >= mp3["ffmpeg"] - GAPLESS_SLACK).all()
    assert "Warning" not in done.stderr
    assert open_store(str(tracks)).complete and pipe("verify", tracks).returncode == 0


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The encoders' MP3s (``folder/mp3``) and what each one is."""
    encoders_or_skip()
    folder = tmp_path_factory.mktemp("encoded")
    return folder / "mp3", write_encoded(folder)


@pytest.fixture(scope="module")
def encoded_builds(encoded, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    return build_both(encoded[0], tmp_path_factory.mktemp("encoded_builds"))


def test_mp3s_from_other_encoders_store_whole_at_their_decoded_length(encoded, encoded_builds):
    (source, made), (clips, tracks, done) = encoded, encoded_builds
    found = assert_every_clip_stores_whole(source, clips, tracks).set_index("path")
    assert len(found) == len(made)  # every file stores
    # libsndfile alone stops at its estimate (a sixth) or at the first file's header (half): nothing is lost now
    for name in ("loud_first_noxing", "concatenated"):
        row = found.loc[f"{name}.mp3"]
        assert row["samples"] >= row["ffmpeg"] - GAPLESS_SLACK, name
        assert "decoded with FFmpeg" in row["note"], name
    assert found.loc["loud_first_noxing.mp3", "samples"] == found.loc["loud_first_noxing.mp3", "ffmpeg"]
    assert found.loc["concatenated.mp3", "samples"] > 1.9 * found.loc["lame_vbr_22050_mono.mp3", "samples"]
    # the stopped download: what decodes, noted, and libmpg123's own warning in the note, not on the terminal
    stopped = found.loc["stopped_download.mp3"]
    whole = found.loc["lame_vbr_44100_stereo.mp3", "samples"]
    assert 0.5 * whole < stopped["samples"] < 0.7 * whole
    assert "ends early" in stopped["note"] and "Xing stream size off" in stopped["note"]
    assert "Xing" not in done.stderr and "Warning" not in done.stderr
    for name, row in found.iterrows():
        assert abs(int(row["samples"]) - int(row["ffmpeg"])) <= GAPLESS_SLACK or name == "stopped_download.mp3", name
    report = pipe("verify", tracks)
    assert report.returncode == 0, report.stdout
    info = pipe("info", tracks)
    assert "decode: 3 clip(s) noted" in info.stdout


def test_a_track_that_decodes_longer_than_planned_moves_and_the_store_stays_whole(encoded, encoded_builds, tmp_path):
    """A header that lies, or a file changed since it was probed: the batch writes nothing, gets a region at the
    end sized from what it decoded, and the store ends with the same tracks as a build that knew the lengths."""
    source, reference = encoded[0], encoded_builds[1]

    def understated(out: Path, workers: int) -> subprocess.CompletedProcess:
        shutil.copytree(reference, out)
        plan = json.loads((out / "_muzarr" / "tracks.json").read_text())
        for i in range(4):  # batch 0: its probes understate every track, its region is re-planned
            plan["probes"][i] = {"frames": 100, "rate": 44100}
        del plan["regions"]
        (out / "_muzarr" / "tracks.json").write_text(json.dumps(plan))
        shutil.rmtree(out / "_muzarr" / "batches")
        return pipe("build", "folder", "--source", source, "--out", out, *TRACK, "--workers", workers)

    out = tmp_path / "moved.zarr"
    done = understated(out, 1)
    assert done.returncode == 0, done.stderr
    assert "placed again" in done.stdout
    n = len(json.loads((out / "_muzarr" / "tracks.json").read_text())["probes"])
    moved, ref = open_store(str(out)), open_store(str(reference))
    regions = json.loads((out / "_muzarr" / "tracks.json").read_text())["regions"]["waveform"]
    assert regions[0][0] == max(s + z for s, z in regions[1:])  # batch 0 now lies after every other batch
    for row in range(n):
        np.testing.assert_array_equal(moved.track("waveform", row), ref.track("waveform", row))
    assert (moved.extents("waveform")[:, 1] == ref.extents("waveform")[:, 1]).all()
    report = pipe("verify", out)
    assert report.returncode == 0, report.stdout
    # the region batch 0 left holds no file; a plain rerun changes nothing, and a grow keeps every region
    left = {int(p.name) for p in (out / "waveform" / "c").iterdir()}
    shard = moved.array("waveform").shards[-1]
    assert not any(k * shard < regions[1][0] for k in left)
    before = {p: p.stat().st_mtime_ns for p in (out / "waveform" / "c").iterdir()}
    again = pipe("build", "folder", "--source", source, "--out", out, *TRACK, "--workers", "1")
    assert again.returncode == 0 and {p: p.stat().st_mtime_ns for p in (out / "waveform" / "c").iterdir()} == before
    # where a batch moves does not depend on the workers: the same store, file for file
    other = tmp_path / "moved2.zarr"
    assert understated(other, 2).returncode == 0
    assert snapshot(other) == snapshot(out)
