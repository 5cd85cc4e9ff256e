"""A store is untrusted input: sizes that disagree with each other or with the files, and links that lead
out of it, end in one line before anything is allocated, read or written through them
(issue: hostile and careless input, items 1, 2 and 3)."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers_stores import file_versions

N_CLIPS, BATCH = 16, 4
PIPE_MEMORY = 2 << 30
# torch alone reserves more than 2 GiB of address space when it is imported (measured: 3 GiB is not enough to train).
TRAIN_MEMORY = 4 << 30


def _run(args: list[str], memory: int | None) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=False,
                          preexec_fn=limit if memory else None, timeout=300)  # fmt: skip


def pipe(*args, memory: int | None = PIPE_MEMORY) -> subprocess.CompletedProcess:
    """``pipe ARGS`` in a subprocess, its address space limited (a Dask cluster needs more: ``memory=None``)."""
    return _run(["pipeline.cli", *map(str, args)], memory)


def train(store: Path, out: Path) -> subprocess.CompletedProcess:
    return _run(["training.cli", "--store", str(store), "--model", "cnn", "--epochs", "1", "--out", str(out),
                 "--device", "cpu", "--no-emissions", "--workers", "0"], TRAIN_MEMORY)  # fmt: skip


def grow(store: Path, source: Path, memory: int | None = PIPE_MEMORY) -> subprocess.CompletedProcess:
    return pipe("build", "demo", "--source", source, "--out", store, "--set", "options.n_clips=20",
                "--set", f"batch_clips={BATCH}", "--workers", "1", "--quiet", memory=memory)  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a refused command (exit 2), without its ``error: `` prefix."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0][len("error: ") :]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("built")
    source, out = root / "audio", root / "demo.zarr"
    result = pipe("build", "demo", "--source", source, "--out", out, "--set", f"options.n_clips={N_CLIPS}",
                  "--set", f"batch_clips={BATCH}", "--workers", "1", "--quiet", memory=None)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, source


@pytest.fixture
def store(built, tmp_path) -> Path:
    copy = tmp_path / "demo.zarr"
    shutil.copytree(built[0], copy, symlinks=True)
    return copy


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_manifest(store: Path, **fields) -> None:
    edit_json(store / "zarr.json", lambda meta: meta["attributes"]["muzarr"].update(fields))


def write_parquet(path: Path, table: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    path.write_bytes(buffer.getvalue())


# --- item 1: sizes are checked before anything is allocated from them ----------------------------------------


def test_a_manifest_claiming_a_trillion_clips_is_refused_by_every_command(store, built, tmp_path):
    n = 10**12
    edit_manifest(store, n_clips=n)
    assert one_line_error(pipe("info", store)) == (
        f"{store}: malformed store: the manifest: array 'waveform' has shape [16, 64000] for {n} clips: "
        "get a fresh copy of the store, or rebuild it"
    )
    # The manifest made to agree with itself: the status array's metadata still says 16.
    edit_json(store / "zarr.json", lambda meta: [a["shape"].__setitem__(0, n) for a in meta["attributes"]["muzarr"]["arrays"].values()])
    expected = (
        f"{store}: malformed store: the manifest says {n} clips but status/zarr.json has shape [16]: "
        "get a fresh copy of the store, or rebuild it"
    )
    for command in (("info", store), ("verify", store), ("copy", store, tmp_path / "copy.zarr")):
        assert one_line_error(pipe(*command)) == expected
    assert one_line_error(train(store, tmp_path / "run")) == expected
    assert not (tmp_path / "copy.zarr").exists() and not (tmp_path / "run").exists()
    assert one_line_error(grow(store, built[1])) == expected


def test_sizes_that_agree_but_not_with_the_tables_are_refused(store, built, tmp_path):
    """n_clips, every array and the status array all say a million clips; the tables (written to match, a
    million identical rows in a few KiB) cannot hold that many distinct clips."""
    n = 10**6

    def resize(meta):
        meta["shape"][0] = n

    edit_manifest(store, n_clips=n)
    edit_json(store / "zarr.json", lambda meta: [resize(a) for a in meta["attributes"]["muzarr"]["arrays"].values()])
    arrays = [p.parent for p in store.rglob("zarr.json") if json.loads(p.read_text())["node_type"] == "array"]
    for array in arrays:
        edit_json(array / "zarr.json", resize)
    for name in ("clips", "labels", "splits"):
        path = store / "tables" / f"{name}.parquet"
        table = pd.read_parquet(path)
        write_parquet(path, table.iloc[[0] * n].reset_index(drop=True))
    size = (store / "tables" / "clips.parquet").stat().st_size
    assert size < n  # a byte per row at least, had the clip ids been distinct
    clips = f"{store}: malformed store: tables/clips.parquet has {n} rows in {size} bytes, the manifest implies {n}"
    labels_size = (store / "tables" / "labels.parquet").stat().st_size
    labels = f"{store}: malformed store: tables/labels.parquet has {n} rows in {labels_size} bytes, the manifest implies {n}"
    fix = ": get a fresh copy of the store, or rebuild it"
    assert one_line_error(pipe("info", store)) == clips + fix
    assert one_line_error(train(store, tmp_path / "run")) == labels + fix  # training reads the labels first
    assert one_line_error(grow(store, built[1])) == (
        f"{store} holds {n} clips but the source now gives 20: a store only grows; pass --overwrite to rebuild it"
    )
    verified = pipe("verify", store)
    assert verified.returncode == 1, verified.stderr
    lines = verified.stdout.splitlines()
    assert f"damaged table  clips: tables/clips.parquet has {n} rows in {size} bytes, the manifest implies {n}{fix}" in lines
    assert (
        "damaged store  manifest: n_clips 1000000 is confirmed by no table (clips, labels, splits): contents not checked"
    ) in lines
    # the edited metadata files also differ from the sizes the key list recorded for them
    assert lines[-2].startswith(f"{store}: DAMAGED: 12 problems (4 tables, 8 stores)")
    assert lines[-1].startswith("repair: pipe build demo --source ") and f" --out {store} " in lines[-1]  # hostile input, item 12


def test_an_array_with_inflated_chunks_and_shards_is_refused(store, built, tmp_path):
    name = "waveform"
    huge = [10**9, 64000]
    edit_json(store / "zarr.json", lambda m: m["attributes"]["muzarr"]["arrays"][name].update(chunks=huge, shards=huge))

    def inflate(meta):
        sharding = meta["codecs"][0]["configuration"]
        sharding["chunk_shape"] = huge
        meta["chunk_grid"]["configuration"]["chunk_shape"] = huge

    edit_json(store / name / "zarr.json", inflate)
    expected = (
        f"{store}: malformed store: the manifest: array 'waveform' has chunks of shape [1000000000, 64000] int16: "
        "119209.3 GiB decoded, more than the 4 GiB a reader can hold: get a fresh copy of the store, or rebuild it"
    )
    for command in (("info", store), ("verify", store), ("copy", store, tmp_path / "copy.zarr")):
        assert one_line_error(pipe(*command)) == expected
    assert one_line_error(train(store, tmp_path / "run")) == expected
    assert one_line_error(grow(store, built[1])) == expected


def test_chunks_inflated_in_the_arrays_metadata_only_are_refused_before_decoding(store, tmp_path):
    """The manifest is intact: the zarr.json of the array the model reads says each chunk is 10**9 clips."""
    name = "logmel/mel64_sr16000_fft1024_hop512"  # what the cnn reads
    huge = [10**9, 64, 126]

    def inflate(meta):
        meta["codecs"][0]["configuration"]["chunk_shape"] = huge
        meta["chunk_grid"]["configuration"]["chunk_shape"] = huge

    edit_json(store / name / "zarr.json", inflate)
    assert one_line_error(train(store, tmp_path / "run")) == (
        f"{store}: malformed store: {name}/zarr.json: array '{name}' has chunks of shape {huge} float16: "
        f"{10**9 * 64 * 126 * 2 / 2**30:.1f} GiB decoded, more than the 4 GiB a reader can hold: "
        "get a fresh copy of the store, or rebuild it"
    )
    verified = pipe("verify", store)
    assert verified.returncode == 1 and "Traceback" not in verified.stderr, verified.stderr
    assert (
        f"damaged array  {name}: chunks {tuple(huge)} differs from the manifest's (1, 64, 63); "
        f"shards {tuple(huge)} differs from the manifest's (4, 64, 126)"
    ) in verified.stdout.splitlines()


def test_a_key_list_with_absurd_sizes_or_counts_is_refused_by_copy(store, tmp_path):
    keys = store / "_muzarr" / "keys.json"
    original = keys.read_text()
    edit_json(keys, lambda data: data["keys"].update({"waveform/c/0/0": 10**18}))
    assert one_line_error(pipe("copy", store, tmp_path / "copy.zarr")) == (
        f"{store} key list: size 1000000000000000000 of 'waveform/c/0/0' is not a byte count (0 to 8589934592)"
    )
    listed = {f"waveform/c/{i}/0": 1 for i in range(200_000)}
    keys.write_text(json.dumps({"keys": listed}))
    size = keys.stat().st_size
    assert one_line_error(pipe("copy", store, tmp_path / "copy.zarr")) == (
        f"{store}/_muzarr/keys.json has {size} bytes, more than a list of the 106 keys the store can have: refusing it"
    )
    keys.write_text(original)
    assert pipe("copy", store, tmp_path / "copy.zarr").returncode == 0  # the same store with its own list copies


# --- items 2 and 3: nothing is read from or written outside the store ------------------------------------------


def test_a_link_to_a_secret_is_never_read_or_copied(store, built, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"hunter2-do-not-leak")
    os.symlink(secret, store / "tables" / "notes")
    expected = (
        f"{store}: tables/notes is a symbolic link to {secret}, outside the store: refusing to read or write "
        "through it; remove the link"
    )
    copy = tmp_path / "copy.zarr"
    for command in (("info", store), ("verify", store), ("copy", store, copy)):
        assert one_line_error(pipe(*command)) == expected
    assert one_line_error(train(store, tmp_path / "run")) == expected
    assert one_line_error(grow(store, built[1])) == expected
    assert not copy.exists()
    # A copy over an existing store: the destination is refused too when it holds such a link.
    assert pipe("copy", built[0], copy).returncode == 0
    os.symlink(secret, copy / "tables" / "notes")
    assert one_line_error(pipe("copy", built[0], copy, "--overwrite")) == expected.replace(str(store), str(copy))
    os.unlink(copy / "tables" / "notes")
    assert all(b"hunter2" not in data for _, data in file_versions(copy).values())
    assert secret.read_bytes() == b"hunter2-do-not-leak"


def test_a_table_linked_to_a_file_outside_is_refused(store, tmp_path):
    outside = tmp_path / "their-labels.parquet"
    shutil.move(store / "tables" / "labels.parquet", outside)
    os.symlink(outside, store / "tables" / "labels.parquet")
    expected = (
        f"{store}: tables/labels.parquet is a symbolic link to {outside}, outside the store: refusing to read or "
        "write through it; remove the link"
    )
    assert one_line_error(pipe("info", store)) == expected
    assert one_line_error(pipe("copy", store, tmp_path / "copy.zarr")) == expected
    assert one_line_error(train(store, tmp_path / "run")) == expected


def test_a_build_never_writes_through_a_linked_folder(store, built, tmp_path):
    """The waveform's shard folder moved out and linked back: growing to 20 clips writes shard 4 in it."""
    elsewhere = tmp_path / "elsewhere"
    shutil.move(store / "waveform" / "c", elsewhere)
    (elsewhere / "mine.txt").write_text("not the store's")
    os.symlink(elsewhere, store / "waveform" / "c")
    before = file_versions(elsewhere)
    expected = (
        f"{store}: waveform/c is a symbolic link to {elsewhere}, outside the store: refusing to read or write "
        "through it; remove the link"
    )
    # Without a memory limit, so that a build that is not refused starts its cluster and writes (as it did).
    grown = grow(store, built[1], memory=None)
    assert file_versions(elsewhere) == before  # the same files, bytes and mtimes
    assert one_line_error(grown) == expected
    overwrite = pipe("build", "demo", "--source", built[1], "--out", store, "--set", f"options.n_clips={N_CLIPS}",
                     "--set", f"batch_clips={BATCH}", "--set", "clip.seconds=2", "--overwrite", "--workers", "1", "--quiet")  # fmt: skip
    assert one_line_error(overwrite) == expected
    assert one_line_error(pipe("verify", store)) == expected
    assert file_versions(elsewhere) == before  # the same files, bytes and mtimes


def test_links_that_stay_inside_the_store_are_allowed(built, tmp_path):
    """muzarr writes no links, but a link whose target is inside the store (or a store folder that is itself a
    link) leaks nothing: it is read like any file."""
    real = tmp_path / "real.zarr"
    shutil.copytree(built[0], real)
    os.symlink("../zarr.json", real / "tables" / "notes")
    linked = tmp_path / "linked.zarr"
    os.symlink(real, linked)
    result = pipe("info", linked)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"store     {linked}\n")


# --- issue #21 items 8 and 12: a 16-byte chunk claiming a terabyte --------------------------------------------------


def claim_a_terabyte(store: Path) -> None:
    """Every chunk of ``status`` becomes a zstd frame (an allowed codec) whose header declares 1 TiB of content."""
    edit_json(store / "status" / "zarr.json",
              lambda meta: meta.update(codecs=[{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]))  # fmt: skip
    # magic, a descriptor saying "single segment, 8-byte content size", the size, an empty last raw block
    frame = b"\x28\xb5\x2f\xfd" + bytes([0b11100000]) + (1 << 40).to_bytes(8, "little") + b"\x01\x00\x00"
    for chunk in (store / "status" / "c").iterdir():
        chunk.write_bytes(frame)


def test_a_tiny_chunk_claiming_a_terabyte_is_named_as_damage(store, tmp_path):
    """It was "out of memory ... run on a machine with more memory" (info, train), with a stray asyncio traceback
    now and then; it is the array and what is wrong with it, and `pipe verify` names each chunk."""
    claim_a_terabyte(store)
    damaged = (f"store {store}: array 'status' is damaged: a 16-byte zstd chunk claims 1099511627776 bytes decoded, more "
               f"than a chunk of shape ({BATCH},) holds: it is damaged; run `pipe verify {store}`")  # fmt: skip
    assert one_line_error(pipe("info", store)) == damaged
    assert one_line_error(train(store, tmp_path / "run")) == damaged
    verify = pipe("verify", store)
    assert verify.returncode == 1, verify.stderr
    for chunk in range(N_CLIPS // BATCH):
        assert (f"damaged chunk  status chunk {chunk}: cannot be decoded (DamagedChunk: a 16-byte zstd chunk claims "
                "1099511627776 bytes decoded") in verify.stdout  # fmt: skip


def test_a_failed_read_leaves_no_decoding_task_behind(store):
    """The stray traceback came from zarr-python's decoding tasks, still running when the read had raised and the
    process exited: a failed read now waits for them. Twenty reads, each checked right after it raised."""
    import asyncio

    from zarr.core.sync import loop

    from pipeline import MuzarrError, open_store

    claim_a_terabyte(store)

    async def others() -> list[str]:
        return [repr(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    for _ in range(20):
        with pytest.raises((MuzarrError, MemoryError)):
            open_store(store).status  # noqa: B018
        assert asyncio.run_coroutine_threadsafe(others(), loop[0]).result(timeout=30) == []


def test_eval_crops_beyond_the_limit_is_an_option_error(built, tmp_path):
    """`train --eval-crops 1000000` ended in "out of memory ... run on a machine with more memory"."""
    result = _run(["training.cli", "--store", str(built[0]), "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "run"),
                   "--device", "cpu", "--no-emissions", "--workers", "0", "--eval-crops", "1000000"], TRAIN_MEMORY)  # fmt: skip
    assert one_line_error(result) == (
        "eval_crops=1000000 is more than 1024 crops per clip (an evaluation batch holds every crop of its clips at once; "
        "Won et al. score 16): use --eval-crops 1024 or fewer"
    )
    assert not (tmp_path / "run").exists()
