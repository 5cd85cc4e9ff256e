"""Shared test fixtures: the real audio in ../shared/fixtures, stores built once per run, servers.

Helpers more than one test module uses live in ``tests/helpers_*.py`` (stores' files and killed
builds, HTTP servers, in-process ``train``, hostile environments, dataset trees); a test module
never imports another. A store that tests only read is built once per run (:func:`built_once`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# librosa compiles numba code with cache=True: processes compiling the same function at once corrupt
# a shared cache and a later process segfaults on it (librosa #1998, numba #10128; seen in CI). Each
# pytest-xdist worker, and what it starts, caches in a folder of its own, in a folder fresh for this
# run (Dask workers get their own too: pipeline.cluster.PrivateNumbaCache). The controller's folder
# is set first and inherited, so a worker overrides it. Set before anything imports numba.
_NUMBA_ROOT_MADE_HERE = "MUZARR_TEST_NUMBA_ROOT" not in os.environ  # the controller, or `pytest -n0`
if _NUMBA_ROOT_MADE_HERE:
    os.environ["MUZARR_TEST_NUMBA_ROOT"] = tempfile.mkdtemp(prefix="muzarr-test-numba-")
os.environ["NUMBA_CACHE_DIR"] = os.path.join(
    os.environ["MUZARR_TEST_NUMBA_ROOT"], os.environ.get("PYTEST_XDIST_WORKER", "main")
)


def pytest_unconfigure(config) -> None:
    if _NUMBA_ROOT_MADE_HERE:  # after every worker has stopped
        shutil.rmtree(os.environ["MUZARR_TEST_NUMBA_ROOT"], ignore_errors=True)


ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MUZARR_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The real-audio fixture folder; skips (or fails, under MUZARR_REQUIRE_FIXTURES=1) when absent."""
    if not FIXTURES.is_dir():
        message = f"real-audio fixtures not found at {FIXTURES} (set MUZARR_FIXTURES or put shared/ beside the repo)"
        if os.environ.get("MUZARR_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return FIXTURES




def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder ``build(folder)`` fills once per test run, whichever pytest-xdist worker asks first.

    For stores the tests only read: a session fixture alone is built once per worker, so each of
    the two CI workers built its own. Here the first worker builds under a file lock in the folder
    all workers share, and the others wait for it and reuse what it built. A build that fails leaves
    no ``.built`` mark, so the next worker to ask tries again (and reports its own failure).
    """
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # one process: its own temporary folder
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> str:
    """A 40-clip demo store (2 s clips) holding every input some model reads; built once per run, read-only.

    waveform 16 kHz, log-mel 64 @ 16 kHz, log-mel 96 @ 12 kHz pad 37 (the catalog's demo
    features), log-mel 128 @ 22.05 kHz and the gtzan57 table.
    """
    from pipeline.build import build
    from pipeline.config import apply_overrides, config_for, load_catalog

    catalog = load_catalog()
    config = apply_overrides(
        config_for("demo", catalog["demo"]),
        add_features=[
            {"kind": "logmel", "n_mels": 128, "sample_rate": 22050, "n_fft": 2048, "hop_length": 512},
            {"kind": "gtzan57"},
        ],
        settings={"options.n_clips": 40, "options.seconds": 2.0, "clip.seconds": 2.0, "batch_clips": 8},
    )

    def build_small(root: Path) -> None:
        report = build(config, source=str(root / "audio"), out=str(root / "small.zarr"), workers=2, progress=False)
        assert report.n_failed == 0

    return str(built_once(tmp_path_factory, "small_store", build_small) / "small.zarr")


@pytest.fixture(scope="session")
def gtzan_cli_build(fixtures_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`pipe build gtzan --source ../shared/fixtures/gtzan` run once, as a user runs it from the repo root.

    Returns ``(completed_process, store_path)``; the catalog's GTZAN recipe stores the waveform,
    a 128-band log-mel and the gtzan57 table. Built once per run (the command's exit status and
    output are kept beside the store for the other workers); read-only.
    """
    source = os.path.relpath(fixtures_dir / "gtzan", ROOT)
    command = [sys.executable, "-m", "pipeline.cli", "build", "gtzan", "--source", source]

    def build_gtzan(root: Path) -> None:
        result = subprocess.run([*command, "--out", str(root / "g.zarr")], capture_output=True, text=True, cwd=ROOT,
                                check=False)  # fmt: skip
        (root / "result.json").write_text(json.dumps([result.returncode, result.stdout, result.stderr]))

    root = built_once(tmp_path_factory, "gtzan_cli", build_gtzan)
    returncode, stdout, stderr = json.loads((root / "result.json").read_text())
    out = root / "g.zarr"
    return subprocess.CompletedProcess([*command, "--out", str(out)], returncode, stdout, stderr), out


@pytest.fixture()
def s3():
    """A real S3-compatible server (moto) on 127.0.0.1 with a bucket ``tracks``: the environment to reach it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import requests

    # moto keeps its buckets per process, not per server: start from none (another test's are still there)
    requests.post(f"http://{host}:{port}/moto-api/reset", timeout=30).raise_for_status()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIATRACKS", "AWS_SECRET_ACCESS_KEY": "tracks-secret",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    import s3fs

    s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"], endpoint_url=env["AWS_ENDPOINT_URL"]).mkdir("tracks")
    try:
        yield env
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """An external Dask cluster (1 worker) for the guarded builds: the cap is on the driver, the process that
    reads the store's sizes; a worker computes batches sized by the build's own configuration."""
    import json
    import signal
    import time

    folder = tmp_path_factory.mktemp("cluster")
    scheduler_file = folder / "scheduler.json"
    dask = str(Path(sys.executable).parent / "dask")
    common = {"start_new_session": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    cluster = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(scheduler_file)], **common)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.1)
        cluster.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "1",
                                         "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"], **common))  # fmt: skip
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        for process in reversed(cluster):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture
def tmpfs(tmp_path):
    """A mount point and a function mounting a tmpfs there with the given options (unmounted at the end)."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)]
        if mounted:
            command = ["mount", "-o", f"remount,{options}", str(point)]
        if subprocess.run(command, capture_output=True, check=False).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(options)
        return point

    yield mount
    if mounted:
        subprocess.run(["umount", str(point)], check=True)
