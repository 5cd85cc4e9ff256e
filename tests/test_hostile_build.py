"""The build under hostile conditions: unreadable source folders, an --out that cannot be
written (forbidden, read-only, full), Ctrl-C, and two builds writing one store.

Every build is the real `pipe` command in a subprocess on a real Dask cluster. Permission
cases run without root's DAC override (setpriv); full and read-only disks are real tmpfs mounts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import MuzarrError, open_store
from pipeline.datasets.demo import index_demo

BIN = Path(sys.executable).parent
N_CLIPS, BATCH = 48, 4
SETTINGS = ["--set", f"options.n_clips={N_CLIPS}", "--set", "options.seconds=1.0", "--set", "clip.seconds=1.0",
            "--set", f"batch_clips={BATCH}", "--quiet"]
NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
RUN_LINE = re.compile(r"\((\d+) batches run, (\d+) reused")
HOST = socket.gethostname()


def pipe(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess:
    command = [str(BIN / "pipe"), *args]
    return subprocess.run(NO_OVERRIDE + command if unprivileged else command, capture_output=True, text=True,
                          timeout=300, check=False)


def build_args(source: Path, out: Path, *extra: str, workers: int = 1) -> list[str]:
    return ["build", "demo", "--source", str(source), "--out", str(out), "--workers", str(workers), *SETTINGS, *extra]


def needs_setpriv():
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")


def assert_complete(out: Path, n_clips: int = N_CLIPS) -> None:
    check = pipe("verify", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    assert open_store(str(out)).n_clips == n_clips
    assert not (out / "_muzarr" / "lock.json").exists()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile_audio")
    index_demo(str(root), n_clips=N_CLIPS, seconds=1.0)
    return root


# -- item 5: an unreadable source folder is a failure with its reason


def test_an_unreadable_class_folder_is_a_failure_listed_with_its_reason(source, tmp_path):
    needs_setpriv()
    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    (src / "locked").mkdir()
    shutil.copy(next(source.rglob("*.wav")), src / "ok" / "a.wav")
    shutil.copy(next(source.rglob("*.wav")), src / "locked" / "x.wav")
    (src / "locked").chmod(0)
    out = tmp_path / "f.zarr"
    result = pipe("build", "folder", "--source", str(src), "--out", str(out), "--workers", "1", "--quiet",
                  unprivileged=True)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"{out}: 1 of 1 clips stored, 0 failed, 1 source folder\(s\) unreadable \(1 batches run.*",
                        lines[-2])
    assert lines[-1] == "  failed locked/ at index: PermissionError: Permission denied"
    assert result.stderr == ""
    info = pipe("info", str(out))
    assert ("  1 source folder(s) could not be read, their clips are not in the store: "
            "locked/ (PermissionError: Permission denied)") in info.stdout.splitlines()
    manifest = open_store(str(out)).manifest
    assert manifest.index_info["unreadable_folders"] == [{"path": "locked", "message": "PermissionError: Permission denied"}]


def test_an_unreadable_source_root_is_one_line(source, tmp_path):
    needs_setpriv()
    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    shutil.copy(next(source.rglob("*.wav")), src / "ok" / "a.wav")
    src.chmod(0)
    try:
        result = pipe("build", "folder", "--source", str(src), "--out", str(tmp_path / "f.zarr"), "--quiet",
                      unprivileged=True)
    finally:
        src.chmod(0o755)
    assert result.returncode == 2
    assert result.stderr == (f"error: cannot read dataset folder {src}: PermissionError: Permission denied: "
                             "make it readable (e.g. chmod u+rx) or choose another source folder\n")
    assert not (tmp_path / "f.zarr").exists()


# -- item 9: an --out that cannot be written is one line, exit 2, and the rerun resumes


def test_a_forbidden_out_folder_is_one_line(source, tmp_path):
    needs_setpriv()
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    out = parent / "d.zarr"
    result = pipe(*build_args(source, out), unprivileged=True)
    assert result.returncode == 2
    assert result.stderr == f"error: cannot write {out}: Permission denied: make it writable by this user, or choose another --out\n"


def test_a_read_only_filesystem_is_one_line(source, tmpfs):
    out = tmpfs("ro,size=1m") / "d.zarr"
    result = pipe(*build_args(source, out))
    assert result.returncode == 2
    assert result.stderr == f"error: cannot write {out}: Read-only file system: remount it read-write, or choose another --out\n"


def test_a_disk_full_during_the_batches_is_one_line_and_the_rerun_resumes(source, tmpfs):
    out = tmpfs("size=1m") / "d.zarr"
    full = pipe(*build_args(source, out))
    assert full.returncode == 2
    assert re.fullmatch(
        rf"error: cannot write {out}/\S+: No space left on device: "
        "free some space there and run the same command again to resume\n", full.stderr), full.stderr
    done = len(list((out / "_muzarr" / "batches").glob("*.json")))
    tmpfs("size=16m")
    again = pipe(*build_args(source, out))
    assert again.returncode == 0, again.stderr
    run, reused = map(int, RUN_LINE.search(again.stdout).groups())
    assert (run, reused) == (N_CLIPS // BATCH - done, done)
    assert_complete(out)


def test_a_disk_full_during_finalize_is_one_line_and_the_rerun_finishes(source, tmpfs):
    mount = tmpfs("size=16m")
    out = mount / "d.zarr"
    assert pipe(*build_args(source, out)).returncode == 0
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as handle:  # fill the disk, then free three pages: the lock and target.json fit
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - 3 * 4096)
    full = pipe(*build_args(source, out))
    assert full.returncode == 2
    assert re.fullmatch(
        rf"error: cannot write {out}/tables/\w+\.parquet: No space left on device: "
        "free some space there and run the same command again to resume\n", full.stderr), full.stderr
    filler.unlink()
    again = pipe(*build_args(source, out))
    assert again.returncode == 0, again.stderr
    assert_complete(out)


# -- issue #21 item 8: a --scheduler that is no address is one line (Dask's parse ended in a traceback)


@pytest.mark.parametrize("address", ["garbage", "htp://head:port"])
def test_a_scheduler_that_is_no_address_is_one_line_before_anything_is_written(tmp_path, address):
    out = tmp_path / "d.zarr"
    result = pipe(*build_args(tmp_path / "audio", out, "--scheduler", address))
    assert (result.returncode, result.stderr) == (
        2, f"error: --scheduler {address!r} is not a Dask scheduler address like tcp://host:8786\n")
    assert not out.exists()


# -- item 10: Ctrl-C is one line, exit 130, and the rerun resumes


def test_ctrl_c_prints_one_line_and_the_rerun_resumes(source, tmp_path):
    out = tmp_path / "d.zarr"
    process = subprocess.Popen([str(BIN / "pipe"), *build_args(source, out, workers=2)],
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and len(list((out / "_muzarr" / "batches").glob("*.json"))) < 3:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal sends it: to the command and its workers
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - sent < 30
    assert process.returncode == 130
    assert stderr == "interrupted: run the same command again to resume\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the worker processes are gone too
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("worker processes outlived the interrupted build")
    assert not (out / "_muzarr" / "lock.json").exists()
    again = pipe(*build_args(source, out))
    assert again.returncode == 0, again.stderr
    run, reused = map(int, RUN_LINE.search(again.stdout).groups())
    assert reused >= 3 and run + reused == N_CLIPS // BATCH
    assert_complete(out)


# -- item 15: one writer per store


def test_a_second_build_into_the_same_store_is_refused_naming_the_first(source, tmp_path):
    out = tmp_path / "d.zarr"
    lock = out / "_muzarr" / "lock.json"
    first = subprocess.Popen([str(BIN / "pipe"), *build_args(source, out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    while first.poll() is None and not lock.exists():
        time.sleep(0.01)
    # the first build and its workers are paused while the second tries: however fast this machine
    # is, the first is still under way (a 48-clip build can end before a second `pipe` has started;
    # its cluster is up before it takes the lock, for the first-clip check: its batches then take
    # well under a second)
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = pipe(*build_args(source, out, "--overwrite", "--set", "clip.seconds=0.5"))
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert second.returncode == 2
    assert re.fullmatch(
        rf"error: {out} is being built by pid {first.pid} on host {re.escape(HOST)} since \S+ \(pipe build demo .*\): "
        rf"wait for it to finish, or if that process is gone, remove {out}/_muzarr/lock.json\n", second.stderr
    ), second.stderr
    assert first.returncode == 0, stderr
    assert f"{N_CLIPS} of {N_CLIPS} clips stored" in stdout
    assert_complete(out)
    assert open_store(str(out)).manifest.config["clip"]["seconds"] == 1.0


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_lock_of_a_dead_build_is_taken_over(source, tmp_path):
    out = tmp_path / "d.zarr"
    (out / "_muzarr").mkdir(parents=True)
    pid = dead_pid()
    stale = {"pid": pid, "host": HOST, "started": "2026-01-01T00:00:00+00:00", "started_unix": time.time() - 60,
             "token": "0" * 32, "command": "pipe build demo"}
    (out / "_muzarr" / "lock.json").write_text(json.dumps(stale))
    result = pipe(*build_args(source, out))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"note: {out}: taking over the lock of pid {pid} on host {HOST} "
                             "(since 2026-01-01T00:00:00+00:00): that process is gone\n")
    assert_complete(out)
    keys = json.loads((out / "_muzarr" / "keys.json").read_text())["keys"]
    assert "_muzarr/lock.json" not in keys


def test_a_lock_from_another_host_is_not_taken_over(source, tmp_path):
    out = tmp_path / "d.zarr"
    (out / "_muzarr").mkdir(parents=True)
    held = {"pid": 4242, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00", "started_unix": 1.0,
            "token": "1" * 32, "command": "pipe build demo --out d.zarr"}
    (out / "_muzarr" / "lock.json").write_text(json.dumps(held))
    result = pipe(*build_args(source, out))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {out} is being built by pid 4242 on host elsewhere since 2026-01-01T00:00:00+00:00 "
        f"(pipe build demo --out d.zarr): wait for it to finish, or if that process is gone, remove "
        f"{out}/_muzarr/lock.json\n")
    assert sorted(p.name for p in out.rglob("*")) == ["_muzarr", "lock.json"]


def test_an_unreadable_lock_is_named_as_read_not_written(source, tmp_path):
    """Issue #21 item 13: it said "cannot write lock.json" when it could not read it."""
    needs_setpriv()
    out = tmp_path / "d.zarr"
    (out / "_muzarr").mkdir(parents=True)
    lock = out / "_muzarr" / "lock.json"
    lock.write_text("{}")
    lock.chmod(0)
    result = pipe(*build_args(source, out), unprivileged=True)
    assert result.returncode == 2
    assert result.stderr == (f"error: cannot read the lock {lock}: Permission denied: make it readable by this user, "
                             "or if no build is writing the store, remove it\n")
    assert sorted(p.name for p in out.rglob("*")) == ["_muzarr", "lock.json"]


def test_overwrite_refusing_a_foreign_folder_leaves_no_lock_behind(source, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = pipe(*build_args(source, out, "--overwrite"))
    assert result.returncode == 2
    assert result.stderr == (f"error: {out} exists and is not a muzarr store (it holds notes.txt): "
                             "choose another --out, or a new folder\n")
    assert sorted(p.name for p in out.rglob("*")) == ["notes.txt"]


def test_the_lock_on_an_object_store_refuses_a_second_writer_and_takes_over_a_dead_one(monkeypatch):
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "AKIAMUZARRTESTKEY0042", "secret": "muzarr-secret-0042",
               "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs

    from pipeline.store.location import location
    from pipeline.store.lock import writer_lock

    fs = s3fs.S3FileSystem(**options)
    try:
        fs.mkdir("muzarr-lock")
        url = "s3://muzarr-lock/d.zarr"
        with writer_lock(location(url, options), command="pipe build demo"):
            held = json.loads(fs.cat_file("muzarr-lock/d.zarr/_muzarr/lock.json"))
            assert held["pid"] == os.getpid()
            with pytest.raises(MuzarrError) as refused, writer_lock(location(url, options), command="pipe build demo"):
                pass
            assert str(refused.value) == (
                f"{url} is being built by pid {os.getpid()} on host {HOST} since {held['started']} (pipe build demo): "
                f"wait for it to finish, or if that process is gone, remove {url}/_muzarr/lock.json")
        assert not fs.exists("muzarr-lock/d.zarr/_muzarr/lock.json")
        stale = {**held, "pid": dead_pid(), "token": "2" * 32}
        fs.pipe_file("muzarr-lock/d.zarr/_muzarr/lock.json", json.dumps(stale).encode())
        with writer_lock(location(url, options), command="pipe build demo"):
            assert json.loads(fs.cat_file("muzarr-lock/d.zarr/_muzarr/lock.json"))["pid"] == os.getpid()
        assert not fs.exists("muzarr-lock/d.zarr/_muzarr/lock.json")
    finally:
        server.stop()
