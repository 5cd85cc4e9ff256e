"""`pipe copy` never costs a user their data (issue #21, items 2, 7, 8, 9 and 11).

The source and the destination are resolved before they are compared (a copy into or over its
own source is refused before anything is written); a file larger than its listing is refused
after reading one byte past it; an HTTP destination, a destination under a file and an
unreachable URL are one line; a full disk is one line and a copy cut short (SIGKILL, full disk)
resumes with the same command, keeping what it wrote. Every copy is the real `pipe` command in
a subprocess; servers are Python's `http.server` on 127.0.0.1, full disks a real tmpfs.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
from helpers_servers import NoListing
from helpers_stores import kill_when, store_files

from pipeline.store.copy import COPY_BATCH

BIN = Path(sys.executable).parent
GUARD = Path(__file__).with_name("_guarded.py")
N_CLIPS = 40  # 10 batches: more objects than one read of COPY_BATCH, so a copy can be stopped between two
SETTINGS = ["--set", f"options.n_clips={N_CLIPS}", "--set", "options.seconds=1.0", "--set", "clip.seconds=1.0",
            "--set", "batch_clips=4", "--workers", "1", "--quiet"]  # fmt: skip
FULL = "No space left on device: free some space there and run the same command again to resume"


def pipe(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pipe"), *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=False, cwd=cwd)  # fmt: skip


def one_line(result: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a command that exited 2 (bad input), without its prefix."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    return result.stderr[len("error: ") : -1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("copy")
    out = root / "demo.zarr"
    result = pipe("build", "demo", "--source", root / "audio", "--out", out, *SETTINGS)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def source(store, tmp_path) -> Path:
    """A copy of the store this test may change."""
    return Path(shutil.copytree(store, tmp_path / "s.zarr", symlinks=True))


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that stopped reading (as a bounded read does) is not an error here


@contextmanager
def serve(folder: Path, handler=NoListing) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1; yields the base URL."""
    server = _QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


# -- item 2: both ends resolved before they are compared; nothing of the source is ever touched


@pytest.mark.parametrize(
    ("dst", "overwrite", "expected"),
    [
        ("./s.zarr/../s.zarr", True, "s.zarr and {dst} are the same place ({s})"),
        ("s.zarr/", True, "s.zarr and {dst} are the same place ({s})"),
        ("file://{tmp}/s.zarr", True, "s.zarr and {dst} are the same place ({s})"),
        ("file:s.zarr", True, "s.zarr and {dst} are the same place ({s})"),
        ("link.zarr", True, "s.zarr and {dst} are the same place ({s})"),
        ("s.zarr/inner.zarr", False, "{dst} ({s}/inner.zarr) is inside the source s.zarr ({s})"),
        ("link.zarr/x.zarr", False, "{dst} ({s}/x.zarr) is inside the source s.zarr ({s})"),
    ],
    ids=["dotdot", "slash", "file-url", "file-relative", "symlink", "inside", "inside-via-link"],
)
def test_a_copy_over_or_into_its_source_is_refused(source, tmp_path, dst, overwrite, expected):
    (tmp_path / "link.zarr").symlink_to("s.zarr")
    before = store_files(source)
    dst = dst.format(tmp=tmp_path)
    result = pipe("copy", "s.zarr", dst, *(["--overwrite"] if overwrite else []), cwd=tmp_path)
    s = os.path.realpath(source)
    assert one_line(result) == expected.format(dst=dst, s=s) + ": choose " + (
        "another destination" if "same place" in expected else "a destination outside the source"
    )
    assert store_files(source) == before  # the source is whole, and nothing was written into it


def test_a_source_inside_the_destination_is_refused(store, source):
    """`pipe copy S/inner.zarr S --overwrite` deleted both stores."""
    inner = Path(shutil.copytree(store, source / "inner.zarr"))
    before = store_files(source)
    result = pipe("copy", inner, f"{source}/", "--overwrite")
    real = os.path.realpath(source)
    assert one_line(result) == (
        f"the source {inner} ({real}/inner.zarr) is inside {source}/ ({real}): "
        "choose a destination that does not hold the source"
    )
    assert store_files(source) == before


# -- item 11: a copy cut short resumes with the same command


def test_a_killed_copy_resumes_and_copies_only_what_is_missing(store, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(store, served / "s.zarr")
    release = threading.Event()

    class Held(NoListing):
        """Holds every request for a waveform shard until released: the copy stops after its first read."""

        def do_GET(self):
            if "/waveform/c/" in self.path:
                release.wait(120)
            super().do_GET()

    # what the copy writes in its order, the manifest last; its first read holds no waveform shard
    ordered = sorted({*json.loads((store / "_muzarr" / "keys.json").read_text())["keys"], "_muzarr/keys.json"} - {"zarr.json"})
    assert len(ordered) > COPY_BATCH and not any(k.startswith("waveform/c/") for k in ordered[:COPY_BATCH])
    dst = tmp_path / "copy.zarr"

    def written() -> int:
        return sum(1 for p in dst.rglob("*") if p.is_file() and not p.name.endswith(".partial")
                   and p.name != "copy.json")  # fmt: skip

    with serve(served, Held) as base:
        command = [str(BIN / "pipe"), "copy", f"{base}/s.zarr", str(dst)]
        killed = kill_when(command, lambda: written() >= COPY_BATCH)
        release.set()
        assert killed["killed"], killed
        kept = {p.relative_to(dst).as_posix(): p.stat().st_mtime_ns for p in dst.rglob("*")
                if p.is_file() and p.name != "copy.json"}  # fmt: skip
        assert len(kept) == COPY_BATCH and not (dst / "zarr.json").exists()
        again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert re.fullmatch(
        rf"copied {len(ordered) + 1 - COPY_BATCH} objects \([\d.]+ MiB\) from {re.escape(base)}/s\.zarr to "
        rf"{re.escape(str(dst))}; {COPY_BATCH} more kept from the interrupted copy", again.stdout.splitlines()[0]
    ), again.stdout
    assert {k: (dst / k).stat().st_mtime_ns for k in kept} == kept  # not one of them written again
    assert store_files(dst) == store_files(store)  # byte for byte, and no marker left behind


# -- item 9: a full disk is one line, and the same command finishes once there is space


def test_a_full_disk_during_a_copy_is_one_line_and_the_same_command_finishes(store, tmpfs):
    dst = tmpfs("size=1m") / "copy.zarr"
    full = pipe("copy", store, dst)
    assert re.fullmatch(rf"cannot write {dst}/\S+: {FULL}", one_line(full)), full.stderr
    on_disk = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}
    assert len(on_disk) > 1 and "zarr.json" not in on_disk  # some keys (and the marker), never the manifest
    tmpfs("size=16m")
    again = pipe("copy", store, dst)
    assert again.returncode == 0, again.stderr
    assert re.search(rf"; {len(on_disk) - 1} more kept from the interrupted copy$", again.stdout.splitlines()[0])
    assert store_files(dst) == store_files(store)


# -- item 7: a file larger than its listing is never read whole


@pytest.mark.parametrize("where", ["local", "http"])
def test_a_file_larger_than_listed_is_refused_after_one_byte_more(source, tmp_path, where):
    listed = json.loads((source / "_muzarr" / "keys.json").read_text())["keys"]
    key = next(k for k in sorted(listed) if k.startswith("waveform/c/"))
    os.truncate(source / key, 2 << 30)  # a sparse 2 GiB shard: no disk used, 2 GiB to whoever reads it whole
    report, outside = tmp_path / "report.json", tmp_path / "outside"
    outside.mkdir()
    with serve(tmp_path) if where == "http" else nullcontext() as base:
        src = f"{base}/s.zarr" if base else str(source)
        # the command under a 2 GiB address-space cap (tests/_guarded.py), as the adversarial tests run it
        process = subprocess.run([sys.executable, str(GUARD), str(report), str(outside), str(2 << 30), "--", "pipe",
                                  "copy", src, str(tmp_path / "copy.zarr")],
                                 env={**os.environ, "MALLOC_ARENA_MAX": "1"}, check=False)  # fmt: skip
    assert process.returncode == 0
    guarded = json.loads(report.read_text())
    (result,) = guarded["results"]
    assert (result["code"], result["stderr"]) == (2, (
        f"error: {src}: {key} has more than {listed[key]} bytes, its key list says {listed[key]}: refusing it; "
        "get a fresh copy of the store, or rebuild it\n"
    ))  # fmt: skip
    assert 0 < guarded["peak_rss"] < 512 << 20  # the process never held the file


# -- item 8: places no store can be written to, or reached, are one line


def test_http_destinations_are_refused_in_one_line(store, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    with serve(served, http.server.SimpleHTTPRequestHandler) as base:
        for overwrite in ([], ["--overwrite"]):
            assert one_line(pipe("copy", store, f"{base}/up.zarr", *overwrite)) == (
                f"cannot write to http(s) URLs ({base}/up.zarr): copy to a local path or s3:// instead"
            )
        built = pipe("build", "demo", "--source", tmp_path / "audio", "--out", f"{base}/b.zarr", *SETTINGS)
        assert one_line(built) == f"cannot write to http(s) URLs ({base}/b.zarr): build to a local path or s3:// instead"
    assert list(served.iterdir()) == [] and not (tmp_path / "audio").exists()  # refused before indexing


def test_a_destination_under_a_file_and_unreachable_urls_are_one_line(store, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert one_line(pipe("copy", store, afile / "x.zarr")) == (
        f"cannot write {afile}/x.zarr: {afile} exists and is not a folder: choose another destination"
    )
    assert one_line(pipe("copy", store, afile)) == f"cannot write {afile}: it exists and is not a folder: choose another destination"
    assert afile.read_text() == "mine"
    assert one_line(pipe("verify", "ftp://127.0.0.1:1/x.zarr")) == (
        "cannot reach ftp://127.0.0.1:1/x.zarr: ConnectionRefusedError: [Errno 111] Connection refused: "
        "check the address and that its server is running"
    )
    assert one_line(pipe("verify", "nosuch://bucket/x.zarr")) == (
        "nosuch://bucket/x.zarr: unsupported URL (Protocol not known: nosuch): use a local path, s3:// or http(s)://"
    )
