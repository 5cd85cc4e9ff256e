"""``train reproduce``: papers as validated data, up-front checks, smoke runs of every paper, resume, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import yaml
from helpers_train import train_cli

from pipeline import MuzarrError
from training.experiments.reproduce import PAPERS, load_paper, parse_stores, plan_runs, run_paper
from training.models import MODELS

# The table of Won et al. 2020 (macro ROC-AUC / PR-AUC, MTAT split "clean"), from docs/anchors.md.
WON2020_TABLE = {
    "fcn": (0.9005, 0.4295),
    "musicnn": (0.9106, 0.4493),
    "sample_cnn": (0.9058, 0.4422),
    "sample_cnn_se": (0.9103, 0.4520),
    "crnn_won": (0.8722, 0.3625),
    "harmonic_cnn": (0.9127, 0.4611),
    "short_cnn": (0.9126, 0.4590),
    "short_res": (0.9129, 0.4614),
}
# Each seed report's numbers (seeds/00N_*.txt): label -> {metric: mean or (mean, std)}.
SEED_TABLES = {
    "seed000": {"MLP": {"roc_auc": 0.7947}, "CNN": {"roc_auc": 0.8287}},
    "seed001": {
        "Dieleman 1024/1024": {"roc_auc": 0.8052}, "Dieleman 1024/512": {"roc_auc": 0.8192},
        "Dieleman 512/512": {"roc_auc": 0.8127}, "Dieleman 512/256": {"roc_auc": 0.8282},
        "Dieleman 256/256": {"roc_auc": (0.8267, 0.0027)}, "CRNN": {"roc_auc": (0.8949, 0.0028)},
    },
    "seed002": {
        "CNN 1D + GRU": {"accuracy": 0.6910, "f1_macro": 0.5560, "f1_weighted": 0.6740},
        "CNN 1D + LSTM": {"accuracy": 0.6969, "f1_macro": 0.5980, "f1_weighted": 0.6864},
        "CNN 2D + LSTM": {"accuracy": 0.7083, "f1_macro": 0.6077, "f1_weighted": 0.6970},
        "CNN 2D + GRU": {"accuracy": 0.7140, "f1_macro": 0.6190, "f1_weighted": 0.7028},
    },
    "seed003": {"ResNet-18 (RMSprop)": {"accuracy": 0.79}, "ResNet-18 (Adam)": {"accuracy": 0.76},
                "ResNet-50 transfer (SGD)": {}, "MLP (64 hidden)": {"accuracy": 0.79}},
    "seed004": {"MLP": {"accuracy": (0.42, 0.0117)}, "CNN": {"accuracy": (0.63, 0.0129)},
                "Wav2Vec2": {"accuracy": (0.27, 0.0484)}},
}  # fmt: skip
COMMON = ["--no-emissions", "--device", "cpu"]


def _cli(*args: str):
    return train_cli("reproduce", *args)


@pytest.fixture(autouse=True)
def small_smoke(monkeypatch):
    """Smoke runs on 6 clips per split: the code path of --smoke at a third of its cost on 2 CPU cores."""
    import training.experiments.reproduce

    monkeypatch.setitem(training.experiments.reproduce.SMOKE_TRAIN, "max_clips", 6)
    monkeypatch.setitem(training.experiments.reproduce.SMOKE_TRAIN, "batch_size", 4)


# -- stores: built in this process (a worker process would compile numba's kernels again) ----
@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    client = Client(LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"))
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


def _build(client, root: Path, dataset: str, *, features: list[dict], only: bool = False, **settings) -> str:
    from pipeline.build import build
    from pipeline.config import apply_overrides, config_for, load_catalog

    config = apply_overrides(config_for(dataset, load_catalog()[dataset]), add_features=features, only=only, settings=settings)
    report = build(config, source=str(root / "audio"), out=str(root / "store.zarr"), client=client, progress=False)
    assert report.n_failed == 0
    return str(root / "store.zarr")


@pytest.fixture(scope="module")
def demo_store(client, tmp_path_factory) -> str:
    """Multilabel demo, 40 clips of 2 s: the catalog's inputs plus log-mel 128 @ 22.05 kHz and gtzan57."""
    features = [{"kind": "logmel", "n_mels": 128, "sample_rate": 22050, "n_fft": 2048, "hop_length": 512}, {"kind": "gtzan57"}]
    settings = {"options.n_clips": 40, "options.seconds": 2.0, "clip.seconds": 2.0, "batch_clips": 8}
    return _build(client, tmp_path_factory.mktemp("demo"), "demo", features=features, **settings)


@pytest.fixture(scope="module")
def split_store(client, tmp_path_factory) -> str:
    """Demo clips of 4 s cut into 10 sub-clips of 1.3 s (every 0.3 s): long enough for a 1024/1024 first layer."""
    settings = {"options.n_clips": 40, "options.seconds": 4.0, "clip.mode": "split", "clip.seconds": 1.3,
                "clip.hop_seconds": 0.3, "clip.total_seconds": 4.0, "batch_clips": 8}  # fmt: skip
    features = [{"kind": "waveform", "sample_rate": 16000}]
    return _build(client, tmp_path_factory.mktemp("split"), "demo", features=features, only=True, **settings)


@pytest.fixture(scope="module")
def genre_store(client, tmp_path_factory) -> str:
    """Multiclass folder store, 3 genres x 10 tones of 1.5 s: waveform 16 kHz, log-mel 128 @ 22.05 kHz, gtzan57
    and summary (seed 003's MLP)."""
    root = tmp_path_factory.mktemp("genres")
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    for name, pitch in {"jazz": 880.0, "pop": 3000.0, "rock": 220.0}.items():
        (root / "audio" / name).mkdir(parents=True)
        for i in range(10):
            tone = 0.3 * np.sin(2 * np.pi * pitch * (1 + 0.05 * i) * t) + 0.05 * rng.standard_normal(len(t))
            soundfile.write(root / "audio" / name / f"{name}{i}.wav", tone.astype(np.float32), 16000)
    features = [{"kind": "waveform", "sample_rate": 16000}, {"kind": "gtzan57"}, {"kind": "summary"},
                {"kind": "logmel", "n_mels": 128, "sample_rate": 22050, "n_fft": 2048, "hop_length": 512}]  # fmt: skip
    return _build(client, root, "folder", features=features, only=True, **{"clip.seconds": 1.5})


def _measured(table: pd.DataFrame, metric: str) -> np.ndarray:
    return table[f"{metric}_measured"].to_numpy(dtype=float)


# -- papers as data --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PAPERS))
def test_every_packaged_recipe_parses_into_registered_models(name):
    paper = load_paper(name)
    assert paper.name == name and paper.rows and paper.title and paper.citation
    assert all(row.model in MODELS for row in paper.rows)
    assert paper.gpu_hours > 0 and "estimate" in paper.gpu_hours_basis
    assert set(paper.roles) <= set(paper.stores)
    assert load_paper(PAPERS[name]) == paper  # by path as well as by name


def test_the_recipes_are_the_six_reports():
    assert sorted(PAPERS) == ["seed000", "seed001", "seed002", "seed003", "seed004", "won2020"]


def test_won2020_publishes_the_anchor_table():
    paper = load_paper("won2020")
    assert paper.dataset == "mtat" and paper.metrics == ("roc_auc", "pr_auc")
    assert {row.model: (row.published["roc_auc"].mean, row.published["pr_auc"].mean) for row in paper.rows} == WON2020_TABLE
    assert all(row.published["roc_auc"].std is None and row.repeats == 1 for row in paper.rows)


@pytest.mark.parametrize("name", sorted(SEED_TABLES))
def test_seed_recipes_publish_the_reports_numbers(name):
    paper = load_paper(name)
    published = {
        row.label: {m: p.mean if p.std is None else (p.mean, p.std) for m, p in row.published.items()} for row in paper.rows
    }
    assert published == SEED_TABLES[name]


def test_seed001_rows_are_the_five_filter_settings_and_the_crnn():
    rows = load_paper("seed001").rows
    settings = [(r.model_opts["filter_length"], r.model_opts["stride"]) for r in rows if r.model == "dieleman"]
    assert settings == [(1024, 1024), (1024, 512), (512, 512), (512, 256), (256, 256)]
    assert {r.store for r in rows if r.model == "dieleman"} == {"subclips"} and rows[-1].store == "main"
    assert all(r.repeats == 5 for r in rows)


def test_seed004_runs_five_seeds_and_smokes_a_tiny_wav2vec2():
    paper = load_paper("seed004")
    assert [(r.model, r.repeats) for r in paper.rows] == [("mlp_tabular", 5), ("cnn5", 5), ("wav2vec2", 5)]
    assert paper.rows[-1].smoke_model_opts == {"weights": "random", "config": "tiny"}


GOOD_ROW = {"label": "MLP", "model": "mlp", "published": {"roc_auc": 0.79}}


def _recipe_file(tmp_path: Path, **changes) -> Path:
    data = {"name": "mine", "title": "t", "citation": "c", "dataset": "mtat", "metrics": ["roc_auc"], "gpu_hours": 1,
            "gpu_hours_basis": "estimate", "rows": [GOOD_ROW]}  # fmt: skip
    data.update(changes)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"metric": ["roc_auc"]}, "metric"),
        ({"rows": [{**GOOD_ROW, "modle": "mlp"}]}, "modle"),
        ({"rows": [{**GOOD_ROW, "train": {"epoch": 3}}]}, "epoch"),
        ({"rows": [{**GOOD_ROW, "model_opts": {"hiden": 3}}]}, "hiden"),
        ({"rows": [{**GOOD_ROW, "smoke": {"model_opt": {}}}]}, "model_opt"),
        ({"rows": [{**GOOD_ROW, "published": {"roc_auc": {"mean": 0.8, "sd": 0.1}}}]}, "sd"),
    ],
)  # fmt: skip
def test_a_misspelt_key_is_one_error_naming_the_file_and_the_key(tmp_path, changes, key):
    path = _recipe_file(tmp_path, **changes)
    with pytest.raises(MuzarrError, match=f"unknown key '{key}'") as error:
        load_paper(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**GOOD_ROW, "model": "resnet99"}, "unknown model 'resnet99'"),
        ({**GOOD_ROW, "published": {"accuracy": 0.5}}, "published metric 'accuracy' is not one of"),
        ({**GOOD_ROW, "train": {"epochs": "many"}}, "epochs='many' must be an integer"),
        ({**GOOD_ROW, "train": {"optimizer": "adamw2"}}, "optimizer 'adamw2' must be one of"),
        ({**GOOD_ROW, "train": {"seed": 3}}, "seed is set by `train reproduce`"),
        ({**GOOD_ROW, "repeats": 0}, "repeats=0 must be a positive integer"),
        ({**GOOD_ROW, "store": "subclips"}, "store role 'subclips', which stores: does not describe"),
    ],
)  # fmt: skip
def test_bad_rows_fail_naming_the_file_and_the_row(tmp_path, row, message):
    path = _recipe_file(tmp_path, rows=[row])
    with pytest.raises(MuzarrError, match=message) as error:
        load_paper(path)
    assert f"{path}: row 1 (MLP)" in str(error.value)


def test_rows_must_have_distinct_folders(tmp_path):
    with pytest.raises(MuzarrError, match="distinct folder names"):
        load_paper(_recipe_file(tmp_path, rows=[GOOD_ROW, {**GOOD_ROW, "label": "mlp"}]))


def test_store_arguments_name_their_role():
    assert parse_stores(["mtat.zarr", "subclips=/data/mtat-split.zarr"]) == {"main": "mtat.zarr", "subclips": "/data/mtat-split.zarr"}
    assert parse_stores(["s3://bucket/store?x=1"]) == {"main": "s3://bucket/store?x=1"}
    with pytest.raises(MuzarrError, match="role 'main' given twice"):
        parse_stores(["a.zarr", "main=b.zarr"])


# -- the command line -------------------------------------------------------------------------
def test_list_names_every_recipe_with_rows_datasets_and_gpu_hours():
    result = _cli("--list")
    assert result.exit_code == 0
    for name in PAPERS:
        assert name in result.output
    assert "Short-chunk ResNet" in result.output and "fma_medium" in result.output and "GPU-hours (estimate" in result.output


def test_an_unknown_recipe_is_one_line_listing_the_known_ones():
    result = _cli("won2021", "--store", "x.zarr")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        ("error: unknown paper 'won2021' (did you mean 'won2020'?); known papers: seed000, seed001, seed002, seed003, seed004, "
        "won2020, marble (or a path to a .yaml file)")
    ]


def test_help_shows_examples():
    result = _cli("--help")
    assert result.exit_code == 0 and "train reproduce seed001 --store mtat.zarr --store subclips=" in result.output


# -- checks before any training ---------------------------------------------------------------
def test_a_missing_role_is_one_line_with_the_rows_and_the_build(demo_store, tmp_path):
    result = _cli("seed001", "--store", demo_store, "--out", str(tmp_path / "out"), *COMMON)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "role 'subclips'" in line and "Dieleman 1024/1024" in line and "Dieleman 256/256" in line and "CRNN" not in line
    assert "pipe build mtat --out mtat-split.zarr --set clip.mode=split" in line and "--store subclips=URL" in line
    assert not (tmp_path / "out").exists()


def test_a_store_of_whole_clips_for_the_subclip_role_fails_with_the_split_build(demo_store, tmp_path):
    result = _cli("seed001", "--store", demo_store, "--store", f"subclips={demo_store}", "--out", str(tmp_path / "out"), *COMMON)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "row 'Dieleman 1024/1024'" in line and "--set clip.mode=split" in line
    assert not (tmp_path / "out").exists()


def test_a_store_without_the_models_array_fails_before_training(split_store, tmp_path):
    result = _cli("seed000", "--store", split_store, "--out", str(tmp_path / "out"), *COMMON)
    assert result.exit_code == 2 and "row 'MLP'" in result.output and "--logmel sample_rate=16000,n_mels=64," in result.output
    assert not (tmp_path / "out").exists()


def test_missing_pretrained_weights_fail_before_training(genre_store, tmp_path):
    result = _cli("seed003", "--store", genre_store, "--out", str(tmp_path / "out"), *COMMON)
    assert result.exit_code == 2
    assert "row 'ResNet-50 transfer (SGD)'" in result.output and "--model-opt weights=" in result.output
    assert not (tmp_path / "out").exists()


def test_unknown_roles_and_model_options_are_refused(demo_store, tmp_path):
    result = _cli("seed000", "--store", demo_store, "--store", f"subclip={demo_store}", *COMMON)
    assert result.exit_code == 2 and "no store role 'subclip'; its roles: main" in result.output
    result = _cli("seed000", "--store", demo_store, "--model-opt", "weights=x.pth", *COMMON)
    assert result.exit_code == 2 and "--model-opt weights: no model of paper seed000 takes it" in result.output


def test_model_opts_go_to_the_rows_whose_model_takes_them(genre_store, tmp_path):
    jobs = plan_runs(load_paper("seed003"), {"main": genre_store}, tmp_path / "out", device="cpu", echo=lambda line: None,
                     model_opts={"weights": "random", "config": "tiny"})  # fmt: skip
    options = {job.row.label: job.config.model_opts for job in jobs}
    assert options["ResNet-50 transfer (SGD)"] == {"weights": "random", "config": "tiny"}
    assert options["ResNet-18 (RMSprop)"] == {} and options["MLP (64 hidden)"]["hidden"] == [64]
    assert [job.config.epochs for job in jobs] == [None, None, None, 30] and not (tmp_path / "out").exists()


# -- smoke runs ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_won2020_smoke_writes_the_table_beside_the_published_one_and_resumes(demo_store, tmp_path):
    out = tmp_path / "won"
    result = _cli("won2020", "--smoke", "--store", demo_store, "--out", str(out), *COMMON)
    assert result.exit_code == 0, result.output
    assert result.output.count(": training ") == 8 and result.output.count(": done in ") == 8
    table = pd.read_csv(out / "reproduce.csv")
    assert list(table["model"]) == list(WON2020_TABLE) and len(table) == 8
    assert table["roc_auc_published"].tolist() == [auc for auc, _ in WON2020_TABLE.values()]
    measured = _measured(table, "roc_auc")
    assert np.isfinite(measured).sum() == 8 and ((0 <= measured) & (measured <= 1)).all()
    assert (table["runs"] == 1).all() and (table["parameters"] > 0).all()
    text = (out / "reproduce.md").read_text()
    assert "smoke run: not comparable" in text and "Won, Ferraro, Bogdanov, Serra" in text
    assert "AUC published" in text and "AUC measured" in text and "Split scheme used: random" in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == 9  # the header and 8 rows
    for name in ("reproduce.png", "compare.png", "compare.md"):
        assert (out / name).exists(), name
    from PIL import Image

    with Image.open(out / "reproduce.png") as image:
        assert image.info["Title"] == "won2020: published vs measured test AUC (smoke run)"
    assert "| Short-chunk ResNet | short_res | 0.9129 |" in result.output  # the final table is printed

    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/repeat-0/metrics.json")}
    assert len(finished) == 8
    again = _cli("won2020", "--smoke", "--store", demo_store, "--out", str(out), *COMMON)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier, kept") == 8 and ": training " not in again.output
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert pd.read_csv(out / "reproduce.csv")["roc_auc_measured"].tolist() == table["roc_auc_measured"].tolist()


def test_seed000_smoke_resumes_an_interrupted_run_and_refuses_other_settings(demo_store, tmp_path):
    out = tmp_path / "seed000"
    lines: list[str] = []
    table = run_paper(load_paper("seed000"), {"main": demo_store}, out, smoke=True, device="cpu", emissions=False,
                       echo=lines.append)  # fmt: skip
    assert list(table["label"]) == ["MLP", "CNN"] and np.isfinite(_measured(table, "roc_auc")).all()
    # seed 000's 14,770 and 2,989,810 parameters, for the demo's 6 tags instead of 50
    assert list(table["parameters"]) == [14_770 - 129 * 44, 2_989_810 - 257 * 44]
    kept = out / "mlp" / "repeat-0" / "metrics.json"
    interrupted = out / "cnn" / "repeat-0" / "metrics.json"
    kept_mtime = kept.stat().st_mtime_ns
    interrupted.unlink()  # config.json and last.pt stay: the run stopped before its evaluation
    lines.clear()
    run_paper(load_paper("seed000"), {"main": demo_store}, out, smoke=True, device="cpu", emissions=False, echo=lines.append)
    assert any("MLP, repeat 1/1: finished earlier, kept" in line for line in lines)
    assert any("CNN, repeat 1/1: resuming cnn" in line for line in lines)
    assert kept.stat().st_mtime_ns == kept_mtime and interrupted.exists()
    with pytest.raises(MuzarrError, match=r"repeat-0 was trained with other settings: batch_size=4 \(now None\), epochs=1 \(now None\)"):
        run_paper(load_paper("seed000"), {"main": demo_store}, out, device="cpu", emissions=False, echo=lines.append)


@pytest.mark.slow
def test_seed001_smoke_trains_the_raw_cnn_on_subclips_and_the_crnn_on_whole_clips(demo_store, split_store, tmp_path):
    out = tmp_path / "seed001"
    result = _cli("seed001", "--smoke", "--store", demo_store, "--store", f"subclips={split_store}", "--out", str(out), *COMMON)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "reproduce.csv")
    assert len(table) == 6 and np.isfinite(_measured(table, "roc_auc")).all()
    assert table["roc_auc_published_std"].notna().tolist() == [False] * 4 + [True, True]
    config = json.loads((out / "dieleman-1024-1024" / "repeat-0" / "config.json").read_text())
    assert config["input"]["n_subclips"] == 10 and config["train"]["model_opts"] == {"filter_length": 1024, "stride": 1024}
    assert "0.8267 ± 0.0027" in (out / "reproduce.md").read_text()


@pytest.mark.parametrize("name", ["seed002", "seed003", "seed004"])
def test_genre_recipes_smoke_on_a_multiclass_store(genre_store, tmp_path, name):
    paper = load_paper(name)
    table = run_paper(paper, {"main": genre_store}, tmp_path / name, smoke=True, device="cpu", emissions=False, echo=print)
    assert list(table["label"]) == [row.label for row in paper.rows]
    for metric in paper.metrics:
        assert np.isfinite(_measured(table, metric)).all(), metric
    assert "note: the runs' task" not in (tmp_path / name / "reproduce.md").read_text()
    if name == "seed003":  # its MLP reads the report's six feature families, the store's tabular/summary
        config = json.loads((tmp_path / name / "mlp-64-hidden" / "repeat-0" / "config.json").read_text())
        assert config["input"]["array"] == "tabular/summary" and config["input"]["example_shape"] == [190]


def test_probe_of_a_tabular_set_on_a_multiclass_store(genre_store, tmp_path):
    """``train probe --input tabular/summary``: one input, one row per probe kind, scored as classes."""
    result = train_cli("probe", "--store", genre_store, "--input", "tabular/summary", "--max-epochs", "15", "--out",
                       str(tmp_path / "p"), "--quiet", *COMMON)  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p" / "layers.csv", dtype={"layer": str})
    assert list(zip(table["probe"], table["layer"])) == [("mlp", "summary"), ("linear", "summary")]
    assert {"valid_accuracy", "test_f1_macro", "test_f1_weighted"} <= set(table.columns)
    saved = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert saved["task"] == "multiclass" and saved["primary"] == "accuracy" and saved["dim"] == 190
    assert saved["counts"] == {"train": 24, "valid": 3, "test": 3}
    for column in ("valid_accuracy", "test_accuracy"):  # a share of 3 clips each
        np.testing.assert_allclose(table[column] * 3, np.round(table[column] * 3), atol=1e-9)


def test_mlp_tabular_trains_on_any_stored_vector_with_input(genre_store, tmp_path):
    """``train --input tabular/summary``: the 190 summary numbers per clip instead of the model's gtzan57."""
    from pipeline import open_store

    result = train_cli("--store", genre_store, "--model", "mlp_tabular", "--input", "tabular/summary", "--epochs", "2",
                       "--out", str(tmp_path / "run"), "--no-tensorboard", *COMMON)  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["input"]["array"] == "tabular/summary" and config["input"]["example_shape"] == [190]
    store = open_store(genre_store)
    summary = store.read("tabular/summary", store.split("random", "train"))
    normalization = json.loads((tmp_path / "run" / "normalization.json").read_text())  # fitted on these numbers
    np.testing.assert_allclose(normalization["mean"], summary.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_a_multiclass_recipe_on_a_multilabel_store_reads_n_a_and_says_why(demo_store, tmp_path):
    out = tmp_path / "seed004"
    table = run_paper(load_paper("seed004"), {"main": demo_store}, out, smoke=True, device="cpu", emissions=False, echo=print)
    assert table["accuracy_measured"].isna().all() and (table["accuracy_published"] == [0.42, 0.63, 0.27]).all()
    text = (out / "reproduce.md").read_text()
    assert "note: the runs' task (multilabel) has no accuracy" in text
    assert "| MLP | mlp_tabular | 0.4200 ± 0.0117 | n/a |" in text
    assert (out / "reproduce.png").exists()
