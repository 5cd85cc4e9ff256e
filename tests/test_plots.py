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
    # issue #22, first hour 9: the colour bar said "log-mel (db)"
    assert info["Description"] == f"panels: {', '.join(store.classes)}; x: time (s); y: mel band; colour: log-mel (dB)"
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


def test_curves_mark_the_best_epoch_and_drop_markers_on_long_runs(tmp_path):
    """Issue #22, first hour 9: no mark of the best epoch, and 500 overlapping markers on the mlp curve."""
    from training.run.plots import curves_figure, plot_curves

    short = curves_figure(_history(0), "accuracy", title="cnn on gtzan", best_epoch=3)
    left, right = short.axes
    star = [line for line in right.get_lines() if line.get_label() == "best epoch 3"]
    assert len(star) == 1 and star[0].get_marker() == "*"
    assert list(star[0].get_xdata()) == [3] and list(star[0].get_ydata()) == [_history(0)["valid_accuracy"][2]]
    for axis in (left, right):  # the dotted line at the best epoch on both panels
        assert [list(line.get_xdata()) for line in axis.get_lines() if line.get_linestyle() == ":"] == [[3, 3]]
    assert {line.get_marker() for line in left.get_lines() if line.get_linestyle() == "-"} == {"o"}
    long = curves_figure(_history(0, epochs=500), "accuracy", title="mlp on gtzan", best_epoch=480)
    curves = [line for axis in long.axes for line in axis.get_lines() if line.get_linestyle() == "-"]
    assert len(curves) == 3 and {line.get_marker() for line in curves} == {"None"}
    info = _png(plot_curves(_history(0), "accuracy", tmp_path / "curves.png", title="cnn on gtzan", best_epoch=3))[1]
    assert info["Description"] == "left: x epoch, y loss (train, valid); right: x epoch, y validation accuracy; best epoch 3 marked"


def test_per_tag_legend_leaves_the_last_point_visible():
    """Issue #22, first hour 9: the lower-right legend covered the rarest tag's frequency point."""
    from training.run.plots import per_tag_figure

    tags = [f"tag{i}" for i in range(50)]
    frequency = {tag: 2000 // (i + 1) for i, tag in enumerate(tags)}
    fig = per_tag_figure({tag: 0.5 + i / 100 for i, tag in enumerate(tags)}, frequency, title="short_res on mtat")
    fig.canvas.draw()
    bars, twin = fig.axes
    legends = [axis.get_legend() for axis in fig.axes if axis.get_legend() is not None]
    assert [text.get_text() for legend in legends for text in legend.get_texts()] == ["test ROC-AUC", "training clips"]
    (line,) = twin.get_lines()
    last = twin.transData.transform((line.get_xdata()[-1], line.get_ydata()[-1]))
    first_bar = bars.transData.transform((0, 0.99))  # the tallest a bar can be
    for legend in legends:
        box = legend.get_window_extent()
        assert not box.contains(*last) and not box.contains(*first_bar)
        assert box.y0 >= bars.get_window_extent().y1  # above the plotting area: it hides no bar or point


def test_confusion_matrix_shows_only_the_classes_with_clips():
    """Issue #22, first hour 9: GTZAN's fixture has clips of 3 classes; the matrix showed all 10."""
    from training.run.plots import confusion_figure

    classes = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
    matrix = np.zeros((10, 10), dtype=int)
    matrix[0, 0], matrix[0, 3], matrix[3, 3], matrix[6, 6], matrix[6, 0] = 3, 1, 4, 2, 2
    axis = confusion_figure(matrix.tolist(), classes, title="cnn on gtzan").axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["blues", "disco", "metal"]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["blues", "disco", "metal"]
    assert [t.get_text() for t in axis.texts] == ["3", "1", "0", "0", "4", "0", "2", "0", "2"]
    assert "7 of 10 classes without test clips left out" in axis.get_title()
    # a prediction of a class without clips is a mistake to see: its column stays
    matrix[0, 9] = 1
    axis = confusion_figure(matrix.tolist(), classes, title="cnn on gtzan").axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["blues", "disco", "metal", "rock"]


def test_compare_overlay_names_runs_and_axes(tmp_path):
    from training.run.plots import plot_compare

    repeats = pd.concat([_history(1), _history(2)], ignore_index=True)
    path = plot_compare([("cnn5", repeats), ("mlp_tabular", _history(3))], "accuracy", tmp_path / "c.png", title="gtzan runs")
    size, info = _png(path)
    assert info["Title"] == "gtzan runs" and size[0] > size[1] > 300
    assert info["Description"] == "left: x epoch, y loss (valid solid, train dashed); right: x epoch, y validation accuracy"


def test_pipe_plot_writes_beside_the_store_not_in_the_current_folder(small_store, tmp_path):
    """Issue #22, first hour 7: without --out the PNGs landed in the current folder (a newcomer's
    repository root); they go to STORE.plots beside the store."""
    store = tmp_path / "linked.zarr"
    store.symlink_to(small_store, target_is_directory=True)
    here = tmp_path / "repository"
    here.mkdir()
    command = [str(Path(sys.executable).parent / "pipe"), "plot", "../linked.zarr"]
    result = subprocess.run(command, cwd=here, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    figures = tmp_path / "linked.zarr.plots"
    assert result.stdout.splitlines() == [f"wrote {figures / 'examples.png'}", f"wrote {figures / 'labels.png'}"]
    assert _png(figures / "labels.png")[1]["Title"] == "demo: label distribution (40 clips)"
    assert list(here.iterdir()) == []


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
