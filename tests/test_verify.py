"""`pipe verify` finds every kind of damage it should, and says where.

A real demo store is built once; each test damages a copy of it (flipped bytes in shard
files, a removed shard, a deleted or truncated table, a rewritten status) and checks that
every injected corruption is reported at the right array and rows.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from pipeline import open_store
from pipeline.build import build
from pipeline.config import apply_overrides, config_for, load_catalog
from pipeline.store.verify import verify_store

N_CLIPS, BATCH = 24, 8
SEED = 7


def demo_config():
    catalog = load_catalog()
    return apply_overrides(
        config_for("demo", catalog["demo"]),
        settings={"options.n_clips": N_CLIPS, "options.seconds": 1.0, "clip.seconds": 1.0, "batch_clips": BATCH},
    )


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    report = build(demo_config(), source=str(root / "src"), out=str(root / "demo.zarr"), workers=2, progress=False)
    assert report.n_ok == N_CLIPS
    return root / "demo.zarr"


@pytest.fixture
def store(clean_store, tmp_path) -> Path:
    copy = tmp_path / "demo.zarr"
    shutil.copytree(clean_store, copy)
    return copy


def pipe(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=120)


def shard_files(store: Path, name: str) -> list[Path]:
    return sorted(p for p in (store / name / "c").rglob("*") if p.is_file())


def hits(report, array: str, start: int, stop: int) -> list:
    """The damage reported for ``array`` that touches rows [start, stop)."""
    return [d for d in report.damage if d.array == array and d.rows and d.rows[0] < stop and start < d.rows[1]]


def test_a_clean_store_verifies(clean_store):
    report = verify_store(str(clean_store))
    assert report.ok and report.damage == []
    assert report.checked["clips"] == N_CLIPS and report.checked["arrays"] == 3
    assert report.checked["shards"] == 3 * (N_CLIPS // BATCH)
    result = pipe("verify", str(clean_store))
    assert result.returncode == 0 and "clean" in result.stdout


def test_every_injected_corruption_is_found(store):
    rng = random.Random(SEED)
    arrays = list(open_store(str(store)).arrays)
    injected = []  # (description, how to recognise its report)
    # Flip bytes in six shard files of every array: random places, one of them in the shard index.
    candidates = [(name, path) for name in arrays for path in shard_files(store, name)]
    flipped = rng.sample(candidates, 6)
    for k, (name, path) in enumerate(flipped):
        data = bytearray(path.read_bytes())
        offset = len(data) - 1 - rng.randrange(16) if k == 0 else rng.randrange(len(data))
        data[offset] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        batch = int(path.relative_to(store / name / "c").parts[0])
        injected.append((f"byte {offset} of {name} shard {batch}", ("array", name, batch * BATCH, (batch + 1) * BATCH)))
    # Remove one shard file that was not flipped.
    name, path = next((n, p) for n, p in candidates if (n, p) not in flipped)
    batch = int(path.relative_to(store / name / "c").parts[0])
    path.unlink()
    injected.append((f"{name} shard {batch} removed", ("shard", name, batch * BATCH, (batch + 1) * BATCH)))
    # Delete one table and truncate another.
    (store / "tables" / "labels.parquet").unlink()
    injected.append(("labels table deleted", ("table", "labels")))
    splits = store / "tables" / "splits.parquet"
    splits.write_bytes(splits.read_bytes()[:100])
    injected.append(("splits table truncated", ("table", "splits")))
    # Rewrite one clip's status to pending (a valid chunk with a wrong value).
    zarr.open_group(str(store), mode="r+")["status"][5] = 0
    injected.append(("status of row 5 set to pending", ("array", "status", 5, 6)))

    report = verify_store(str(store))
    found = []
    for description, sign in injected:
        if sign[0] == "table":
            matched = [d for d in report.damage if d.kind == "table" and d.where == sign[1]]
        else:
            matched = hits(report, *sign[1:])
            if sign[0] == "shard":
                matched = [d for d in matched if d.kind == "shard"]
        found.append((description, bool(matched)))
    detected = sum(ok for _, ok in found)
    print(f"\ncorruptions detected {detected} of {len(injected)} injected")
    for line in report.lines():
        print("  " + line)
    assert [d for d, ok in found if not ok] == []
    assert not report.ok and report.exit_code == 1
    # Nothing is reported where nothing was damaged.
    damaged_rows = {(sign[1], b) for _, sign in injected if sign[0] != "table" for b in range(sign[2], sign[3])}
    for d in report.damage:
        if d.rows and d.array != "status":
            assert any((d.array, r) in damaged_rows for r in range(*d.rows)), d.line()


def test_damage_lines_name_the_clip_chunk_and_file(store, clean_store):
    wave = shard_files(store, "waveform")
    data = bytearray(wave[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    wave[1].write_bytes(bytes(data))
    mel = shard_files(store, "logmel/mel64_sr16000_fft1024_hop512")[2]
    mel.unlink()
    result = pipe("verify", str(store))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert any("logmel/mel64_sr16000_fft1024_hop512 shard 2" in line and "missing" in line
               and "demo_00016..demo_00023" in line for line in lines)
    assert any(line.startswith("damaged") and "waveform" in line and "demo_000" in line for line in lines)
    assert lines[-2].startswith(f"{store}: DAMAGED")
    assert lines[-1] == (  # the repair command, with the store's own options (hostile input, item 12)
        f"repair: pipe build demo --source {clean_store.parent.resolve() / 'src'} --out {store} --set clip.seconds=1.0 "
        "--set batch_clips=8 --set options.n_clips=24 --set options.seconds=1.0 --repair"
    )


def test_a_shard_that_cannot_be_decoded_is_reported_not_raised(store):
    path = shard_files(store, "waveform")[0]
    path.write_bytes(b"\x00" * 40)  # neither the data nor the index make sense
    report = verify_store(str(store))
    damage = hits(report, "waveform", 0, BATCH)
    assert damage and all(d.kind == "chunk" and "cannot be decoded" in d.message for d in damage)


def test_a_store_that_is_not_finished_is_reported(store):
    import json

    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["muzarr"]["state"] = "building"
    (store / "zarr.json").write_text(json.dumps(meta))
    report = verify_store(str(store))
    assert [d.kind for d in report.damage] == ["store"] and "not complete" in report.damage[0].message


def test_a_store_from_before_the_digest_field_verifies_with_blake2b(store):
    """Stores built before the manifest named its clip digest used blake2b-128: they stay verifiable."""
    import json

    import pandas as pd

    from pipeline.store.layout import clip_digests, combine_digests

    meta = json.loads((store / "zarr.json").read_text())
    manifest = meta["attributes"]["muzarr"]
    assert manifest.pop("digest") == "xxh3_128"
    group = zarr.open_group(str(store), mode="r")
    rows = []
    for name in manifest["arrays"]:
        digests = clip_digests(group[name][:N_CLIPS], algorithm="blake2b_128")
        manifest["arrays"][name]["checksum"] = combine_digests(digests)
        rows += [{"array": name, "row": i, "digest": d} for i, d in enumerate(digests)]
    pd.DataFrame(rows).to_parquet(store / "tables" / "checksums.parquet")
    keys = json.loads((store / "_muzarr" / "keys.json").read_text())  # as that store's build listed it
    keys["keys"]["tables/checksums.parquet"] = (store / "tables" / "checksums.parquet").stat().st_size
    (store / "_muzarr" / "keys.json").write_text(json.dumps(keys))
    (store / "zarr.json").write_text(json.dumps(meta))
    assert verify_store(str(store)).damage == []

    manifest["digest"] = "md5"
    (store / "zarr.json").write_text(json.dumps(meta))
    damage = verify_store(str(store)).damage
    assert damage and all("clip digest 'md5' is unknown" in d.message for d in damage)
