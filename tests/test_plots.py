"""Figures are checked by what the PNG says about itself: size, Title and Description (axes) metadata."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner
from PIL import Image

from pipeline import open_store
from pipeline.cli import main as pipe


def _png(path: Path) -> tuple[tuple[int, int], dict]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()  # a complete, uncorrupted file
    with Image.open(path) as image:
        return image.size, dict(image.info)


def test_pipe_plot_draws_one_panel_per_tag_and_the_label_counts(small_store, tmp_path):
    result = CliRunner().invoke(pipe, ["plot", small_store, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert result.output.splitlines() == [f"wrote {tmp_path / 'examples.png'}", f"wrote {tmp_path / 'labels.png'}"]
    store = open_store(small_store)
    size, info = _png(tmp_path / "examples.png")
    assert info["Title"] == "demo: log-mel examples per tag (logmel/mel64_sr16000_fft1024_hop512)"  # the first log-mel
    assert info["Description"] == f"panels: {', '.join(store.classes)}; x: time (s); y: mel band"
    assert size[0] > 1000 and 300 < size[1] < size[0]  # 6 panels: two rows of four columns
    size, info = _png(tmp_path / "labels.png")
    assert info["Title"] == "demo: label distribution (40 clips)"
    counts = store.label_matrix[store.ok].sum(axis=0).astype(int)
    listing = ", ".join(f"{tag}={n}" for tag, n in zip(store.classes, counts))
    assert info["Description"] == f"x: tag; y: clips; counts: {listing}"


def test_more_examples_per_class_and_a_chosen_array(small_store, tmp_path):
    array = "logmel/mel96_sr12000_fft512_hop256_pad37"
    result = CliRunner().invoke(pipe, ["plot", small_store, "--out", str(tmp_path), "--per-class", "2", "--array", array])
    assert result.exit_code == 0, result.output + str(result.exception)
    size, info = _png(tmp_path / "examples.png")
    assert info["Title"] == f"demo: log-mel examples per tag ({array})"
    assert size[1] > size[0]  # six rows (one per tag) of two clips
    assert info["Description"].startswith("panels: drums, bass")


def test_plot_errors_are_one_line(small_store, tmp_path):
    result = CliRunner().invoke(pipe, ["plot", small_store, "--array", "waveform/sr16000"])
    assert result.exit_code == 2
    assert "is not a log-mel array of" in result.stderr and "logmel/mel64_sr16000_fft1024_hop512" in result.stderr
    result = CliRunner().invoke(pipe, ["plot", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2 and "no muzarr store" in result.stderr


def test_pipe_plot_needs_matplotlib_but_never_torch(small_store, tmp_path):
    code = (
        "import sys\n"
        "from pipeline.plot import plot_store\n"
        f"plot_store({small_store!r}, {str(tmp_path)!r})\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    missing = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from pipeline.cli import main\n"
        f"main(['plot', {small_store!r}, '--out', {str(tmp_path / 'x')!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert "pipe plot needs matplotlib: pip install 'muzarr[train]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_help_has_an_example():
    result = CliRunner().invoke(pipe, ["plot", "--help"])
    assert result.exit_code == 0 and "pipe plot demo.zarr" in result.output


# -- training figures ------------------------------------------------------------------------
def _history(seed: int, epochs: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"epoch": np.arange(1, epochs + 1), "train_loss": rng.random(epochs), "valid_loss": rng.random(epochs),
                         "valid_accuracy": rng.random(epochs)})  # fmt: skip


def test_compare_overlay_names_runs_and_axes(tmp_path):
    from training.run.plots import plot_compare

    repeats = pd.concat([_history(1), _history(2)], ignore_index=True)
    path = plot_compare([("cnn5", repeats), ("mlp_tabular", _history(3))], "accuracy", tmp_path / "c.png", title="gtzan runs")
    size, info = _png(path)
    assert info["Title"] == "gtzan runs" and size[0] > size[1] > 300
    assert info["Description"] == "left: x epoch, y loss (valid solid, train dashed); right: x epoch, y validation accuracy"


def test_embedding_map_lists_its_groups_largest_first(tmp_path):
    from training.run.plots import plot_embedding

    points = np.random.default_rng(0).normal(size=(7, 2))
    groups = ["rock", "jazz", "rock", "pop", "rock", "jazz", "(unlabelled)"]
    size, info = _png(plot_embedding(points, groups, tmp_path / "t.png", title="t-SNE of cnn"))
    assert info["Title"] == "t-SNE of cnn" and size[0] > 500
    assert info["Description"] == "x: t-SNE 1; y: t-SNE 2; colour: class; groups: rock, jazz, pop, (unlabelled)"


def test_a_full_disk_is_one_line_and_the_same_command_works_once_there_is_space(small_store, tmpfs):
    """Issue #21 item 9: a full --out was a matplotlib traceback and left half a PNG."""
    out = tmpfs("size=64k") / "figures"
    command = [str(Path(sys.executable).parent / "pipe"), "plot", small_store, "--out", str(out)]
    full = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert full.returncode == 2
    assert full.stderr == (f"error: cannot write {out / 'examples.png'}: No space left on device: "
                           "free some space there and run the same command again to resume\n")
    assert list(out.iterdir()) == []  # no half-written figure
    tmpfs("size=16m")
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert _png(out / "examples.png")[1]["Title"].startswith("demo: log-mel examples per tag")
    assert _png(out / "labels.png")[1]["Title"] == "demo: label distribution (40 clips)"
