"""Growing a complete store: added feature variants and added clips, computed and nothing else.

A demo store of 20 clips (batches of 8: the last shard is partial) gets a new log-mel
variant, then 10 more clips; each result must equal a store built from scratch with the
final configuration, while the files of everything that did not change stay untouched and
readers keep seeing the old store until the grow is finished.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_stores import file_versions

from pipeline import MuzarrError, open_store
from pipeline.build import build, make_client
from pipeline.config import apply_overrides, config_for, load_catalog
from pipeline.store.manifest import RowFailure

BATCH = 8
OLD_ARRAYS = ["waveform", "logmel/mel64_sr16000_fft1024_hop512", "logmel/mel96_sr12000_fft512_hop256_pad37"]
NEW_MEL = {"kind": "logmel", "n_mels": 128, "sample_rate": 16000}
NEW_ARRAY = "logmel/mel128_sr16000_fft512_hop256"


def config(n_clips: int, *, extra_mel: bool = False, **settings):
    catalog = load_catalog()
    return apply_overrides(
        config_for("demo", catalog["demo"]),
        add_features=[NEW_MEL] if extra_mel else [],
        settings={"options.n_clips": n_clips, "options.seconds": 1.0, "clip.seconds": 1.0, "batch_clips": BATCH,
                  **settings},
    )


def assert_equal_stores(a_url: str, b_url: str) -> None:
    a, b = open_store(a_url), open_store(b_url)
    assert list(a.arrays) == list(b.arrays) and a.n_clips == b.n_clips
    for name in a.arrays:
        assert a.arrays[name] == b.arrays[name]
        np.testing.assert_array_equal(a.array(name)[:], b.array(name)[:])
    for table in ("clips", "labels", "splits", "checksums"):
        pd.testing.assert_frame_equal(a.table(table), b.table(table))
    drop = ("finished",)
    a_manifest, b_manifest = a.manifest.to_dict(), b.manifest.to_dict()
    assert {k: v for k, v in a_manifest.items() if k not in drop} == {k: v for k, v in b_manifest.items() if k not in drop}


@pytest.fixture(scope="module")
def client():
    client = make_client(workers=2)
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def grown(client, tmp_path_factory):
    """Build 20 clips; add a log-mel variant; then grow to 30 clips. Records what readers saw meanwhile."""
    root = tmp_path_factory.mktemp("grow")
    source, out = str(root / "src"), str(root / "demo.zarr")
    first = build(config(20), source=source, out=out, client=client, progress=False)
    assert first.batches_run == 3
    before_feature = file_versions(root / "demo.zarr")
    seen_during_feature = []
    feature = build(
        config(20, extra_mel=True), source=source, out=out, client=client, progress=False,
        on_batch=lambda marker: seen_during_feature.append(open_store(out).manifest),
    )
    after_feature = file_versions(root / "demo.zarr")
    feature_snapshot = root / "after_feature.zarr"
    shutil.copytree(root / "demo.zarr", feature_snapshot)
    before_clips = file_versions(root / "demo.zarr")
    seen_during_clips = []

    def during_clips(marker):
        store = open_store(out)
        seen_during_clips.append((store.manifest, store.read("waveform", slice(None)).shape, store.status.shape))

    clips = build(config(30, extra_mel=True), source=source, out=out, client=client, progress=False, on_batch=during_clips)
    return {
        "root": root, "source": source, "out": out, "feature": feature, "clips": clips,
        "before_feature": before_feature, "after_feature": after_feature, "feature_snapshot": str(feature_snapshot),
        "before_clips": before_clips, "after_clips": file_versions(root / "demo.zarr"),
        "seen_during_feature": seen_during_feature, "seen_during_clips": seen_during_clips,
    }


def test_an_added_feature_computes_only_the_new_array(grown, client, tmp_path):
    report = grown["feature"]
    assert (report.batches_run, report.batches_reused, report.n_ok) == (3, 0, 20)
    before, after = grown["before_feature"], grown["after_feature"]
    # Every file of the existing arrays and of the status array is untouched: same bytes, same mtime.
    kept = [k for k in before if k.split("/c/")[0] in OLD_ARRAYS + ["status"] or k.endswith("/zarr.json") and k != "zarr.json"]
    assert kept and {k: after[k] for k in kept} == {k: before[k] for k in kept}
    assert sorted(k for k in after if k.startswith(NEW_ARRAY + "/c/")) == [f"{NEW_ARRAY}/c/{b}/0/0" for b in range(3)]
    scratch = str(tmp_path / "scratch.zarr")
    build(config(20, extra_mel=True), source=grown["source"], out=scratch, client=client, progress=False)
    assert_equal_stores(grown["feature_snapshot"], scratch)


def test_readers_see_the_old_store_until_the_grow_is_finished(grown):
    for manifest in grown["seen_during_feature"]:
        assert list(manifest.arrays) == OLD_ARRAYS and manifest.n_clips == 20
    assert len(grown["seen_during_clips"]) == 2
    for manifest, wave_shape, status_shape in grown["seen_during_clips"]:
        assert manifest.n_clips == 20 and NEW_ARRAY in manifest.arrays
        assert wave_shape == (20, 16000) and status_shape == (20,)
    final = open_store(grown["out"])
    assert final.n_clips == 30 and final.complete


def test_added_clips_run_only_the_new_and_the_partial_batch(grown, client, tmp_path):
    report = grown["clips"]
    # Batches 0-1 (rows 0-15) are reused; batch 2 was partial (rows 16-19) and now holds 16-23; batch 3 is new.
    assert (report.batches_run, report.batches_reused, report.n_ok) == (2, 2, 30)
    before, after = grown["before_clips"], grown["after_clips"]
    untouched = [k for k in before if "/c/0" in k or "/c/1" in k or k.startswith("_muzarr/batches/00000")]
    untouched = [k for k in untouched if not k.startswith("_muzarr/batches/000002")]
    assert len(untouched) == 2 * 5 + 2  # two shards of four arrays, two status chunks, two markers
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    scratch = str(tmp_path / "scratch30.zarr")
    build(config(30, extra_mel=True), source=grown["source"], out=scratch, client=client, progress=False)
    assert_equal_stores(grown["out"], scratch)


def test_other_changes_are_refused(grown):
    out, source = grown["out"], grown["source"]
    with pytest.raises(MuzarrError, match="different configuration(.|\n)*seed"):
        build(config(30, extra_mel=True, **{"options.seed": 1}), source=source, out=out, progress=False)
    with pytest.raises(MuzarrError, match="feature logmel/mel96_sr12000_fft512_hop256_pad37: in the store"):
        only_two = apply_overrides(config(30), only=True, add_features=[{"kind": "waveform", "sample_rate": 16000}, NEW_MEL])
        build(only_two, source=source, out=out, progress=False)
    with pytest.raises(MuzarrError, match="holds 30 clips but the source now gives 12"):
        build(config(12, extra_mel=True), source=source, out=out, progress=False)
    assert open_store(out).n_clips == 30
    assert not (Path(out) / "_muzarr" / "target.json").exists()


def test_the_source_must_start_with_the_stored_clips(grown, tmp_path):
    """A larger index whose first rows are other clips is refused: only appending is a grow."""
    from pipeline.build import build_index
    from pipeline.index import DatasetIndex

    cfg = config(31, extra_mel=True)
    index = build_index(cfg, grown["source"])
    clips = index.clips.copy()
    clips.loc[3, "clip_id"] = "someone_else"
    shuffled = DatasetIndex(index.root, clips, index.task, index.classes, index.labels, index.splits, index.info)
    before = file_versions(Path(grown["out"]))
    with pytest.raises(MuzarrError, match="row 3.*someone_else"):
        build(cfg, source=grown["source"], out=grown["out"], index=shuffled, progress=False)
    assert file_versions(Path(grown["out"])) == before


def _cli(tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"{tool}.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


LOUD = 5  # the clip whose file is a float WAV with samples of 1e30: its log-mel overflows float32
MLP_MEL = "n_mels=64,sample_rate=16000,n_fft=1024,hop_length=512"  # the input `train --model mlp` reads
MLP_ARRAY = "logmel/mel64_sr16000_fft1024_hop512"


def test_a_clip_that_fails_only_an_added_feature_stays_stored_everywhere_else(client, tmp_path):
    """Issue #21 item 3: a grow never changes what an existing array holds nor takes a stored clip away; the
    new feature's failure is the new array's, recorded and refused by every read of that array."""
    import soundfile

    from pipeline.config import parse_spec
    from pipeline.datasets.demo import index_demo
    from pipeline.store.verify import verify_store

    source, out = tmp_path / "audio", tmp_path / "s.zarr"
    index = index_demo(str(source), n_clips=16, seconds=1.0)
    loud = source / index.clips["path"].iloc[LOUD]
    samples, rate = soundfile.read(loud, dtype="float32")
    soundfile.write(loud, samples * np.float32(1e30), rate, subtype="FLOAT")  # finite samples, far beyond ±1
    assert loud.suffix == ".wav" and np.isfinite(soundfile.read(loud, dtype="float32")[0]).all()
    waveform = {"kind": "waveform", "sample_rate": 16000}

    def only(*features):
        return apply_overrides(config(16, **{"options.seed": 0}), add_features=list(features), only=True,
                               settings={"batch_clips": 4})  # fmt: skip

    first = build(only(waveform), source=str(source), out=str(out), client=client, progress=False)
    assert (first.n_failed, len(first.notes)) == (0, 1)  # stored, clipped by int16 (noted)
    before = file_versions(out)
    grow = build(only(waveform, {"kind": "logmel", **parse_spec(MLP_MEL, what="test")}), source=str(source), out=str(out),
                 client=client, progress=False)  # fmt: skip
    clip_id = index.clips["clip_id"].iloc[LOUD]
    message = "ValueError: computed values are not finite (NaN or infinity)"
    assert (grow.n_ok, grow.n_failed, grow.exit_code) == (16, 0, 1)
    assert grow.array_failures == [(MLP_ARRAY, RowFailure(LOUD, clip_id, MLP_ARRAY, message))]
    after = file_versions(out)
    # the waveform's and status's files are not rewritten: same bytes, same mtime
    kept = [k for k in before if k.startswith(("waveform/", "status/"))]
    assert len(kept) == 2 * 4 + 2 and {k: after[k] for k in kept} == {k: before[k] for k in kept}

    store = open_store(str(out))
    assert (store.status == 1).all()
    assert store.array_failures(MLP_ARRAY) == {LOUD: RowFailure(LOUD, clip_id, MLP_ARRAY, message)}
    assert np.isnan(store.array(MLP_ARRAY)[LOUD]).all()  # the fill value, never a value a clip could hold
    assert store.read("waveform", LOUD).shape == (16000,)
    assert np.isfinite(store.read(MLP_ARRAY, LOUD + 1)).all()
    refused = f"clip '{clip_id}' \\(row {LOUD}\\) of .* failed {MLP_ARRAY}"
    with pytest.raises(MuzarrError, match=refused):
        store.read(MLP_ARRAY, [LOUD - 1, LOUD])
    from pipeline.store import ArrayReader

    with pytest.raises(MuzarrError, match=refused):
        ArrayReader(store, MLP_ARRAY).crops([LOUD], [0], 8)
    clips = store.clips.set_index("clip_id")
    assert clips.loc[clip_id, "status"] == "ok" and pd.isna(clips.loc[clip_id, "stage"])
    assert clips.loc[clip_id, "error"] == f"failed {MLP_ARRAY}: {message}"
    assert verify_store(str(out)).ok
    info = _cli("pipeline", "info", out)
    assert f"failed in {MLP_ARRAY} only (1 stored clip(s)" in info.stdout and f"{clip_id} (row {LOUD})" in info.stdout
    # training on that array leaves the clip out, saying so in one line; the waveform still holds it
    run = _cli("training", "--store", out, "--model", "mlp", "--epochs", "1", "--out", tmp_path / "run", "--device", "cpu",
               "--no-emissions", "--workers", "0")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    split = store.splits().set_index("clip_id")["random"][clip_id]
    assert f"note: 1 clip(s) failed {MLP_ARRAY} when it was computed (1 {split}): left out" in run.stdout
    assert LOUD in store.split("random", split)
