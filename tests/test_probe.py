"""``train probe``, per-clip vector inputs and ``train reproduce marble``, on a store a real ``pipe build --embedding`` made.

The store: 96 demo clips of 2 s through a tiny random-weight HuBERT (``save_pretrained``d), built
once per run with the configuration ``pipe build demo --embedding FOLDER`` asks for. The fidelity claim of the batched pass is tested twice:
each probe trained beside the others ends with the weights it gets alone, and the batched pass
ends where a textbook per-layer PyTorch loop (``nn.Linear``, ``torch.optim.Adam``,
``ReduceLROnPlateau``, sklearn's ROC-AUC for early stopping) ends.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import built_once
from helpers_models import save_tiny_hubert
from helpers_train import train_cli
from sklearn.metrics import roc_auc_score
from torch import nn

from pipeline import MuzarrError, open_store
from training.data import InputSpec, SplitReader, plan_examples
from training.data.spec import parse_input
from training.data.vectors import vector_layout
from training.experiments.probe import load_probe_data, probe_targets
from training.experiments.probe_engine import ProbeSettings, fit_probes, init_weights, monitor_values

ARRAY = "embedding/tiny-hubert"
COMMON = ["--no-emissions", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Probes of 32 numbers per clip: a second torch thread only adds waiting (two CI workers share 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """96 demo clips (2 s) through a tiny random HuBERT: ``embedding/tiny-hubert``, [clip, 3 layers, 32].

    ``pipe build demo --embedding FOLDER --only --set ...``'s configuration and build, run in this
    process on a one-thread cluster (a worker process would import torch and load the model again:
    25 s more on 2 CI cores for the same bytes)."""
    from dask.distributed import Client, LocalCluster

    from pipeline.build import build
    from pipeline.config import config_from_command

    def make(root):
        model = save_tiny_hubert(root / "tiny-hubert")
        config, _ = config_from_command("demo", embeddings=(str(model),), only=True, settings=(
            "options.n_clips=96", "options.seconds=2", "clip.seconds=2", "batch_clips=16"))  # fmt: skip
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
                Client(cluster) as client:  # fmt: skip
            report = build(config, source=str(root / "audio"), out=str(root / "e.zarr"), client=client, progress=False)
        assert report.n_failed == 0

    return str(built_once(tmp_path_factory, "probe_store", make) / "e.zarr")


@pytest.fixture(scope="module")
def data(store):
    """The split's vectors of every layer and their mean, as ``train probe`` reads them."""
    opened = open_store(store)
    layout = vector_layout(opened, ARRAY)
    return load_probe_data(opened, layout, probe_targets(parse_input(ARRAY), None, layout), scheme="random", echo=print)


def _probe(store, out, *args):
    return train_cli("probe", "--store", store, "--out", str(out), *COMMON, *args)


# -- the command ------------------------------------------------------------------------------
def test_probe_learns_the_demo_tags_one_row_per_layer_best_picked_on_validation(store, tmp_path):
    result = _probe(store, tmp_path / "p", "--embedding", "tiny-hubert", "--max-epochs", "20")
    assert result.returncode == 0, result.output
    table = pd.read_csv(tmp_path / "p" / "layers.csv", dtype={"layer": str})
    assert list(zip(table["probe"], table["layer"])) == [(k, layer) for k in ("mlp", "linear") for layer in ("0", "1", "2", "all")]
    saved = json.loads((tmp_path / "p" / "probe.json").read_text())
    for kind in ("mlp", "linear"):
        rows = table[table["probe"] == kind].reset_index(drop=True)
        best = rows.loc[rows["valid_roc_auc"].idxmax()]  # picked on validation, not on test
        assert saved["best"][kind]["layer"] == best["layer"]
        assert saved["best"][kind]["test"]["roc_auc"] == pytest.approx(best["test_roc_auc"])
        # a random-weight encoder's layers still separate the demo's content-derived tags: far above chance (0.5)
        assert best["test_roc_auc"] > 0.75 and (rows["test_roc_auc"] > 0.7).all()
        assert ((rows["best_epoch"] >= 1) & (rows["best_epoch"] <= rows["epochs"]) & (rows["epochs"] <= 20)).all()
    assert saved["counts"] == {"train": 67, "valid": 14, "test": 15} and saved["split_scheme"] == "random"
    assert saved["layers"] == ["0", "1", "2", "all"] and saved["dim"] == 32
    assert f"best mlp layer on validation: {saved['best']['mlp']['layer']}" in result.output
    from PIL import Image

    with Image.open(tmp_path / "p" / "layers.png") as image:
        assert image.info["Title"] == "embedding/tiny-hubert of demo: roc_auc per layer"
    again = _probe(store, tmp_path / "p", "--embedding", "tiny-hubert")
    assert again.returncode == 2 and "holds a finished probe run" in again.output


def test_the_vectors_read_are_the_stored_layers_frames_and_means(store, data):
    """What a probe reads is the store's own numbers: layer l of each clip, and their mean as "all"
    (standardised with the training clips' statistics)."""
    opened = open_store(store)
    rows = np.concatenate([opened.split("random", part) for part in ("train", "valid", "test")])
    stored = opened.read(ARRAY, rows).astype(np.float64)
    expected = [stored[:, 0], stored[:, 1], stored[:, 2], stored.mean(axis=1)]
    n_train = len(opened.split("random", "train"))
    for p, values in enumerate(expected):
        standard = (values - values[:n_train].mean(axis=0)) / values[:n_train].std(axis=0)
        np.testing.assert_allclose(data.x[p], standard, atol=2e-4)
    np.testing.assert_array_equal(data.targets, opened.label_matrix[rows])


@pytest.mark.parametrize("layer", [1, None])
def test_train_input_reads_one_layer_or_their_mean(store, layer):
    """``train --input embedding/V,layer=N`` examples: the stored layer N of each clip (layer=all: the mean)."""
    opened = open_store(store)
    plan = plan_examples(opened, InputSpec("embedding", embedding="tiny-hubert", layer=layer))
    assert plan.example_shape == (32,)
    rows = opened.split("random", "train")
    reader = SplitReader(opened, plan, rows, opened.label_matrix[rows], cache=False)
    read = np.concatenate([block for _, block in reader.blocks()])
    stored = opened.read(ARRAY, rows)
    np.testing.assert_allclose(read, stored[:, layer] if layer is not None else stored.mean(axis=1), rtol=1e-6)


def test_mlp_tabular_trains_on_an_embedding_layer(store, tmp_path):
    result = train_cli("--store", store, "--model", "mlp_tabular", "--input", "embedding/tiny-hubert,layer=2", "--epochs", "2",
                       "--out", str(tmp_path / "run"), "--no-tensorboard", *COMMON)  # fmt: skip
    assert result.returncode == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["input"] == "embedding/tiny-hubert,layer=2"
    assert config["input"]["array"] == ARRAY and config["input"]["example_shape"] == [32]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and 0 <= metrics["test"]["roc_auc"] <= 1


# -- the batched pass --------------------------------------------------------------------------
#: early stops and lr drops within 20 epochs; 64 hidden units (512 are the default): the same code, 8x less work
SHORT = {"max_epochs": 20, "patience": 2, "plateau_patience": 1, "hidden": 64}


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_batched_probes_equal_each_probe_trained_alone(data, kind):
    x_train, y_train = data.part("train")
    x_valid, y_valid = data.part("valid")
    settings = ProbeSettings(kind=kind, **SHORT)
    seeds = [11, 12, 13, 14]

    def fit(probes):
        return fit_probes(torch.from_numpy(x_train[probes]), torch.from_numpy(y_train), torch.from_numpy(x_valid[probes]),
                          y_valid, settings=settings, task="multilabel", n_classes=6, seeds=[seeds[p] for p in probes],
                          order_seed=5)  # fmt: skip

    together = fit([0, 1, 2, 3])
    assert any(f.epochs < SHORT["max_epochs"] for f in together) and any(f.lr < settings.lr for f in together)
    for p in range(4):
        (alone,) = fit([p])
        assert (alone.best_epoch, alone.epochs, alone.lr) == (together[p].best_epoch, together[p].epochs, together[p].lr)
        assert alone.best_value == pytest.approx(together[p].best_value, abs=1e-6)
        for name, weights in alone.weights.items():
            torch.testing.assert_close(together[p].weights[name], weights, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_the_batched_pass_is_a_textbook_per_layer_torch_loop(data, kind):
    """The reference: one probe at a time with torch's own modules, Adam and ReduceLROnPlateau, early
    stopping on sklearn's macro ROC-AUC (dropout off: torch's Dropout draws from another generator)."""
    x_train, y_train = data.part("train")
    x_valid, y_valid = data.part("valid")
    settings = ProbeSettings(kind=kind, dropout=0.0, **SHORT)
    seeds = [21, 22, 23, 24]
    fits = fit_probes(torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_valid), y_valid,
                      settings=settings, task="multilabel", n_classes=6, seeds=seeds, order_seed=9)  # fmt: skip
    start, _ = init_weights(kind, seeds, 32, 6, hidden=settings.hidden)
    for p, fit in list(enumerate(fits))[::3]:  # a layer and the mean of all: the reference is slow by design
        model, best_epoch, epochs = _textbook(kind, {k: v[p] for k, v in start.items()}, x_train[p], y_train, x_valid[p],
                                              y_valid, settings, order_seed=9)  # fmt: skip
        assert (fit.best_epoch, fit.epochs) == (best_epoch, epochs)
        names = ("w1", "b1", "w2", "b2") if kind == "mlp" else ("w", "b")
        layers = [m for m in model if isinstance(m, nn.Linear)]
        for layer, (w, b) in zip(layers, zip(names[::2], names[1::2])):
            torch.testing.assert_close(fit.weights[w], layer.weight.detach().T, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(fit.weights[b], layer.bias.detach(), atol=1e-5, rtol=1e-4)


def _textbook(kind, start, x_train, y_train, x_valid, y_valid, settings, *, order_seed):
    """One probe, plainly: returns the best epoch's model, the best epoch and the epochs run."""
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(32, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, 6))
        weights = [("w1", "b1"), ("w2", "b2")]
    else:
        model = nn.Sequential(nn.Linear(32, 6))
        weights = [("w", "b")]
    for layer, (w, b) in zip([m for m in model if isinstance(m, nn.Linear)], weights):
        layer.weight.data.copy_(start[w].T)
        layer.bias.data.copy_(start[b])
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, fused=True)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=settings.plateau_factor,
                                                         patience=settings.plateau_patience)  # fmt: skip
    x, y, xv = torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_valid)
    best, best_epoch, best_state, waited = -np.inf, 0, None, 0
    for epoch in range(1, settings.max_epochs + 1):
        order = torch.from_numpy(np.random.default_rng([order_seed, epoch]).permutation(len(x)))
        for i in range(0, len(x), settings.batch_size):
            batch = order[i : i + settings.batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            scores = torch.sigmoid(model(xv)).numpy()
        usable = [j for j in range(6) if 0 < y_valid[:, j].sum() < len(y_valid)]
        value = np.mean([roc_auc_score(y_valid[:, j], scores[:, j]) for j in usable])
        if value > best:
            best, best_epoch, best_state, waited = value, epoch, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            waited += 1
        plateau.step(value)
        if waited >= settings.patience:
            break
    model.load_state_dict(best_state)
    return model, best_epoch, epoch


def test_the_monitored_auc_is_sklearns_macro_roc_auc_with_ties():
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 5)) < 0.3).astype(np.float32)
    targets[:, 4] = 0  # no positive: left out, as training.run.metrics leaves it out
    scores = np.round(rng.random((3, 40, 5)), 1)  # ties
    expected = [np.mean([roc_auc_score(targets[:, j], scores[p, :, j]) for j in range(4)]) for p in range(3)]
    np.testing.assert_allclose(monitor_values(scores, targets, task="multilabel"), expected, rtol=1e-12)


# -- bad input: one line, exit 2, nothing written --------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "logmel/mel64"], "--input logmel/mel64: not a per-clip vector array; give tabular/SET or embedding/VARIANT"),
        (["--embedding", "tiny-hubrt"], "has no array 'embedding/tiny-hubrt' (did you mean 'embedding/tiny-hubert'?)"),
        (["--embedding", "tiny-hubert", "--layers", "0,7"], "--layers 0,7: layer 7 is not in embedding/tiny-hubert; it holds layers 0-2"),
        (["--embedding", "tiny-hubert", "--layers", "x"], "--layers x: 'x' is not a layer, a range A-B or all"),
        (["--input", "embedding/tiny-hubert,layer=9"], "layer 9 is not in embedding/tiny-hubert"),
        (["--input", "embedding/tiny-hubert,layr=1"], "unknown option 'layr'; embedding/... takes only layer=N|all"),
        (["--embedding", "tiny-hubert", "--probe", "mpl"], "--probe 'mpl' must be one of mlp, linear, both (did you mean mlp?)"),
        (["--embedding", "tiny-hubert", "--input", "tabular/x"], "give --embedding tiny-hubert or --input tabular/x, not both"),
        ([], "train probe needs --embedding VARIANT or --input ARRAY"),
    ],
)  # fmt: skip
def test_bad_probe_input_is_one_line(store, tmp_path, args, message):
    result = _probe(store, tmp_path / "out", *args)
    assert result.returncode == 2
    assert result.output.count("\n") == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_bad_train_input_is_one_line(store, tmp_path):
    for args, message in [
        (["--model", "crnn", "--input", ARRAY], "--input embedding/tiny-hubert: model 'crnn' reads logmel"),
        (["--model", "mlp_tabular", "--input", "embedding/tiny-hubert,layer=5"], "layer 5 is not in embedding/tiny-hubert"),
        (["--model", "mlp_tabular", "--input", "tabular/sumary"], "has no array 'tabular/sumary'"),
    ]:
        result = train_cli("--store", store, *args, "--out", str(tmp_path / "run"), *COMMON)
        assert result.returncode == 2 and message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(MuzarrError, match="tabular/summary has no fixed size"):
        parse_input("tabular/summary").example_shape()


# -- train reproduce marble ------------------------------------------------------------------------
def test_reproduce_marble_smoke_builds_a_tiny_store_probes_it_and_sets_it_beside_the_published_rows(tmp_path):
    out = tmp_path / "marble"
    result = train_cli("reproduce", "marble", "--task", "mtat", "--smoke", "--out", str(out), "--no-emissions", "--device", "cpu")
    assert result.returncode == 0, result.output
    table = pd.read_csv(out / "reproduce.csv")
    assert list(table["label"]) == ["MERT-v1-330M", "MusicFM", "MuQ", "tiny-hubert (this store)"]
    assert table["roc_auc_published"].tolist()[:3] == [0.906, 0.909, 0.905]
    assert table["pr_auc_published"].tolist()[:3] == [0.379, 0.383, 0.385]
    probe = json.loads((out / "probe" / "probe.json").read_text())
    assert table["roc_auc_measured"].iloc[3] == pytest.approx(probe["best"]["mlp"]["test"]["roc_auc"])
    assert probe["config"]["max_epochs"] == 3 and probe["config"]["probe"] == "mlp"
    assert "smoke run: not comparable" in (out / "reproduce.md").read_text() and (out / "reproduce.png").exists()
    again = train_cli("reproduce", "marble", "--task", "mtat", "--smoke", "--out", str(out), "--no-emissions", "--device", "cpu")
    assert again.returncode == 0 and "probed earlier with these settings, kept" in again.output


def test_reproduce_marble_without_a_store_names_the_build(tmp_path):
    result = train_cli("reproduce", "marble", "--task", "jamendo", "--out", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "pipe build jamendo --embedding m-a-p/MERT-v1-95M --device cuda --out jamendo-mert.zarr" in result.output
    result = train_cli("reproduce", "marble", "--task", "mtta")
    assert result.returncode == 2 and "--task mtta: one of mtat, jamendo (did you mean mtat?)" in result.output
    result = train_cli("reproduce", "seed000", "--task", "mtat")
    assert result.returncode == 2 and "only `train reproduce marble` takes --task" in result.output
