"""``train compare``: seed 000's Figure 2 table from real runs, repeats as mean ± std, the overlay plot."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_train import train_cli
from PIL import Image

from pipeline import MuzarrError
from training.experiments.compare import compare, default_out
from training.experiments.summary import summarise_repeats
from training.run.config import TrainConfig
from training.run.loop import train

# Seed 000, Figure 2 "10 epochs result": the columns in the report's order.
FIGURE2_HEADER = "| Model | Best Val AUC | Test AUC | Parameters | Train Time (s) | CO2 (kg) |"


@pytest.fixture(scope="module")
def runs(small_store, tmp_path_factory) -> dict[str, Path]:
    """Seed 000's two models on the demo store (CO2 tracked, as the report did), plus an MLP repeat."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, model, seed, extra in (("mlp", "mlp", 0, {}), ("cnn", "cnn", 0, {"batch_size": 8}), ("mlp-seed1", "mlp", 1, {})):
        config = TrainConfig(store=small_store, model=model, epochs=2, lr=1e-2, seed=seed, emissions=True, **extra)
        train(config, out=root / name, progress=False)
        made[name] = root / name
    return made


def _metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_two_demo_runs_give_seed000s_figure2_layout(runs, tmp_path):
    result = train_cli("compare", str(runs["mlp"]), str(runs["cnn"]), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "compare.md").read_text().splitlines()
    assert lines[0] == FIGURE2_HEADER
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    assert len(lines) == 4 and FIGURE2_HEADER in result.output
    for line, name in zip(lines[2:], ("mlp", "cnn")):
        m = _metrics(runs[name])
        expected = [name, f"{m['valid']['roc_auc']:.4f}", f"{m['test']['roc_auc']:.4f}", f"{m['parameters']:,}",
                    f"{m['train_seconds']:.2f}", f"{m['co2_kg']:.6f}"]  # fmt: skip
        assert line == "| " + " | ".join(expected) + " |"
    assert lines[2].split(" | ")[3] == "9,094"  # 64 -> 128 -> 6 tags
    assert lines[3].split(" | ")[3] == "2,978,502"


def test_csv_holds_every_metric_with_its_spread(runs, tmp_path):
    compare([runs["mlp"], runs["cnn"]], tmp_path)
    table = pd.read_csv(tmp_path / "compare.csv")
    assert list(table["model"]) == ["mlp", "cnn"] and list(table["runs"]) == [1, 1]
    cnn = _metrics(runs["cnn"])
    row = table.iloc[1]
    assert row["test_pr_auc_mean"] == pytest.approx(cnn["test"]["pr_auc"])
    assert row["valid_roc_auc_std"] == 0.0 and row["co2_kg_mean"] == pytest.approx(cnn["co2_kg"])
    assert row["run_dirs"] == str(runs["cnn"])


def test_runs_differing_only_by_seed_are_one_row_of_mean_and_std(runs, tmp_path):
    text = compare([runs["mlp"], runs["cnn"], runs["mlp-seed1"]], tmp_path)
    values = [_metrics(runs[n])["test"]["roc_auc"] for n in ("mlp", "mlp-seed1")]
    row = text.splitlines()[2]
    assert row.startswith("| mlp (2 runs) | ")
    assert f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" == row.split(" | ")[2]
    assert len(text.splitlines()) == 4  # mlp x2 and cnn


def test_a_repeats_folder_stands_for_its_runs(runs, tmp_path):
    folder = tmp_path / "mlp-2seeds"
    for i, name in enumerate(("mlp", "mlp-seed1")):
        shutil.copytree(runs[name], folder / f"repeat-{i}")
    summarise_repeats([_metrics(runs["mlp"]), _metrics(runs["mlp-seed1"])], folder)
    text = compare([folder, runs["cnn"]], tmp_path / "out", extra=("pr_auc",))
    header, _, mlp, cnn = text.splitlines()
    assert header == "| Model | Best Val AUC | Test AUC | Test PR-AUC | Parameters | Train Time (s) | CO2 (kg) |"
    summary = json.loads((folder / "summary.json").read_text())
    assert mlp.split(" | ")[2] == f"{summary['test_roc_auc']['mean']:.4f} ± {summary['test_roc_auc']['std']:.4f}"
    assert cnn.split(" | ")[3] == f"{_metrics(runs['cnn'])['test']['pr_auc']:.4f}"


def test_same_model_with_other_settings_is_labelled_by_them(runs, tmp_path):
    other = tmp_path / "mlp-lr"
    shutil.copytree(runs["mlp"], other)
    config = json.loads((other / "config.json").read_text())
    config["train"]["lr"] = 0.001
    (other / "config.json").write_text(json.dumps(config))
    rows = compare([runs["mlp"], other], tmp_path / "out").splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| mlp (lr=0.01)", "| mlp (lr=0.001)"]


def test_overlay_plot_names_its_runs_and_axes(runs, tmp_path):
    compare([runs["mlp"], runs["cnn"]], tmp_path)
    with Image.open(tmp_path / "compare.png") as image:
        assert image.format == "PNG" and image.size[0] > 1000 and image.size[1] > 400
        assert image.info["Title"] == "mlp, cnn on demo"
        assert image.info["Description"] == (
            "left: x epoch, y loss (valid solid, train dashed); right: x epoch, y validation roc_auc"
        )


def test_compare_writes_beside_the_runs_not_in_the_current_folder(runs, tmp_path):
    """Issue #22, first hour 7: without --out, compare.md/csv/png landed in the current folder;
    they go to the folder that holds the compared runs."""
    import subprocess
    import sys

    for name in ("mlp", "cnn"):
        shutil.copytree(runs[name], tmp_path / "runs" / name)
    command = [str(Path(sys.executable).parent / "train"), "compare", "runs/mlp", "runs/cnn"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "written: runs/compare.md, compare.csv, compare.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["cnn", "compare.csv", "compare.md", "compare.png", "mlp"]
    assert (tmp_path / "runs" / "compare.md").read_text().startswith(FIGURE2_HEADER)
    # a folder of runs is their parent
    assert default_out([tmp_path / "runs"]) == tmp_path / "runs"
    assert default_out([tmp_path / "runs" / "mlp", runs["cnn"]]) == Path(os.path.commonpath([tmp_path, runs["cnn"]]))


def test_unfinished_or_mixed_runs_are_refused(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = train_cli("compare", str(empty))
    assert result.exit_code == 2 and "has no metrics.json" in result.stderr
    mixed = tmp_path / "multiclass"
    shutil.copytree(runs["mlp"], mixed)
    metrics = _metrics(mixed)
    (mixed / "metrics.json").write_text(json.dumps({**metrics, "task": "multiclass"}))
    with pytest.raises(MuzarrError, match="different tasks"):
        compare([runs["mlp"], mixed], tmp_path / "out")
    with pytest.raises(MuzarrError, match="not a multilabel metric"):
        compare([runs["mlp"]], tmp_path / "out", extra=("accuracy",))
