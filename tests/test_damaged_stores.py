"""Damaged stores and the commands muzarr suggests (issue: hostile and careless input, items 11-14).

* 14: every ``pipe build`` command muzarr prints reproduces the store's own configuration
  (its ``--set`` overrides, its features) and adds only what is missing;
* 11: a store whose ``zarr.json`` is garbage is a damaged store, not "no store";
* 12: ``pipe build --repair`` reruns exactly the damaged batches, to the bytes of an undamaged build;
* 13: ``pipe info`` shows a damaged array as damaged and an unfinished build as unfinished.

Stores are built by the real ``pipe`` command in a subprocess, on a real Dask cluster.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_stores import file_versions, kill_when, snapshot

from pipeline import MuzarrError, open_store
from pipeline.cli import build as build_command_line
from pipeline.commands import build_command, repair_command
from pipeline.config import apply_overrides, config_from_command, load_catalog
from training.data import InputSpec, resolve_array

N_CLIPS, BATCH = 16, 4
SETTINGS = ["--set", f"options.n_clips={N_CLIPS}", "--set", f"batch_clips={BATCH}"]
RUN_LINE = re.compile(r"\((\d+) batches run, (\d+) reused")


def pipe(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=timeout, check=False)


def build(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return pipe("build", "demo", "--source", str(source), "--out", str(out), *SETTINGS, "--workers", "1", "--quiet", *extra)


def run_hint(hint: str) -> subprocess.CompletedProcess:
    """Run a printed ``pipe build`` command as a user pastes it (it says where the audio is)."""
    args = shlex.split(hint)
    assert args[:2] == ["pipe", "build"]
    return pipe(*args[1:], "--workers", "1", "--quiet")


def parse_hint(hint: str, *, catalog: str | None = None):
    """The configuration a printed ``pipe build`` command asks for, through the CLI's own parsing."""
    args = shlex.split(hint)
    assert args[:2] == ["pipe", "build"]
    params = build_command_line.make_context("build", args[2:]).params
    if catalog is not None:
        assert params["catalog"] == "<your catalog>"
        params["catalog"] = catalog
    config, _ = config_from_command(
        params["name"], catalog=params["catalog"], waveforms=params["waveforms"], logmels=params["logmels"],
        tabulars=params["tabulars"], only=params["only"], settings=params["settings"],
    )  # fmt: skip
    return config


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "demo.zarr"
    result = build(source, out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def store(reference, tmp_path) -> Path:
    copy = tmp_path / "demo.zarr"
    shutil.copytree(reference, copy)
    return copy


# -- item 14: the printed command reproduces the store -----------------------------------------
STORES = {
    "defaults": [],
    "n_clips and clip seconds": ["--set", "options.n_clips=16", "--set", "clip.seconds=3"],
    "n_clips only": ["--set", "options.n_clips=16"],
    "an added log-mel": ["--logmel", "n_mels=128,sample_rate=16000"],
    "only a waveform": ["--only", "--waveform", "sample_rate=22050"],
    "changed log-mels and a tabular set": ["--set", "logmel.top_db=60", "--tabular", "summary", "--set", "clip.anchor=centre"],
}
ADDED = {
    "nothing": None,
    "gtzan57": {"kind": "gtzan57"},
    "a log-mel": {"kind": "logmel", "n_mels": 128, "sample_rate": 22050, "n_fft": 2048, "hop_length": 512},
    "a waveform": {"kind": "waveform", "sample_rate": 22050},
}


@pytest.mark.parametrize("added", ADDED.values(), ids=ADDED.keys())
@pytest.mark.parametrize("options", STORES.values(), ids=STORES.keys())
def test_the_build_command_reproduces_the_store_and_adds_only_the_feature(options, added):
    config = parse_hint(shlex.join(["pipe", "build", "demo", *options]))
    stored = type(config).from_dict(json.loads(json.dumps(config.to_dict())))  # as the manifest holds it
    add = [added] if added else []
    hint = build_command(stored, out="runs/my store.zarr", add=add)
    assert shlex.split(hint)[:5] == ["pipe", "build", "demo", "--out", "runs/my store.zarr"]
    expected = apply_overrides(stored, add_features=add) if add else stored
    got = parse_hint(hint)
    if options == STORES["changed log-mels and a tabular set"] and added and added["kind"] == "logmel":
        # the command line adds log-mels before tabular sets: same features, listed in that order
        assert sorted(got.to_dict()["features"], key=str) == sorted(expected.to_dict()["features"], key=str)
        assert got.to_dict() | {"features": None} == expected.to_dict() | {"features": None}
    else:
        assert got == expected, hint


def test_the_build_command_of_the_issue_cases():
    n16_s3 = parse_hint("pipe build demo --set options.n_clips=16 --set clip.seconds=3")
    assert build_command(n16_s3, out="s.zarr", add=[{"kind": "gtzan57"}]) == (
        "pipe build demo --out s.zarr --set clip.seconds=3 --set options.n_clips=16 --tabular gtzan57"
    )
    assert build_command(parse_hint("pipe build demo --set options.n_clips=16"), out="s.zarr", extra=("--repair",)) == (
        "pipe build demo --out s.zarr --set options.n_clips=16 --repair"
    )


def test_a_store_of_another_catalog_says_so_and_spells_everything_out(tmp_path):
    entry = dict(load_catalog()["demo"], options={"n_clips": 10, "seconds": 2.0, "seed": 1})
    catalog = tmp_path / "mine.yaml"
    catalog.write_text(json.dumps({"datasets": {"mine": entry}}))  # JSON is YAML
    config, _ = config_from_command("mine", catalog=str(catalog), settings=("clip.seconds=2",))
    hint = build_command(config, out="m.zarr", add=[{"kind": "gtzan57"}])
    assert hint.startswith("pipe build mine --out m.zarr --catalog '<your catalog>' --set clip.mode=pad_crop ")
    assert parse_hint(hint, catalog=str(catalog)) == apply_overrides(config, add_features=[{"kind": "gtzan57"}])


def test_the_training_hint_keeps_the_stores_overrides_and_grows_it_by_one_array(source, tmp_path):
    """The issue's case: a store built with --set options.n_clips=16 --set clip.seconds=3."""
    out = tmp_path / "s3.zarr"
    first = pipe("build", "demo", "--source", str(source), "--out", str(out), "--set", "options.n_clips=16",
                 "--set", "clip.seconds=3", "--set", "batch_clips=8", "--workers", "1", "--quiet")  # fmt: skip
    assert first.returncode == 0, first.stderr
    with pytest.raises(MuzarrError) as caught:
        resolve_array(open_store(str(out)), InputSpec("tabular", tabular_set="gtzan57"))
    hint = str(caught.value).split("add it with: ", 1)[1]
    assert hint == (f"pipe build demo --source {source.resolve()} --out {out} --set clip.seconds=3 --set batch_clips=8 "
                    "--set options.n_clips=16 --tabular gtzan57")  # fmt: skip
    before = {name: file_versions(out, name) for name in open_store(str(out)).arrays}
    grown = run_hint(hint)
    assert grown.returncode == 0, grown.stderr
    assert "16 of 16 clips stored, 0 failed (2 batches run, 0 reused" in grown.stdout
    store = open_store(str(out))
    assert store.n_clips == 16 and list(store.arrays) == [*before, "tabular/gtzan57"]
    assert {name: file_versions(out, name) for name in before} == before  # not one byte of the old arrays rewritten
    assert pipe("verify", str(out)).returncode == 0


def test_a_waveform_of_another_rate_is_a_second_store_with_the_same_options(reference, source):
    with pytest.raises(MuzarrError) as caught:
        resolve_array(open_store(str(reference)), InputSpec("waveform", sample_rate=22050))
    base = str(reference).removesuffix(".zarr")
    assert str(caught.value).endswith(
        f"its waveform is another variant; build a store of this one: pipe build demo --source {source.resolve()} "
        f"--out {base}-waveform22050.zarr "
        "--set batch_clips=4 --set options.n_clips=16 --only --waveform sample_rate=22050"
    )


# -- item 11: a garbage manifest is damage of this store ------------------------------------------
def damaged_line(out: Path, reason: str, rebuild: str) -> str:
    return (
        f"error: {out}/zarr.json, the store's manifest, is damaged ({reason}): the store cannot be read; "
        f"restore zarr.json from a copy of the store, or rebuild it: {rebuild}\n"
    )


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"garbage{", "not JSON: Expecting value at byte 0"),
        (b"", "the file is empty"),
        (b'{"zarr_format": 3, "node_type": "array"}', "not Zarr v3 group metadata"),
        (b'{"zarr_format": 3, "node_type": "group", "attributes": {}}', "it holds no muzarr manifest"),
    ],
    ids=["not json", "empty", "not a group", "no manifest"],
)
def test_every_command_names_a_damaged_manifest(store, tmp_path, content, reason):
    (store / "zarr.json").write_bytes(content)
    line = damaged_line(store, reason, f"pipe build <dataset> --out {store} --overwrite")
    for command in (["info", str(store)], ["verify", str(store)], ["copy", str(store), str(tmp_path / "copy.zarr")]):
        result = pipe(*command)
        assert (result.returncode, result.stderr) == (2, line), command
    trained = subprocess.run(
        [sys.executable, "-m", "training.cli", "--store", str(store), "--model", "cnn", "--out", str(tmp_path / "run"),
         "--no-emissions", "--quiet"], capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert (trained.returncode, trained.stderr) == (2, line)


def test_build_names_a_damaged_manifest_and_overwrite_rebuilds_it(store, source):
    (store / "zarr.json").write_bytes(b"garbage{")
    refused = build(source, store)
    rebuild = f"pipe build demo --source {source.resolve()} --out {store} --set batch_clips=4 --set options.n_clips=16 --overwrite"
    assert (refused.returncode, refused.stderr) == (2, damaged_line(store, "not JSON: Expecting value at byte 0", rebuild))
    repaired = build(source, store, "--repair")
    assert (repaired.returncode, repaired.stderr) == (2, damaged_line(store, "not JSON: Expecting value at byte 0", rebuild))
    rebuilt = build(source, store, "--overwrite")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "16 of 16 clips stored, 0 failed (4 batches run, 0 reused" in rebuilt.stdout
    assert pipe("verify", str(store)).returncode == 0


def test_a_foreign_zarr_json_is_still_not_a_store(tmp_path, source):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "zarr.json").write_bytes(b"garbage{")
    result = build(source, folder, "--overwrite")
    assert result.returncode == 2 and f"error: {folder} exists and is not a muzarr store (it holds zarr.json)" in result.stderr
    assert (folder / "zarr.json").read_bytes() == b"garbage{"


# -- item 12: pipe build --repair ------------------------------------------------------------------
def test_repair_reruns_exactly_the_damaged_batches_to_identical_bytes(store, reference, source):
    waveform = store / "waveform" / "c" / "1" / "0"
    waveform.write_bytes(waveform.read_bytes()[:1000])  # truncated shard: batch 1
    logmel = store / "logmel" / "mel64_sr16000_fft1024_hop512" / "c" / "3" / "0" / "0"
    data = bytearray(logmel.read_bytes())
    data[len(data) // 3] ^= 0xFF  # flipped bytes that still decode: batch 3
    data[len(data) // 3 + 1] ^= 0xFF
    logmel.write_bytes(bytes(data))
    untouched = {k: v for k, v in file_versions(store, "_muzarr/batches").items() if not k.endswith(("000001.json", "000003.json"))}

    plain = build(source, store)  # a plain rebuild stays cheap: it trusts the markers
    assert plain.returncode == 0 and "(0 batches run, 4 reused" in plain.stdout
    (store / "tables" / "labels.parquet").unlink()  # (the plain rebuild wrote the tables again)
    verified = pipe("verify", str(store))
    assert verified.returncode == 1
    assert verified.stdout.splitlines()[-1] == (f"repair: pipe build demo --source {source.resolve()} --out {store} "
                                                "--set batch_clips=4 --set options.n_clips=16 --repair")  # fmt: skip

    repaired = build(source, store, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "repair: 2 damaged batches (1, 3) of 4: rerunning them\n" in repaired.stdout
    # the key list's sizes disagree with the damaged files too: finalize rewrites it with the tables
    assert "repair: tables/labels.parquet, the key list damaged: rewritten when the build finishes\n" in repaired.stdout
    assert "16 of 16 clips stored, 0 failed (2 batches run, 2 reused" in repaired.stdout
    assert {k: file_versions(store, "_muzarr/batches")[k] for k in untouched} == untouched
    assert pipe("verify", str(store)).returncode == 0
    assert snapshot(store) == snapshot(reference)

    again = build(source, store, "--repair")
    assert "repair: nothing damaged\n" in again.stdout and "(0 batches run, 4 reused" in again.stdout


def test_repair_recreates_an_array_whose_metadata_is_damaged(store, reference, source):
    (store / "waveform" / "zarr.json").unlink()
    repaired = build(source, store, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "repair: array waveform is damaged: recreating it, all 4 batches of it rerun\n" in repaired.stdout
    assert "(4 batches run, 0 reused" in repaired.stdout
    assert snapshot(store) == snapshot(reference)


def test_the_printed_repair_command_works_as_printed_from_another_folder(tmp_path):
    """Issue #21 item 10: the store records its --source (absolute) and the repair command gives it; the
    folder recipe's catalog source is ".", so a command without it would index the folder it is run in."""
    import numpy as np
    import soundfile

    from pipeline.store.verify import verify_store

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for i in range(8):
        path = here / "music" / ("rock" if i % 2 else "jazz") / f"{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, np.random.default_rng(i).uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                              timeout=300, check=False, cwd=cwd)  # fmt: skip

    built = run("build", "folder", "--source", "music", "--out", "f.zarr", "--set", "clip.seconds=1.0",
                "--set", "batch_clips=4", "--workers", "1", "--quiet", cwd=here)  # fmt: skip
    assert built.returncode == 0, built.stderr
    store = here / "f.zarr"
    shard = store / "waveform" / "c" / "1" / "0"
    shard.write_bytes(shard.read_bytes()[:1000])
    verified = run("verify", "f.zarr", cwd=here)
    assert verified.returncode == 1
    repair = verified.stdout.splitlines()[-1]
    assert repair == (f"repair: pipe build folder --source {here / 'music'} --out {store} --set clip.seconds=1.0 "
                      "--set batch_clips=4 --repair")  # fmt: skip
    args = shlex.split(repair.removeprefix("repair: "))
    # as printed (the `pipe` of this environment), from a folder holding no audio
    repaired = subprocess.run([str(Path(sys.executable).parent / args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=300, check=False, cwd=elsewhere)  # fmt: skip
    assert repaired.returncode == 0, repaired.stderr
    assert "8 of 8 clips stored, 0 failed (1 batches run, 1 reused" in repaired.stdout
    assert verify_store(str(store)).ok
    assert open_store(str(store)).source == str(here / "music")  # in the manifest, outside the configuration
    repaired_files, repaired_manifest = snapshot(store)

    (here / "music").rename(here / "moved")  # a repair needs the audio: a folder gone is said under the command
    shard.write_bytes(shard.read_bytes()[:1000])
    # what `pipe verify` prints: the store layer reports the damage, the CLI adds the command
    lines = verify_store(str(store)).lines(repair=repair_command(open_store(str(store))))
    assert lines[-2].startswith("repair: pipe build folder --source ")
    assert lines[-1] == (f"note: the store's source folder {here / 'music'} no longer exists: give --source the folder "
                         "that holds its audio now")  # fmt: skip
    # the same audio from another folder: the same bytes; the manifest differs only in the source it records
    moved = run(*args[1:args.index("--source") + 1], str(here / "moved"), *args[args.index("--source") + 2:], "--quiet",
                cwd=elsewhere)  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    files, manifest = snapshot(store)
    assert files == repaired_files
    assert manifest == {**repaired_manifest, "source": str(here / "moved")}


def test_a_url_source_is_recorded_without_credentials_or_query(tmp_path, monkeypatch):
    from pipeline.config import recorded_source

    assert recorded_source("s3://AKIATRACKS:tracks-secret@bucket/audio?versionId=3#x") == "s3://bucket/audio"
    assert recorded_source("https://me:pw@Host.example:8443/data/?token=abc") == "https://host.example:8443/data/"
    monkeypatch.chdir(tmp_path)
    assert recorded_source("audio/../music") == str(tmp_path / "music")


def test_repair_refuses_another_configuration_and_a_missing_store(store, source, tmp_path):
    other = build(source, store, "--repair", "--set", "clip.seconds=2")
    assert other.returncode == 2 and "already holds a store built with a different configuration" in other.stderr
    missing = build(source, tmp_path / "none.zarr", "--repair")
    assert (missing.returncode, missing.stderr) == (
        2, f"error: --repair: there is no store at {tmp_path / 'none.zarr'} to repair: build it without --repair\n"
    )


# -- item 13: pipe info shows damage and unfinished builds ---------------------------------------
def test_info_shows_an_array_without_metadata_as_damaged(store, reference):
    assert pipe("info", str(reference)).returncode == 0
    (store / "waveform" / "zarr.json").unlink()
    meta = store / "logmel" / "mel64_sr16000_fft1024_hop512" / "zarr.json"
    edited = json.loads(meta.read_text())
    edited["shape"][0] = 8
    meta.write_text(json.dumps(edited))
    result = pipe("info", str(store))
    assert result.returncode == 1, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "waveform damaged: cannot be opened (waveform/zarr.json is missing): run pipe verify" in lines
    assert (
        "logmel/mel64_sr16000_fft1024_hop512 damaged: shape (8, 64, 126) differs from the manifest's (16, 64, 126): "
        "run pipe verify"
    ) in lines
    assert not any("waveform" in line and "on disk" in line for line in lines)


def test_info_after_a_build_that_never_started_says_it_has_not_finished(source, tmp_path):
    out = tmp_path / "never.zarr"
    failed = build(source, out, "--scheduler", "tcp://127.0.0.1:1")
    assert failed.returncode == 2 and failed.stderr.startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    assert not out.exists()  # the cluster is reached before anything is written (the first-clip check runs on it)
    # killed as soon as its manifest says "building", before any batch is done
    command = [sys.executable, "-m", "pipeline.cli", "build", "demo", "--source", str(source), "--out", str(out), *SETTINGS,
               "--workers", "1", "--quiet"]  # fmt: skip
    def building() -> bool:
        try:
            return "muzarr" in json.loads((out / "zarr.json").read_text()).get("attributes", {})
        except (OSError, ValueError):
            return False

    assert kill_when(command, building)["killed"]
    assert not list((out / "_muzarr").glob("batches/*.json"))
    result = pipe("info", str(out))
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    assert (
        f"state     building: the build has not finished; run the same pipe build command again: "
        f"pipe build demo --source {source.resolve()} --out {out} --set batch_clips=4 --set options.n_clips=16\n"
    ) in result.stdout
    assert "labels (ok clips)\n  (written when the build finishes)" in result.stdout
    assert "on disk" in result.stdout and "missing" not in result.stdout


def test_info_of_a_store_missing_a_table_shows_the_rest(store):
    (store / "tables" / "labels.parquet").unlink()
    result = pipe("info", str(store))
    assert result.returncode == 1 and result.stderr == ""
    assert "labels (ok clips)\n  cannot be shown: tables/labels.parquet is missing: run pipe verify" in result.stdout
    assert "splits\n  random" in result.stdout

