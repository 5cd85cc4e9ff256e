"""Looking at a store's files, and killing a build mid-way: the helpers the store tests share.

A store is compared file by file: :func:`store_files` (bytes), :func:`file_versions` (bytes and
mtime, to tell a rewrite from a file left alone), :func:`snapshot` (bytes, and the manifest apart,
without the fields a rebuild may change).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd

from pipeline import open_store


def store_files(out: Path, prefix: str = "") -> dict[str, bytes]:
    """Every file of a store (or of its folder ``prefix``): its path inside the store -> its bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / prefix).rglob("*")) if p.is_file()}


def file_versions(out: Path, prefix: str = "") -> dict[str, tuple[int, bytes]]:
    """Every file of a store (or of its folder ``prefix``): its path -> (mtime_ns, bytes)."""
    return {
        p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted((out / prefix).rglob("*")) if p.is_file()
    }  # fmt: skip


def snapshot(out: Path, *, ignore: tuple[str, ...] = ("finished",)) -> tuple[dict[str, bytes], dict]:
    """Every file of a store but the root ``zarr.json``, and the manifest it holds less the ``ignore`` fields.

    The manifest is compared as data, the rest of the root ``zarr.json`` (Zarr's consolidated copy of
    the arrays' metadata) is left out: every array's own ``zarr.json`` is among the files.
    """
    files = store_files(out)
    manifest = json.loads(files.pop("zarr.json"))["attributes"]["muzarr"]
    for field in ignore:
        manifest.pop(field)
    return files, manifest


def assert_same_store(out: Path, reference: Path) -> None:
    """The two stores hold the same bytes, manifest (but for when it finished), checksums and tables."""
    files, manifest = snapshot(out)
    ref_files, ref_manifest = snapshot(reference)
    assert sorted(files) == sorted(ref_files)
    assert [k for k in files if files[k] != ref_files[k]] == []
    assert manifest == ref_manifest
    a, b = open_store(str(out)), open_store(str(reference))
    assert {n: x.checksum for n, x in a.arrays.items()} == {n: x.checksum for n, x in b.arrays.items()}
    for table in ("clips", "labels", "splits", "checksums"):
        pd.testing.assert_frame_equal(a.table(table), b.table(table))
    assert a.complete and (a.status == 1).all()


def markers(out: Path) -> dict[str, tuple[int, bytes]]:
    """Completion markers on disk: name -> (mtime_ns, bytes)."""
    folder = out / "_muzarr" / "batches"
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("*.json")}


def marker_count(out: Path) -> int:
    """How many completion markers are on disk (a cheap poll: names only)."""
    try:
        return sum(1 for entry in os.scandir(out / "_muzarr" / "batches") if entry.name.endswith(".json"))
    except FileNotFoundError:
        return 0


def kill_when(command: list[str], condition, *, poll: float = 0.002) -> dict:
    """Start ``command`` in its own session; SIGKILL its whole process group once ``condition()`` holds."""
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = False
    while process.poll() is None:
        if condition():
            os.killpg(process.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(poll)
    out, err = process.communicate(timeout=60)
    if killed:
        wait_group_gone(process.pid)
    return {"killed": killed, "returncode": process.returncode, "stdout": out.decode(), "stderr": err.decode()}


def wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of group ``pgid`` is left (a killed build's Dask workers included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"processes of group {pgid} survived SIGKILL")
