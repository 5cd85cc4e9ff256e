"""Growing a complete store: added feature variants and added clips, computed and nothing else.

A demo store of 20 clips (batches of 8: the last shard is partial) gets a new log-mel
variant, then 10 more clips; each result must equal a store built from scratch with the
final configuration, while the files of everything that did not change stay untouched and
readers keep seeing the old store until the grow is finished.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import MuzarrError, open_store
from pipeline.build import build, make_client
from pipeline.config import apply_overrides, config_for, load_catalog

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


def files(root: Path, prefix: str = "") -> dict[str, tuple[int, bytes]]:
    base = root / prefix
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(base.rglob("*")) if p.is_file()
    }


def assert_equal_stores(a_url: str, b_url: str) -> None:
    a, b = open_store(a_url), open_store(b_url)
    assert list(a.arrays) == list(b.arrays) and a.n_clips == b.n_clips
    for name in a.arrays:
        assert a.arrays[name] == b.arrays[name]
        np.testing.assert_array_equal(a.array(name)[:], b.array(name)[:])
    for table in ("clips", "labels", "splits", "checksums"):
        pd.testing.assert_frame_equal(a.table(table), b.table(table))
    drop = ("finished",)
    assert {k: v for k, v in a.manifest.items() if k not in drop} == {k: v for k, v in b.manifest.items() if k not in drop}


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
    before_feature = files(root / "demo.zarr")
    seen_during_feature = []
    feature = build(
        config(20, extra_mel=True), source=source, out=out, client=client, progress=False,
        on_batch=lambda marker: seen_during_feature.append(open_store(out).manifest),
    )
    after_feature = files(root / "demo.zarr")
    feature_snapshot = root / "after_feature.zarr"
    shutil.copytree(root / "demo.zarr", feature_snapshot)
    before_clips = files(root / "demo.zarr")
    seen_during_clips = []

    def during_clips(marker):
        store = open_store(out)
        seen_during_clips.append((store.manifest, store.read("waveform", slice(None)).shape, store.status.shape))

    clips = build(config(30, extra_mel=True), source=source, out=out, client=client, progress=False, on_batch=during_clips)
    return {
        "root": root, "source": source, "out": out, "feature": feature, "clips": clips,
        "before_feature": before_feature, "after_feature": after_feature, "feature_snapshot": str(feature_snapshot),
        "before_clips": before_clips, "after_clips": files(root / "demo.zarr"),
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
        assert list(manifest["arrays"]) == OLD_ARRAYS and manifest["n_clips"] == 20
    assert len(grown["seen_during_clips"]) == 2
    for manifest, wave_shape, status_shape in grown["seen_during_clips"]:
        assert manifest["n_clips"] == 20 and NEW_ARRAY in manifest["arrays"]
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
    before = files(Path(grown["out"]))
    with pytest.raises(MuzarrError, match="row 3.*someone_else"):
        build(cfg, source=grown["source"], out=grown["out"], index=shuffled, progress=False)
    assert files(Path(grown["out"])) == before
