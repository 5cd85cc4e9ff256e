"""``--overwrite`` replaces a store, never someone's folder, and only what muzarr wrote
(issue: hostile and careless input, item 4)."""

from __future__ import annotations

import subprocess
import sys

from pipeline import open_store


def _build(source, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build", "demo", "--source", str(source), "--out", str(out),
         "--set", "options.n_clips=12", "--set", "batch_clips=4", "--workers", "1", "--quiet", *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "somedir"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    result = _build(tmp_path / "audio", folder, "--overwrite")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {folder} exists and is not a muzarr store (it holds a.txt, sub/b.txt)")
    assert len(result.stderr.splitlines()) == 1 and "--overwrite" not in result.stderr
    assert (folder / "a.txt").read_text() == "a" and (folder / "sub" / "b.txt").read_text() == "b"


def test_overwrite_replaces_the_store_and_keeps_other_files(tmp_path):
    out = tmp_path / "demo.zarr"
    assert _build(tmp_path / "audio", out).returncode == 0
    (out / "NOTES.md").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "plot.png").write_bytes(b"png")
    refused = _build(tmp_path / "audio", out, "--set", "clip.seconds=2")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    replaced = _build(tmp_path / "audio", out, "--set", "clip.seconds=2", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    store = open_store(str(out))
    assert store.complete and store.manifest.config["clip"]["seconds"] == 2
    assert (out / "NOTES.md").read_text() == "mine" and (out / "mine" / "plot.png").read_bytes() == b"png"


def test_copy_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path):
    out = tmp_path / "demo.zarr"
    assert _build(tmp_path / "audio", out).returncode == 0
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"jpg")
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "copy", str(out), str(folder), "--overwrite"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 2 and "is not a muzarr store (it holds cat.jpg)" in result.stderr
    assert (folder / "cat.jpg").read_bytes() == b"jpg"
    copy = tmp_path / "copy.zarr"
    assert subprocess.run([sys.executable, "-m", "pipeline.cli", "copy", str(out), str(copy)], check=False).returncode == 0
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "copy", str(out), str(copy), "--overwrite"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr  # a store is replaced
