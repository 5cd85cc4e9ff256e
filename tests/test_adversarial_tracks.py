"""Hostile track stores, generated (issue #21, items 4 and 5): tampered probes, regions and extents end in one
line or a damage report, bounded, inside the store, and the repair ``pipe verify`` prints really repairs.

A track store is built once (real WAV and MP3 files, ``clip.mode=track``, two tracks per batch). Hypothesis
draws a tampering of what a track store adds to any store: ``_muzarr/tracks.json`` (each file's probe, each
batch's regions, the shard sizes, the file itself) and the ``extents/*`` arrays (flipped bytes, a huge sparse
file, valid chunks holding overlapping extents). Then, each in a process capped at 2 GiB of address space that
records every file it opens (``tests/_guarded.py``):

* ``pipe info`` and ``pipe verify`` end in one ``error:`` line or their report, never a traceback;
* the repair command ``pipe verify`` prints (or the same build with ``--repair`` where verify found nothing:
  a tampered probe only plans, it stores nothing) is run as printed: the store then verifies clean and holds
  every track of the untouched store, sample for sample;
* nothing outside the store is read or written.

Derandomized by default (``MUZARR_HOSTILE_EXAMPLES=N`` draws N fresh ones).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers_hostile import Change, check, fingerprint, guarded, outside_folder
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline import open_store

pytestmark = pytest.mark.slow

SCALE = int(os.environ.get("MUZARR_HOSTILE_EXAMPLES", "0"))
EXAMPLES = SCALE or 8
LOGMEL = "logmel/mel64_sr16000_fft1024_hop512"  # what `train --model mlp` reads
ARRAYS = ("waveform", LOGMEL)
SETTINGS = [
    "--set", "clip.mode=track", "--set", "batch_clips=4", "--only", "--waveform", "sample_rate=16000",
    "--logmel", "sample_rate=16000,n_mels=64,n_fft=1024,hop_length=512,pad_frames=0", "--quiet",
]  # fmt: skip
SECONDS = [3.0, 1.5, 5.0, 2.5, 4.0, 2.0, 1.0, 3.5, 2.2, 1.8]  # ten tracks: every split part of `random` gets one


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    """``(source, store)``: ten tracks of 1 to 5 s (WAV and MP3) in two classes, three batches."""
    root = tmp_path_factory.mktemp("hostile_tracks")
    source = root / "audio"
    for label in "ab":
        (source / label).mkdir(parents=True)
    rng = np.random.default_rng(3)
    for k, seconds in enumerate(SECONDS):
        rate = 16000 if k % 2 else 22050
        y = (0.3 * np.sin(2 * np.pi * (200 + 50 * k) * np.arange(int(seconds * rate)) / rate)
             + 0.05 * rng.standard_normal(int(seconds * rate))).astype(np.float32)  # fmt: skip
        soundfile.write(source / "ab"[k % 2] / f"t{k}.{'mp3' if k in (1, 4, 7) else 'wav'}", y, rate)
    store = root / "tracks.zarr"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build", "folder", "--source", str(source), "--out", str(store),
         *SETTINGS, "--workers", "1"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return source, store


Tamper = Change


VALUES = st.sampled_from([0, -5, 1, 100, 10**15, 2**63, "x", 2.5, None])


def tampers() -> st.SearchStrategy[Tamper]:
    draws = st.one_of(
        st.tuples(st.just("probe"), st.integers(0, len(SECONDS) - 1), st.sampled_from(["frames", "rate"]), VALUES),
        st.tuples(st.just("probe_error"), st.integers(0, len(SECONDS) - 1)),
        st.tuples(st.just("region"), st.sampled_from(ARRAYS), st.integers(0, 2),
                  st.sampled_from(["shift_left", "shift_right", "far", "overlap", "empty", "grow", "negative"])),
        st.tuples(st.just("plan_key"), st.sampled_from(["regions", "probes", "shard_chunks", "clips", "paths"]),
                  st.sampled_from(["delete", "null", "string", "empty"])),
        st.tuples(st.just("shard_chunks"), st.sampled_from(ARRAYS), st.sampled_from([0, 3, 2, 128, "x"])),
        st.tuples(st.just("plan_file"), st.sampled_from(["garbage", "empty", "delete", "sparse"])),
        st.tuples(st.just("extents_flip"), st.sampled_from(ARRAYS), st.integers(0, 2), st.floats(0.0, 1.0)),
        st.tuples(st.just("extents_sparse"), st.sampled_from(ARRAYS), st.integers(0, 2), st.sampled_from([2**31, 2**34])),
        st.tuples(st.just("extents_values"), st.sampled_from(ARRAYS), st.integers(0, len(SECONDS) - 1),
                  st.sampled_from(["overlap", "outside", "negative", "longer"])),
    )
    return draws.map(lambda t: Tamper(t[0], t[1:]))


def _extents_shard(store: Path, array: str, shard: int) -> Path:
    return store / "extents" / array / "c" / str(shard) / "0"


def apply(tamper: Tamper, store: Path) -> None:
    plan_path = store / "_muzarr" / "tracks.json"
    plan = json.loads(plan_path.read_text())
    kind, detail = tamper.kind, tamper.detail
    if kind == "probe":
        row, field, value = detail
        plan["probes"][row][field] = value
    elif kind == "probe_error":
        plan["probes"][detail[0]] = {"error": "tampered: not decodable"}
    elif kind == "region":
        array, batch, how = detail
        regions = plan["regions"][array]
        start, size = regions[batch]
        shard = _shard_of(store, array)
        regions[batch] = {
            "shift_left": [max(0, start - shard), size], "shift_right": [start + shard, size], "far": [shard * 10**9, size],
            "overlap": [regions[batch - 1][0], size], "empty": [start, 0], "grow": [start, size + shard],
            "negative": [-shard, size],
        }[how]
    elif kind == "plan_key":
        key, how = detail
        if how == "delete":
            plan.pop(key)
        else:
            plan[key] = {"null": None, "string": "x", "empty": {} if key in ("regions", "shard_chunks") else []}[how]
    elif kind == "shard_chunks":
        array, value = detail
        plan["shard_chunks"][array] = value
    elif kind == "plan_file":
        how = detail[0]
        if how == "delete":
            plan_path.unlink()
        elif how == "sparse":
            with open(plan_path, "r+b") as handle:
                handle.truncate(2**34)
        else:
            plan_path.write_bytes(b"" if how == "empty" else b"\x00\xff{not json")
        return
    elif kind == "extents_flip":
        array, shard, where = detail
        path = _extents_shard(store, array, shard)
        data = bytearray(path.read_bytes())
        data[min(len(data) - 1, int(len(data) * where))] ^= 0xFF
        path.write_bytes(bytes(data))
        return
    elif kind == "extents_sparse":
        array, shard, size = detail
        with open(_extents_shard(store, array, shard), "r+b") as handle:
            handle.truncate(size)
        return
    elif kind == "extents_values":
        import zarr

        array, row, how = detail
        extents = zarr.open_array(str(store / "extents" / array), mode="r+")
        values = extents[:]
        start, length = (int(v) for v in values[row])
        other = values[(row + 1) % len(values)]
        values[row] = {
            "overlap": [int(other[0]), length], "outside": [start + 10**12, length], "negative": [-1, length],
            "longer": [start, length * 3],
        }[how]
        extents[:] = values
        return
    plan_path.write_text(json.dumps(plan))


def _shard_of(store: Path, array: str) -> int:
    meta = json.loads((store / array / "zarr.json").read_text())
    return meta["chunk_grid"]["configuration"]["chunk_shape"][-1]


def repair_command(verify_out: str, source: Path, store: Path) -> list[str]:
    """The repair ``pipe verify`` printed; where it found nothing, the same build with ``--repair``."""
    printed = [line[len("repair: ") :] for line in verify_out.splitlines() if line.startswith("repair: ")]
    if printed:
        return shlex.split(printed[0])
    return ["pipe", "build", "folder", "--source", str(source), "--out", str(store), *SETTINGS, "--repair"]


def assert_same_tracks(store: Path, reference: Path, tamper: Tamper) -> None:
    a, b = open_store(str(store)), open_store(str(reference))
    assert (a.ok == b.ok).all(), tamper
    for name in ARRAYS:
        for row in range(a.n_clips):
            np.testing.assert_array_equal(a.track(name, row), b.track(name, row), err_msg=f"{tamper}: {name} row {row}")


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.generate], derandomize=not SCALE)
@given(tamper=tampers())
def test_a_tampered_track_store_is_reported_bounded_and_repaired(base, scheduler, tamper):
    source, reference = base
    work = Path(tempfile.mkdtemp(prefix="muzarr_hostile_tracks_"))
    try:
        store = work / "store.zarr"
        shutil.copytree(reference, store)
        apply(tamper, store)
        outside = outside_folder(work, reference)
        before = fingerprint(outside)
        secret = (outside / "secret").read_bytes()
        for command in (["info", store], ["verify", store]):
            report = guarded([["pipe", *map(str, command)]], outside, work)
            (result,) = report["results"]
            check(result, must_fail=False, tamper=tamper, secret=secret)
            assert report["opened_outside"] == [], f"{tamper}: {command[0]} opened files outside the store"
        verified = result
        repair = repair_command(verified["stdout"], source, store)
        assert repair[:2] == ["pipe", "build"] and "--repair" in repair, f"{tamper}: printed {repair}"
        if "--source" not in repair:  # a store records where its audio came from: until it does, say where
            repair += ["--source", str(source)]
        if "--scheduler" not in repair:
            repair += ["--scheduler", scheduler]
        report = guarded([[*repair, "--quiet"]], outside, work)
        (repaired,) = report["results"]
        check(repaired, must_fail=False, tamper=tamper, secret=secret)
        assert repaired["code"] == 0, f"{tamper}: the repair failed: {repaired['stderr'][-2000:]}"
        clean = subprocess.run([str(Path(sys.executable).parent / "pipe"), "verify", str(store)],
                               capture_output=True, text=True, check=False)  # fmt: skip
        assert clean.returncode == 0, f"{tamper}: after the repair: {clean.stdout[-3000:]}"
        assert_same_tracks(store, reference, tamper)
        assert report["opened_outside"] == [] and fingerprint(outside) == before, tamper
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_train_on_extents_with_a_flipped_byte_is_one_line(base, tmp_path):
    """Item 5's case: a flipped byte in the extents of the array ``train`` reads (a 122-line traceback before)."""
    _, reference = base
    store = tmp_path / "store.zarr"
    shutil.copytree(reference, store)
    apply(Tamper("extents_flip", (LOGMEL, 0, 0.3)), store)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "train"), "--store", str(store), "--model", "mlp", "--epochs", "1",
         "--out", str(tmp_path / "run"), "--no-emissions", "--quiet", "--cache", "none", "--split-scheme", "random"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert f"extents/{LOGMEL}" in lines[0] and "pipe verify" in lines[0]
    info = subprocess.run([str(Path(sys.executable).parent / "pipe"), "info", str(store)], capture_output=True, text=True, check=False)
    assert info.returncode == 1 and "tracks    cannot be shown" in info.stdout
