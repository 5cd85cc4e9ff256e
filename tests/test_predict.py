"""``train predict`` and ``train embed``: per-clip scores that reproduce metrics.json, Kaggle CSVs, embeddings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from helpers_train import train_cli

from pipeline import MuzarrError, open_store
from training.run.config import TrainConfig
from training.run.inference import load_run
from training.run.loop import train
from training.run.metrics import compute_metrics
from training.run.predict import clip_scores, select_rows

GENRES = {"jazz": 880.0, "pop": 3000.0, "rock": 220.0}


def _folder_store(root: Path, *, per_class: int, unlabelled: int, feature: dict | None = None) -> str:
    """A multiclass store built by the folder recipe from 1 s tones (one pitch per class) and noise files,
    holding ``feature`` (default: the 64-band log-mel the mlp reads)."""
    from pipeline.build import build
    from pipeline.config import apply_overrides, config_for, load_catalog

    source = root / "audio"
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for name, pitch in GENRES.items():
        if not per_class:
            break
        (source / name).mkdir(parents=True)
        for i in range(per_class):
            tone = 0.3 * np.sin(2 * np.pi * pitch * (1 + 0.05 * i) * t) + 0.05 * rng.standard_normal(len(t))
            soundfile.write(source / name / f"{name}{i}.wav", tone.astype(np.float32), 16000)
    source.mkdir(parents=True, exist_ok=True)
    for i in range(unlabelled):  # files directly in the root: no class (Kaggle's unlabelled test set)
        soundfile.write(source / f"test_{i:03d}.wav", (0.1 * rng.standard_normal(len(t))).astype(np.float32), 16000)
    config = apply_overrides(
        config_for("folder", load_catalog()["folder"]),
        add_features=[feature or {"kind": "logmel", "sample_rate": 16000, "n_mels": 64, "n_fft": 1024,
                                  "hop_length": 512}],
        only=True, settings={"clip.seconds": 1.0},
    )  # fmt: skip
    report = build(config, source=str(source), out=str(root / "store.zarr"), workers=1, progress=False)
    assert report.n_failed == 0
    return str(root / "store.zarr")


@pytest.fixture(scope="module")
def multiclass_store(tmp_path_factory) -> str:
    return _folder_store(tmp_path_factory.mktemp("genres"), per_class=10, unlabelled=4)


@pytest.fixture(scope="module")
def unlabelled_store(tmp_path_factory) -> str:
    return _folder_store(tmp_path_factory.mktemp("kaggle_test"), per_class=0, unlabelled=6)


@pytest.fixture(scope="module")
def multilabel_run(small_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mlp"
    train(TrainConfig(store=small_store, model="mlp", epochs=2, lr=1e-2, emissions=False), out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def multiclass_run(multiclass_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mlp-genres"
    config = TrainConfig(store=multiclass_store, model="mlp", epochs=3, lr=1e-2, batch_size=8, emissions=False)
    train(config, out=out, progress=False)
    return out


def _rows_of(store, ids) -> np.ndarray:
    position = {clip: i for i, clip in enumerate(store.clips["clip_id"])}
    return np.array([position[i] for i in ids])


def test_multilabel_predictions_reproduce_the_runs_test_metrics(small_store, multilabel_run, tmp_path):
    out = tmp_path / "predictions.csv"
    result = train_cli("predict", "--checkpoint", str(multilabel_run), "--store", small_store, "--split", "test",
                        "--threshold", "0.5", "--out", str(out), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    store = open_store(small_store)
    assert list(table.columns) == ["id", *store.classes, *(f"pred_{c}" for c in store.classes)]
    expected_ids = store.clips["clip_id"].to_numpy()[store.split("random", "test")]
    assert list(table["id"]) == list(expected_ids)
    rows = _rows_of(store, table["id"])
    ours = compute_metrics("multilabel", store.label_matrix[rows], table[store.classes].to_numpy(), store.classes)
    saved = json.loads((multilabel_run / "metrics.json").read_text())["test"]
    assert ours["roc_auc"] == pytest.approx(saved["roc_auc"], abs=1e-6)
    assert ours["pr_auc"] == pytest.approx(saved["pr_auc"], abs=1e-6)
    for tag in store.classes:
        if saved["per_tag_roc_auc"][tag] is not None:
            assert ours["per_tag_roc_auc"][tag] == pytest.approx(saved["per_tag_roc_auc"][tag], abs=1e-6)
        np.testing.assert_array_equal(table[f"pred_{tag}"], (table[tag] >= 0.5).astype(int))


def test_multiclass_submission_reproduces_accuracy_and_f1(multiclass_store, multiclass_run, tmp_path):
    out = tmp_path / "submission.csv"
    result = train_cli("predict", "--checkpoint", str(multiclass_run), "--store", multiclass_store, "--scores",
                        "--out", str(out), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    classes = sorted(GENRES)
    assert list(table.columns) == ["id", "label", *classes]
    np.testing.assert_allclose(table[classes].sum(axis=1), 1.0, atol=1e-6)
    assert (table["label"] == np.asarray(classes)[table[classes].to_numpy().argmax(axis=1)]).all()
    store = open_store(multiclass_store)
    rows = _rows_of(store, table["id"])
    labelled = store.label_matrix[rows] >= 0  # the run scores labelled clips only
    assert labelled.sum() >= 3
    one_hot = np.eye(len(classes))[[classes.index(c) for c in table["label"]]]
    ours = compute_metrics("multiclass", store.label_matrix[rows][labelled], one_hot[labelled], classes)
    saved = json.loads((multiclass_run / "metrics.json").read_text())["test"]
    for name in ("accuracy", "f1_macro", "f1_weighted"):
        assert ours[name] == pytest.approx(saved[name], abs=1e-6), name
    assert ours["confusion_matrix"] == saved["confusion_matrix"]


def test_a_store_without_labels_or_classes_is_predicted_whole(multiclass_run, unlabelled_store, tmp_path):
    store = open_store(unlabelled_store)
    assert store.classes == [] and (store.label_matrix < 0).all()
    out = tmp_path / "kaggle.csv"
    result = train_cli("predict", "--checkpoint", str(multiclass_run), "--store", unlabelled_store, "--split", "all",
                        "--out", str(out), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "label"]
    assert list(table["id"]) == [f"test_{i:03d}" for i in range(6)]
    assert set(table["label"]) <= set(GENRES)
    # the same numbers as the library gives
    run = load_run(multiclass_run)
    scores = clip_scores(run, store, select_rows(store, "all", None))
    assert list(table["label"]) == list(np.asarray(run.classes)[scores.argmax(axis=1)])


def test_all_includes_unlabelled_clips_of_a_labelled_store(multiclass_run, multiclass_store):
    store = open_store(multiclass_store)
    run = load_run(multiclass_run)
    rows = select_rows(store, "all", None)
    assert len(rows) == 34 and (store.label_matrix[rows] < 0).sum() == 4
    scores = clip_scores(run, store, rows)
    assert scores.shape == (34, 3) and np.isfinite(scores).all()


def test_embeddings_feed_the_classifier_and_map_to_tsne(small_store, multilabel_run, tmp_path):
    out = tmp_path / "emb" / "emb.parquet"
    result = train_cli("embed", "--checkpoint", str(multilabel_run), "--store", small_store, "--split", "all",
                        "--out", str(out), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out)
    store = open_store(small_store)
    vectors = table[[f"e{i}" for i in range(128)]].to_numpy()  # mlp: hidden=128
    assert list(table.columns[:2]) == ["clip_id", "tags"] and table.shape == (40, 2 + 128)
    rows = _rows_of(store, table["clip_id"])
    for tags, row in zip(table["tags"], rows):
        assert list(tags) == [c for c, on in zip(store.classes, store.label_matrix[row]) if on]
    # one evaluation crop per clip here: classifier(embedding) must give the predicted scores
    run = load_run(multilabel_run)
    with torch.no_grad():
        from_embeddings = torch.sigmoid(run.model.model.classifier(torch.tensor(vectors, dtype=torch.float32))).numpy()
    np.testing.assert_allclose(from_embeddings, clip_scores(run, store, rows), atol=1e-6)
    from PIL import Image

    with Image.open(out.parent / "tsne.png") as image:
        assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 400
        assert image.info["Title"] == "t-SNE of mlp embeddings (all, 40 clips)"
        description = image.info["Description"]
    assert description.startswith("x: t-SNE 1; y: t-SNE 2; colour: most frequent tag; groups: ")
    counts = store.label_matrix.sum(axis=0)
    most = store.classes[int(counts.argmax())]
    assert most in description


def test_multiclass_embeddings_carry_labels_and_colour_by_class(multiclass_store, multiclass_run, tmp_path):
    out = tmp_path / "emb.parquet"
    plot = tmp_path / "map.png"
    result = train_cli("embed", "--checkpoint", str(multiclass_run), "--store", multiclass_store, "--split", "all",
                        "--out", str(out), "--plot", str(plot), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out)
    assert table["label"].isna().sum() == 4 and set(table["label"].dropna()) == set(GENRES)
    from PIL import Image

    with Image.open(plot) as image:
        groups = image.info["Description"].split("groups: ")[1].split(", ")
    assert set(groups) == {*GENRES, "(unlabelled)"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "/nonexistent-run"], "no config.json"),
        (["--checkpoint", "RUNS"], "such as"),
        (["--checkpoint", "RUN", "--threshold", "0.5", "--store", "MC"], "--threshold applies to multilabel"),
        (["--checkpoint", "RUN", "--store", "UL"], "has no stored test clips: use --split all"),
        (["--checkpoint", "RUN", "--split-scheme", "nosuch"], "no split scheme 'nosuch'"),
    ],
)
def test_bad_predict_arguments_are_one_clear_line(multiclass_run, multiclass_store, unlabelled_store, args, message):
    replace = {"RUN": str(multiclass_run), "RUNS": str(multiclass_run.parent), "MC": multiclass_store, "UL": unlabelled_store}
    args = [replace.get(a, a) for a in args]
    if "--store" not in args:
        args += ["--store", multiclass_store]
    result = train_cli("predict", *args, "--out", "/tmp/never-written.csv", "--device", "cpu")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_load_run_refuses_a_foreign_checkpoint(multilabel_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(multilabel_run, copy)
    torch.save({"weight": torch.zeros(3)}, copy / "best.pt")
    with pytest.raises(MuzarrError, match="not a muzarr model checkpoint"):
        load_run(copy)


def test_a_store_giving_other_examples_than_training_is_refused(multiclass_run, multiclass_store, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(multiclass_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["input"]["example_shape"] = [64, 188]  # as if trained on 6 s crops
    (copy / "config.json").write_text(json.dumps(config))
    store = open_store(multiclass_store)
    with pytest.raises(MuzarrError, match=r"examples of shape \(64, 94\), but the run in .* was trained on \(64, 188\)"):
        clip_scores(load_run(copy), store, select_rows(store, "all", None))


def _predict_process(*args: str) -> subprocess.CompletedProcess:
    """``train predict`` in a process of its own: nothing imported before it (as a user runs it)."""
    return subprocess.run([str(Path(sys.executable).parent / "train"), "predict", *args, "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_an_out_under_a_file_is_one_line_before_any_prediction(multilabel_run, small_store, tmp_path):
    """Issue #21 item 8: `--out afile/p.csv` (afile a file) ended in FileExistsError's traceback, after predicting."""
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "p.csv"
    result = _predict_process("--checkpoint", str(multilabel_run), "--store", small_store, "--out", str(out))
    assert (result.returncode, result.stderr) == (
        2, f"error: --out {tmp_path}/afile/p.csv: {tmp_path}/afile is a file, not a folder: choose another --out\n")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_store_without_the_runs_input_names_the_build_that_adds_it(multilabel_run, tmp_path):
    """Issue #21 item 13: in a fresh process the hint was "unknown feature kind 'logmel'; known kinds: " (the feature
    registry was empty): it names the pipe build that adds the run's input to that store."""
    store = _folder_store(tmp_path, per_class=2, unlabelled=0, feature={"kind": "waveform", "sample_rate": 16000})
    result = _predict_process("--checkpoint", str(multilabel_run), "--store", store, "--split", "all",
                              "--out", str(tmp_path / "p.csv"))  # fmt: skip
    assert (result.returncode, result.stderr) == (2, (
        f"error: store {store} has no logmel input for this model (arrays: waveform); add it with: pipe build folder "
        f"--source {tmp_path / 'audio'} --out {store} --set clip.seconds=1.0 --only --waveform sample_rate=16000 "
        "--logmel sample_rate=16000,n_mels=64,n_fft=1024,hop_length=512\n"))
    assert not (tmp_path / "p.csv").exists()
