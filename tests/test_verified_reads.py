"""Training never learns from damaged bytes: each clip read is checked against its digest
(issue: hostile and careless input, item 16).

The damage here is the kind no codec notices: a shard rewritten whole with one sample
changed, so it decodes cleanly and its index passes its crc32c check. Only the per-clip
digest of ``tables/checksums.parquet`` tells it from the clip the build stored.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import MuzarrError, open_store
from pipeline.store.shards import ShardFormat, shard_path
from training.cli import main
from training.data import ExamplePlan, SplitReader, TrainStream

ARRAY = "logmel/mel64_sr16000_fft1024_hop512"


@pytest.fixture()
def tampered(small_store, tmp_path):
    """A copy of the small store with one value of clip row 9 of ``ARRAY`` changed, re-encoded validly."""
    copy = tmp_path / "tampered.zarr"
    shutil.copytree(small_store, copy)
    array = open_store(str(copy)).array(ARRAY)
    shard_format = ShardFormat.of(array)
    rows = shard_format.shard_shape[0]
    path = copy / shard_path(array, 9 // rows)
    data = shard_format.decode(path.read_bytes())
    data[9 % rows].flat[100] += 1.0
    path.write_bytes(shard_format.encode(data))
    assert np.array_equal(open_store(str(copy)).array(ARRAY)[9:10], data[9 % rows][None])  # it decodes, as changed
    return copy


def _train(*args: str):
    result = CliRunner().invoke(main, [*args, "--no-emissions", "--quiet"])
    assert "Traceback" not in result.output + result.stderr
    return result


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_training_refuses_a_clip_that_differs_from_its_digest(tampered, tmp_path, cache):
    result = _train("--store", str(tampered), "--model", "mlp", "--epochs", "1", "--cache", cache,
                    "--split-scheme", "random", "--out", str(tmp_path / "run"))  # fmt: skip
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    clip_id = open_store(str(tampered)).clips["clip_id"].iloc[9]
    assert f"clip '{clip_id}' (row 9) of {ARRAY} differs from its digest" in line
    assert line.endswith(f"run `pipe verify {tampered}`")


def test_no_verify_reads_trains_on_what_the_shards_hold(tampered, tmp_path):
    result = _train("--store", str(tampered), "--model", "mlp", "--epochs", "1", "--no-verify-reads",
                    "--out", str(tmp_path / "run"))  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr


def test_every_whole_clip_read_path_checks_and_an_intact_store_passes(small_store, tampered):
    for url, damaged in ((small_store, False), (str(tampered), True)):
        store = open_store(url)
        rows = np.arange(store.n_clips)[store.ok]
        plan = ExamplePlan(ARRAY, store.arrays[ARRAY].shape[1:], 16, 1)
        reader = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False)
        readers = (
            lambda reader=reader: list(reader.blocks()),  # sequential (evaluation)
            lambda store=store, plan=plan, rows=rows: SplitReader(store, plan, rows, store.label_matrix[rows], cache=True),
        )
        for read in readers:
            if damaged:
                with pytest.raises(MuzarrError, match=r"\(row 9\) .* differs from its digest"):
                    read()
            else:
                read()  # an intact store reads through every path
        # crops read only the chunks they overlap: they check each chunk's crc32c, which a valid re-encoding passes
        assert sum(len(x) for x, _, _ in TrainStream(reader, batch_size=4, seed=0)) == len(rows)
        unchecked = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False, verify=False)
        assert sum(len(p) for p, _ in unchecked.blocks()) == len(rows)


def test_a_crop_over_a_damaged_chunk_is_refused_naming_the_shard(small_store, tmp_path):
    copy = tmp_path / "flipped.zarr"
    shutil.copytree(small_store, copy)
    store = open_store(str(copy))
    array = store.array(ARRAY)
    shard_format = ShardFormat.of(array)
    key = shard_path(array, 0)
    blob = bytearray((copy / key).read_bytes())
    offset, _ = shard_format.index_of(bytes(blob))[(2,) + (0,) * (array.ndim - 1)]
    blob[int(offset) + 5] ^= 0x10  # frame 2 of mel 0 of row 2 (its first chunk): no digest is consulted by a crop
    (copy / key).write_bytes(bytes(blob))
    rows = np.arange(store.n_clips)[store.ok]
    plan = ExamplePlan(ARRAY, store.arrays[ARRAY].shape[1:], 16, 1)
    reader = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False)
    with pytest.raises(MuzarrError) as caught:
        reader.crops(np.array([2]), np.array([0]), 16)
    assert str(caught.value) == (
        f"store {copy}: {key}: chunk 2,{','.join('0' * (array.ndim - 1))} fails its crc32c check (damaged bytes): "
        f"run `pipe verify {copy}`"
    )
    # unchecked, the crop holds the flipped byte
    unchecked = SplitReader(store, plan, rows, store.label_matrix[rows], cache=False, verify=False)
    intact = open_store(small_store)
    original = SplitReader(intact, plan, rows, intact.label_matrix[rows], cache=False).crops(np.array([2]), np.array([0]), 16)
    assert (unchecked.crops(np.array([2]), np.array([0]), 16) != original).sum() == 1


def test_a_checksum_table_that_disagrees_with_the_manifest_is_refused(small_store, tmp_path):
    import pandas as pd

    copy = tmp_path / "copy.zarr"
    shutil.copytree(small_store, copy)
    table = pd.read_parquet(copy / "tables" / "checksums.parquet")
    table.loc[(table["array"] == ARRAY) & (table["row"] == 3), "digest"] = "0" * 32
    table.to_parquet(copy / "tables" / "checksums.parquet", index=False)
    with pytest.raises(MuzarrError, match=f"digests of {ARRAY} do not match the manifest's checksum"):
        open_store(str(copy)).stored_digests(ARRAY)
