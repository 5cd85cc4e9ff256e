"""Stores at URLs: built to S3 (a real moto server), read and copied over plain HTTP, copied back.

Servers bind to 127.0.0.1 only. The HTTP servers are Python's own `http.server`: one that
ignores Range requests (like the stdlib default) and one that honours them, and neither
lists folders, so reading must never need a listing.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers_servers import NoListing, Ranged
from helpers_stores import snapshot

from pipeline import MuzarrError, open_store
from pipeline.cli import main
from pipeline.store.copy import copy_store
from pipeline.store.verify import verify_store

BIN = Path(sys.executable).parent
BUCKET = "muzarr-test"
KEY_ID = "AKIAMUZARRTESTKEY0042"
SECRET = "muzarr-secret-that-must-never-be-stored-0042"
SETTINGS = ["--set", "options.n_clips=16", "--set", "options.seconds=1.0", "--set", "clip.seconds=1.0",
            "--set", "batch_clips=4", "--quiet"]


def pipe(*args, env=None) -> subprocess.CompletedProcess:
    """The real `pipe` command in its own process (builds need it: their Dask workers are processes)."""
    return subprocess.run([str(BIN / "pipe"), *args], capture_output=True, text=True, timeout=300, env=env)


def pipe_here(*args):
    """The same command in this process (click's runner): for copies and checks, where start-up would dominate."""
    return CliRunner().invoke(main, list(args))


def assert_reads_like(store, reference) -> None:
    assert {k: v for k, v in store.manifest.to_dict().items() if k != "finished"} == {
        k: v for k, v in reference.manifest.to_dict().items() if k != "finished"
    }
    for name in reference.arrays:
        np.testing.assert_array_equal(store.read(name, slice(None)), reference.read(name, slice(None)))
        np.testing.assert_array_equal(store.array(name)[2:7], reference.array(name)[2:7])
        np.testing.assert_array_equal(store.read(name, [9, 1, 4]), reference.read(name, [9, 1, 4]))
    for table in ("clips", "labels", "splits", "checksums"):
        pd.testing.assert_frame_equal(store.table(table), reference.table(table))
    np.testing.assert_array_equal(store.status, reference.status)
    np.testing.assert_array_equal(store.label_matrix, reference.label_matrix)
    np.testing.assert_array_equal(store.split("random", "train"), reference.split("random", "train"))


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remote")
    out = root / "served" / "demo.zarr"
    result = pipe("build", "demo", "--source", str(root / "src"), "--out", str(out), "--workers", "2", *SETTINGS)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1, credentials and endpoint in the environment (as a user would set them)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": f"http://{host}:{port}",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


@pytest.fixture(scope="module")
def s3_store(s3, local) -> str:
    url = f"s3://{BUCKET}/demo.zarr"
    source = local.parent.parent / "src"
    result = pipe("build", "demo", "--source", str(source), "--out", url, "--workers", "2", *SETTINGS, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    return url


def test_a_store_built_on_s3_reads_back_like_a_local_build(s3_store, local):
    assert_reads_like(open_store(s3_store), open_store(str(local)))
    assert verify_store(s3_store).ok
    result = pipe_here("verify", s3_store)
    assert result.exit_code == 0 and "clean" in result.output


def test_credentials_never_reach_the_store(s3_store, s3, local, tmp_path):
    keys = s3.find(f"{BUCKET}/demo.zarr")
    assert len(keys) > 20 and f"{BUCKET}/demo.zarr/zarr.json" in keys
    for key in keys:
        data = s3.cat_file(key)
        assert KEY_ID.encode() not in data and SECRET.encode() not in data, key
    back = tmp_path / "back.zarr"
    assert copy_store(s3_store, str(back)).ok
    for path in back.rglob("*"):
        if path.is_file():
            assert KEY_ID.encode() not in path.read_bytes() and SECRET.encode() not in path.read_bytes()


def test_copy_local_to_s3_and_back_is_identical(s3_store, s3, local, tmp_path):
    up = pipe_here("copy", str(local), f"s3://{BUCKET}/copy.zarr")
    assert up.exit_code == 0, up.output
    assert "clean" in up.output
    down = tmp_path / "down.zarr"
    result = pipe_here("copy", f"s3://{BUCKET}/copy.zarr", str(down))
    assert result.exit_code == 0, result.output
    assert snapshot(down) == snapshot(local)
    # The store built on S3 holds the same bytes as the one built on disk.
    from_s3 = tmp_path / "from_s3.zarr"
    assert copy_store(s3_store, str(from_s3)).ok
    assert snapshot(from_s3) == snapshot(local)
    again = pipe_here("copy", str(local), f"s3://{BUCKET}/copy.zarr")
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.fixture(scope="module", params=[NoListing, Ranged], ids=["no-range", "range"])
def http_root(request, local):
    """Serve the folder holding the local store; yields a function from store folder name to URL."""
    served = local.parent
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(request.param, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_store_reads_over_plain_http(http_root, local):
    _, base = http_root
    store = open_store(f"{base}/demo.zarr")
    assert store.complete and store.n_clips == 16
    assert_reads_like(store, open_store(str(local)))
    assert verify_store(f"{base}/demo.zarr").ok


def test_copy_from_http_uses_the_key_list(http_root, local, tmp_path):
    _, base = http_root
    target = tmp_path / "from_http.zarr"
    result = pipe("copy", f"{base}/demo.zarr", str(target))
    assert result.returncode == 0, result.stderr
    listed = json.loads((local / "_muzarr" / "keys.json").read_text())["keys"]
    assert f"copied {len(listed) + 1} objects" in result.stdout  # the listed keys and the list itself
    assert "Unclosed" not in result.stderr
    assert snapshot(target) == snapshot(local)


def test_missing_http_store_is_one_clear_error(http_root):
    _, base = http_root
    with pytest.raises(MuzarrError, match="no muzarr store"):
        open_store(f"{base}/nothing-here.zarr")


@pytest.mark.parametrize("bad_key", ["../escaped.txt", "/tmp/absolute.txt", "tables/../../up.txt"])
def test_copy_refuses_keys_that_leave_the_store(http_root, local, tmp_path, bad_key):
    served, base = http_root
    hostile = served / f"hostile-{abs(hash(bad_key))}.zarr"
    if not hostile.exists():
        shutil.copytree(local, hostile)
        keys = json.loads((hostile / "_muzarr" / "keys.json").read_text())
        keys["keys"][bad_key] = 5
        (hostile / "_muzarr" / "keys.json").write_text(json.dumps(keys))
    target = tmp_path / "inside" / "copy.zarr"
    result = pipe_here("copy", f"{base}/{hostile.name}", str(target))
    assert result.exit_code == 2 and "refusing" in result.output and isinstance(result.exception, SystemExit)
    assert not target.exists() and not (tmp_path / "inside" / "escaped.txt").exists()


def test_a_copy_that_does_not_verify_exits_non_zero(http_root, local, tmp_path):
    served, base = http_root
    damaged = served / "damaged.zarr"
    if not damaged.exists():
        shutil.copytree(local, damaged)
        shard = sorted((damaged / "waveform" / "c").rglob("*"))[-1]
        data = bytearray(shard.read_bytes())
        data[len(data) // 3] ^= 0x5A
        shard.write_bytes(bytes(data))
    result = pipe_here("copy", f"{base}/damaged.zarr", str(tmp_path / "copy.zarr"))
    assert result.exit_code == 1, result.output
    assert "damaged" in result.output and "waveform" in result.output and "DAMAGED" in result.output


def test_train_reads_a_store_over_http(http_root, local, tmp_path):
    """`train --store http://...` streams the store over HTTP and learns exactly what it learns from disk."""
    from training.run.config import TrainConfig
    from training.run.loop import train

    _, base = http_root
    common = {"model": "mlp", "epochs": 2, "lr": 1e-2, "emissions": False, "cache": "none"}
    remote = train(TrainConfig(store=f"{base}/demo.zarr", **common), out=tmp_path / "http", progress=False)
    on_disk = train(TrainConfig(store=str(local), **common), out=tmp_path / "disk", progress=False)
    assert remote["store"].startswith("http://127.0.0.1:")
    assert remote["test"]["roc_auc"] == pytest.approx(on_disk["test"]["roc_auc"], abs=1e-9)
    assert remote["valid"]["loss"] == pytest.approx(on_disk["valid"]["loss"], rel=1e-9)
