"""Hostile stores, generated: every command ends in one line, bounded, and stays inside the store
(issue: hostile and careless input, the adversarial module).

A store is something people download and share. Hypothesis draws damage and tampering of a
real store (built once by ``pipe build demo``): inflated clip counts, shapes, chunks and
shards; symbolic links to a file or a folder outside the store; array names and listed keys
with ``..``, absolute paths and URLs; truncated, grown and huge (sparse) files; tables whose
rows disagree with the arrays; flipped bytes. Then ``pipe info``, ``pipe verify``, ``pipe
copy``, ``pipe build`` (growing the store) and ``train`` run on it, each in a process capped at
2 GiB of address space (``tests/_guarded.py``) that records every file it opens, and must:

* end in one ``error:`` line with a non-zero exit, or (``pipe verify``, a copy that does not
  verify) in their damage report with exit 1; never a traceback;
* read no file outside the store, and write nothing outside ``--out``;
* leave no byte of an outside file in a copy or an output.

Structural tampering (sizes, links, keys, tables) must fail every command. Damage to
content that only reading every byte can find (truncated or flipped bytes of a shard) must
fail ``pipe verify``, ``pipe copy`` (which verifies) and ``train`` when the bytes are in the
array it reads; ``pipe info`` does not read shards, and ``pipe build`` reuses finished batches
(``--repair`` is the command that checks), so there they only must not crash.

By default the draws are derandomized (the same stores every run: CI never fails on a new
draw); ``MUZARR_HOSTILE_EXAMPLES=N`` draws N fresh stores per property (N/3 for build and
train) to keep looking. Default: 12 for the pipe commands, 4 for build and train, about two
minutes on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from helpers_hostile import Change, check, fingerprint, guarded, outside_folder
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

SCALE = int(os.environ.get("MUZARR_HOSTILE_EXAMPLES", "0"))
PIPE_EXAMPLES = SCALE or 12
TRAIN_EXAMPLES = max(1, SCALE // 3) if SCALE else 4
TRAINED = "logmel/mel64_sr16000_fft1024_hop512"  # what `train --model mlp` reads
TRIED = {"pipe": 0, "train_build": 0}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    out = root / "demo.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build", "demo", "--source", str(root / "audio"), "--out", str(out),
         "--set", "options.n_clips=16", "--set", "batch_clips=4", "--workers", "1", "--quiet"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


# ---------------------------------------------------------------- what can be done to a store


class Tamper(Change):
    """One hostile change to any store (see :class:`helpers_hostile.Change`)."""

    @property
    def structural(self) -> bool:
        """Tampering any reader must notice; otherwise content damage that only a full read finds."""
        return self.kind not in ("truncate", "flip")

    def must_fail(self, command: str, changed: set[str]) -> bool:
        """Whether ``command`` (info, verify, copy, train, build) must end non-zero on this store.

        ``changed``: the arrays whose content a full read finds changed. A build recomputes
        the tables, the manifest and any array that does not fit, so it only must refuse what
        would make it write outside ``--out``; the key list is only read by copies (and verify).
        """
        if command == "build":
            return self.kind in ("link_file", "link_dir")
        if command in ("verify", "copy"):
            return self.structural or bool(changed)
        if self.kind == "listed_key" or (self.kind == "huge_file" and self.detail[0] == "_muzarr/keys.json"):
            return False
        if command == "info":
            return self.structural
        if self.kind in ("shape", "chunks"):
            # train opens only the array it reads; an array longer than the manifest says is a grow under way
            grown = self.kind == "shape" and self.detail[1] == 0 and self.detail[3] == "zarr"
            return self.detail[0] == TRAINED and not grown
        return self.structural or TRAINED in changed  # train


HUGE = st.sampled_from([2**31, 2**40, 10**12, 2**62])
SPARSE = st.sampled_from([2**31, 2**34, 2**40])  # file sizes (ext4 stops at 16 TiB)
ARRAYS = ("waveform", TRAINED, "logmel/mel96_sr12000_fft512_hop256_pad37")
TABLES = ("clips", "labels", "splits", "checksums")


def tampers() -> st.SearchStrategy[Tamper]:
    structural = st.one_of(
        st.tuples(st.just("n_clips"), st.one_of(HUGE, st.integers(1, 15), st.integers(17, 10**6))),
        st.tuples(st.just("shape"), st.sampled_from(ARRAYS), st.integers(0, 2), HUGE, st.sampled_from(["zarr", "manifest", "both"])),
        st.tuples(st.just("chunks"), st.sampled_from(ARRAYS), st.sampled_from(["chunk_shape", "shards"]), HUGE),
        st.tuples(st.just("link_file"), st.sampled_from(["tables/notes", "tables/labels.parquet", "_muzarr/batches/000001.json",
                                                         "waveform/c/2/0", "status/c/0", "zarr.json"])),
        st.tuples(st.just("link_dir"), st.sampled_from(["waveform/c/1", "tables", "_muzarr", f"{TRAINED}/c"])),
        st.tuples(st.just("array_name"), st.sampled_from(["../outside", "/etc", "waveform/../../x", "s3://bucket/a", "tables/clips"])),
        st.tuples(st.just("listed_key"), st.sampled_from(["../outside/secret", "/etc/passwd", "http://127.0.0.1:1/x",
                                                          "tables/../../x", "waveform/c/0"]),
                  st.one_of(st.none(), HUGE, st.just(-1))),
        st.tuples(st.just("table_rows"), st.sampled_from(TABLES), st.sampled_from(["drop", "duplicate"]), st.integers(1, 5)),
        st.tuples(st.just("huge_file"), st.sampled_from(["tables/labels.parquet", "zarr.json", f"{TRAINED}/zarr.json",
                                                         "_muzarr/keys.json", "status/c/0"]), SPARSE),
    )
    content = st.one_of(
        st.tuples(st.just("truncate"), st.sampled_from(ARRAYS), st.integers(0, 3), st.floats(0.0, 0.99)),
        st.tuples(st.just("flip"), st.sampled_from(ARRAYS), st.integers(0, 3), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8)),
    )
    return st.one_of(structural, content).map(lambda t: Tamper(t[0], t[1:]))


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def _shard(store: Path, array: str, shard: int) -> Path:
    return store / array / "c" / str(shard) / ("0" if array == "waveform" else "0/0")


def apply(tamper: Tamper, store: Path, outside: Path) -> None:
    """Do ``tamper`` to the store folder ``store``; ``outside`` holds what a link may point to."""
    group = store / "zarr.json"
    meta = _read(group)
    manifest = meta["attributes"]["muzarr"]
    kind, detail = tamper.kind, tamper.detail
    if kind == "n_clips":
        manifest["n_clips"] = detail[0]
    elif kind == "shape":
        array, axis, value, where = detail
        if where in ("zarr", "both"):
            array_meta = _read(store / array / "zarr.json")
            axis = min(axis, len(array_meta["shape"]) - 1)
            array_meta["shape"][axis] = value
            _write(store / array / "zarr.json", array_meta)
        if where in ("manifest", "both"):
            shape = manifest["arrays"][array]["shape"]
            shape[min(axis, len(shape) - 1)] = value
    elif kind == "chunks":
        array, which, value = detail
        array_meta = _read(store / array / "zarr.json")
        sharding = array_meta["codecs"][0]["configuration"]
        if which == "shards":
            array_meta["chunk_grid"]["configuration"]["chunk_shape"][-1] = value
            manifest["arrays"][array]["shards"][-1] = value
        else:
            sharding["chunk_shape"][-1] = value
            manifest["arrays"][array]["chunks"][-1] = value
        _write(store / array / "zarr.json", array_meta)
    elif kind == "link_file":
        target = store / detail[0]
        target.unlink(missing_ok=True)
        # the same bytes as the file it replaces where there is one: a link is refused for leaving, not for its content
        target.symlink_to(outside / "secret" if not (outside / "copies" / detail[0]).exists() else outside / "copies" / detail[0])
    elif kind == "link_dir":
        folder = store / detail[0]
        moved = outside / "moved" / detail[0]
        moved.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(moved))
        folder.symlink_to(moved, target_is_directory=True)
    elif kind == "array_name":
        name = detail[0]
        manifest["arrays"][name] = manifest["arrays"].pop("waveform")
    elif kind == "listed_key":
        key, size = detail
        keys = _read(store / "_muzarr" / "keys.json")
        keys["keys"][key] = size
        _write(store / "_muzarr" / "keys.json", keys)
    elif kind == "table_rows":
        table_name, how, count = detail
        path = store / "tables" / f"{table_name}.parquet"
        table = pd.read_parquet(path)
        table = table.iloc[count:] if how == "drop" else pd.concat([table, table.iloc[:count]], ignore_index=True)
        table.to_parquet(path, index=False)
    elif kind == "huge_file":
        key, size = detail
        with open(store / key, "r+b") as handle:
            handle.truncate(size)  # sparse: costs no disk
    elif kind == "truncate":
        array, shard, keep = detail
        path = _shard(store, array, shard)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    elif kind == "flip":
        array, shard, where = detail
        path = _shard(store, array, shard)
        data = bytearray(path.read_bytes())
        for fraction in where:
            data[min(len(data) - 1, int(len(data) * fraction))] ^= 0xFF
        path.write_bytes(bytes(data))
    if kind in ("n_clips", "shape", "chunks", "array_name"):
        _write(group, meta)


def content_changed(tamper: Tamper, base: Path, store: Path) -> set[str]:
    """The arrays whose data a full read (zarr-python) finds changed or unreadable."""
    if tamper.structural:
        return set(ARRAYS)
    import numpy as np
    import zarr

    array = tamper.detail[0]
    try:
        changed = not np.array_equal(zarr.open_array(str(store / array), mode="r")[:], zarr.open_array(str(base / array), mode="r")[:])
    except Exception:  # noqa: BLE001 - undecodable is changed
        changed = True
    return {array} if changed else set()


# ---------------------------------------------------------------- running the commands under guard


def _fresh(base: Path, tamper: Tamper) -> tuple[Path, Path, Path, bytes]:
    work = Path(tempfile.mkdtemp(prefix="muzarr_hostile_"))
    store = work / "store.zarr"
    shutil.copytree(base, store)
    outside = outside_folder(work, base)
    apply(tamper, store, outside)
    return work, store, outside, (outside / "secret").read_bytes()


# ---------------------------------------------------------------- the properties


# No shrinking: each example costs seconds of subprocesses, and the drawn tampering is short already.
@settings(max_examples=PIPE_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.generate], derandomize=not SCALE)
@given(tamper=tampers())
def test_pipe_commands_on_hostile_stores(base, tamper):
    work, store, outside, secret = _fresh(base, tamper)
    try:
        before = fingerprint(outside)
        changed = content_changed(tamper, base, store)
        copy = work / "copy.zarr"
        for name, command in (("info", ["info", store]), ("verify", ["verify", store]), ("copy", ["copy", store, copy])):
            report = guarded([["pipe", *map(str, command)]], outside, work)  # a process of its own each
            check(report["results"][0], must_fail=tamper.must_fail(name, changed), tamper=tamper, secret=secret)
            assert report["opened_outside"] == [], f"{tamper}: {name} opened files outside the store: {report['opened_outside'][:5]}"
        assert fingerprint(outside) == before, f"{tamper}: something was written outside the store"
        if copy.exists():
            for path in copy.rglob("*"):
                assert not path.is_symlink(), f"{tamper}: the copy holds a link {path}"
                if path.is_file():
                    assert secret not in path.read_bytes(), f"{tamper}: an outside file was copied into {path}"
        TRIED["pipe"] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


@settings(max_examples=TRAIN_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.generate], derandomize=not SCALE)
@given(tamper=tampers())
def test_build_and_train_on_hostile_stores(base, scheduler, tamper):
    work, store, outside, secret = _fresh(base, tamper)
    try:
        before = fingerprint(outside)
        changed = content_changed(tamper, base, store)
        trained = guarded(
            [["train", "--store", str(store), "--model", "mlp", "--epochs", "1", "--out", str(work / "run"),
              "--no-emissions", "--quiet", "--cache", "none"]], outside, work,
        )  # fmt: skip
        built = guarded(
            [["pipe", "build", "demo", "--source", str(work / "audio"), "--out", str(store), "--set", "options.n_clips=20",
              "--set", "batch_clips=4", "--scheduler", scheduler, "--quiet"]], outside, work,
        )  # fmt: skip
        opened = trained["opened_outside"] + built["opened_outside"]
        (trained,), (built,) = trained["results"], built["results"]
        check(trained, must_fail=tamper.must_fail("train", changed), tamper=tamper, secret=secret)
        check(built, must_fail=tamper.must_fail("build", changed), tamper=tamper, secret=secret)
        assert opened == [], f"{tamper}: files opened outside the store: {opened[:5]}"
        assert fingerprint(outside) == before, f"{tamper}: something was written outside --out"
        TRIED["train_build"] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_report_how_many_hostile_stores_were_tried():
    print(
        f"\nhostile stores tried: {TRIED['pipe']} against pipe info/verify/copy, "
        f"{TRIED['train_build']} against train and pipe build"
    )
