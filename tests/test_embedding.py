"""Embeddings as a stored feature (issue #23): what a build stores equals the model's own forward, cut as
MARBLE cuts clips; the same bytes from 1 or 2 workers; a grow adds one without touching other arrays;
verify, copy and xarray read it as any array; every bad request is one line and writes nothing.

The model is a tiny random-weight HuBERT saved with ``save_pretrained`` (``tests/helpers_models.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("transformers")
import torch
from conftest import built_once
from helpers_models import save_tiny_hubert
from helpers_stores import file_versions, store_files
from transformers import HubertModel

from pipeline import open_store
from pipeline.audio import ClipPolicy, load_clip

SETTINGS = ["--set", "options.n_clips=12", "--set", "options.seconds=2.0", "--set", "clip.seconds=2.0", "--set", "batch_clips=8"]
#: pooled over all layers; time-resolved; MARBLE's overlapping windows (0.75 s every 0.5 s: 4 windows and a
#: 0.5 s tail that is dropped) over two chosen layers
VARIANTS = ("", ",pool=none", ",window_seconds=0.75,hop_seconds=0.5,layers=0;2")


def pipe(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.removeprefix("error: ").strip()


@pytest.fixture(scope="session")
def tiny_hubert(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "tiny_hubert", lambda folder: save_tiny_hubert(folder / "tiny-hubert")) / "tiny-hubert"


def build(source: Path, out: Path, model: Path, *, workers: int, embeddings=VARIANTS, only: bool = True) -> None:
    options = [arg for v in embeddings for arg in ("--embedding", f"{model}{v}")]
    result = pipe("build", "demo", "--source", source, "--out", out, *SETTINGS, *(["--only"] if only else []), *options,
                  "--workers", workers, "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_hubert) -> dict:
    """A store of the catalog's demo features (2 workers), grown by three embeddings (2 workers); and a store of
    one embedding alone built by 1 worker."""
    root = tmp_path_factory.mktemp("embedding")
    grown = root / "grown.zarr"
    result = pipe("build", "demo", "--source", root / "audio", "--out", grown, *SETTINGS, "--workers", 2, "--quiet")
    assert result.returncode == 0, result.stderr
    before = {k: v for k, v in file_versions(grown).items() if not k.startswith(("zarr.json", "_muzarr", "tables"))}
    build(root / "audio", grown, tiny_hubert, workers=2, only=False)
    build(root / "audio", root / "one.zarr", tiny_hubert, workers=1, embeddings=("",))
    return {"root": root, "grown": grown, "one": root / "one.zarr", "before": before}


def reference(model: HubertModel, audio: np.ndarray, *, window: float | None, hop: float | None, layers, pool: str) -> np.ndarray:
    """MARBLE's extraction, written out: normalise the clip, cut windows every ``hop`` from the start (the last as
    long as what is left, dropped under 1 s), one forward per window, mean over frames then over windows."""
    x = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    sr = 16000
    if window is None:
        pieces = [x]
    else:
        pieces = [x[i : i + round(window * sr)] for i in range(0, len(x), round(hop * sr))]
        if pieces[-1].shape[-1] < sr:
            pieces = pieces[:-1]
    states = []
    with torch.no_grad():
        for piece in pieces:
            out = model(torch.tensor(piece[None], dtype=torch.float32), output_hidden_states=True)
            states.append(torch.stack(out.hidden_states, 1)[0, list(layers)].numpy())  # [layer, frame, dim]
    if pool == "none":
        return np.concatenate(states, axis=1).transpose(0, 2, 1)
    return np.mean([s.mean(axis=1) for s in states], axis=0)


def test_stored_embeddings_equal_the_models_own_forward(stores, tiny_hubert):
    store = open_store(str(stores["grown"]))
    group = zarr.open_group(str(stores["grown"]), mode="r")
    model = HubertModel.from_pretrained(tiny_hubert).eval()
    clips = store.table("clips")
    names = sorted(n for n in store.arrays if n.startswith("embedding/"))
    assert names == ["embedding/tiny-hubert", "embedding/tiny-hubert_L0.2_w0.75_h0.5", "embedding/tiny-hubert_none"]
    cases = {
        "embedding/tiny-hubert": {"window": None, "hop": None, "layers": range(3), "pool": "mean"},
        "embedding/tiny-hubert_none": {"window": None, "hop": None, "layers": range(3), "pool": "none"},
        "embedding/tiny-hubert_L0.2_w0.75_h0.5": {"window": 0.75, "hop": 0.5, "layers": (0, 2), "pool": "mean"},
    }
    for row in (0, 7, 11):
        path = stores["root"] / "audio" / clips["path"][row]
        audio = load_clip(str(path), rates=(16000,), policy=ClipPolicy(mode="pad_crop", seconds=2.0)).audio[16000]
        for name, case in cases.items():
            expected = reference(model, audio, **case)
            np.testing.assert_allclose(group[name][row], expected, rtol=1e-4, atol=1e-5, err_msg=name)
    # shapes, one layer per chunk, and what the array says of itself
    pooled, timed = group["embedding/tiny-hubert"], group["embedding/tiny-hubert_none"]
    assert pooled.shape == (12, 3, 32) and pooled.chunks[1] == 1
    assert timed.shape == (12, 3, 32, 399) and timed.chunks[1] == 1  # 2 s at 16 kHz through strides 5, 4, 4
    assert timed.attrs["frame_rate"] == pytest.approx(200.0, rel=0.01) and pooled.attrs["layers"] == [0, 1, 2]
    assert group["embedding/tiny-hubert_L0.2_w0.75_h0.5"].attrs["layers"] == [0, 2]
    assert tuple(pooled.metadata.dimension_names) == ("clip", "layer_tiny-hubert", "dim_tiny-hubert")


def test_the_manifest_says_which_model_weights_and_libraries(stores, tiny_hubert):
    feature = open_store(str(stores["grown"])).arrays["embedding/tiny-hubert"].feature
    import transformers

    digest = json.loads((tiny_hubert / "config.json").read_text())  # noqa: F841 - read: the folder is there
    import hashlib

    file_digest = hashlib.sha256((tiny_hubert / "model.safetensors").read_bytes()).hexdigest()
    expected = "sha256:" + hashlib.sha256(f"model.safetensors:{file_digest}\n".encode()).hexdigest()
    assert feature["weights"] == expected
    assert feature["model"] == str(tiny_hubert) and feature["family"] == "wav2vec2"
    assert feature["device"] == "cpu" and feature["precision"] == "float32"
    assert f"transformers {transformers.__version__}" in feature["versions"] and f"torch {torch.__version__}" in feature["versions"]


def test_one_and_two_workers_write_identical_bytes(stores):
    one, two = store_files(stores["one"], "embedding/tiny-hubert"), store_files(stores["grown"], "embedding/tiny-hubert")
    assert len(one) >= 3 and one == two  # and a grow writes what a build of that array alone writes


def test_a_grow_adds_embeddings_and_leaves_every_other_array_alone(stores):
    after = file_versions(stores["grown"])
    assert {k: after[k] for k in stores["before"]} == stores["before"]  # not rewritten: same bytes, same mtime
    assert open_store(str(stores["grown"])).arrays.keys() >= {"waveform", "embedding/tiny-hubert_none"}


def test_verify_copy_xarray_and_tensorstore_read_embeddings(stores, tmp_path):
    verify = pipe("verify", stores["grown"])
    assert verify.returncode == 0 and "clean" in verify.stdout, verify.stdout + verify.stderr
    copy = pipe("copy", stores["grown"], tmp_path / "copy.zarr")
    assert copy.returncode == 0, copy.stderr
    assert store_files(tmp_path / "copy.zarr", "embedding") == store_files(stores["grown"], "embedding")
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(stores["grown"], group="embedding")
    layer = ds["tiny-hubert"].isel({"layer_tiny-hubert": 2})
    expected = zarr.open_group(str(stores["grown"]), mode="r")["embedding/tiny-hubert"][:, 2]
    np.testing.assert_array_equal(layer.values, expected)
    ts = pytest.importorskip("tensorstore")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{stores['grown']}/embedding/tiny-hubert_none"}}
    opened = ts.open(spec).result()
    assert tuple(opened.domain.labels) == ("clip", "layer_tiny-hubert_none", "dim_tiny-hubert_none", "frame_tiny-hubert_none")
    store = open_store(str(stores["grown"]))
    np.testing.assert_array_equal(opened[:, 1].read().result(), store.read("embedding/tiny-hubert_none", np.arange(12))[:, 1])


@pytest.mark.parametrize(
    ("embedding", "extra", "expected"),
    [
        ("{missing}", (), "no such folder"),
        ("{bert}", (), "model_type 'bert' is not an audio encoder"),
        ("{unweighted}", (), "no weight files there (*.safetensors, *.bin)"),
        ("{mangled}", (), "config.json lacks or mangles 'num_hidden_layers'"),
        ("{model},layers=3", (), "layer 3 is out of range: {model} has hidden states 0 to 2"),
        ("{model},layer=3", (), "unknown parameter(s) ['layer'] for feature 'embedding' (did you mean layers?)"),
        ("{model}", ("--device", "cuda"), "device=cuda but this machine has no CUDA GPU"),
        ("{model},pool=none,window_seconds=1,hop_seconds=0.5", (), "overlapping windows would repeat frames"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(embedding, extra, expected, tiny_hubert, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    unweighted = tmp_path / "unweighted"  # a HuBERT's config.json without its weights
    unweighted.mkdir()
    (unweighted / "config.json").write_bytes((tiny_hubert / "config.json").read_bytes())
    mangled = tmp_path / "mangled"  # a HuBERT's config.json without its layer count
    mangled.mkdir()
    config = json.loads((tiny_hubert / "config.json").read_text())
    del config["num_hidden_layers"]
    (mangled / "config.json").write_text(json.dumps(config))
    names = {"missing": tmp_path / "nowhere", "bert": bert, "unweighted": unweighted, "mangled": mangled, "model": tiny_hubert}
    out = tmp_path / "never.zarr"
    args = ["build", "demo", "--source", tmp_path / "audio", "--out", out, *SETTINGS, "--only",
            "--embedding", embedding.format(**names), *extra, "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert expected.format(**names) in result.stderr
    assert not out.exists() and not (tmp_path / "audio").exists()


def test_without_transformers_the_build_says_what_to_install(tiny_hubert, tmp_path):
    """A Python where ``import transformers`` fails (a module of that name that raises ImportError, first on the path)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "transformers.py").write_text("raise ImportError('No module named transformers')\n")
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "never.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build", "demo", "--source", str(tmp_path / "audio"), "--out", str(out),
         *SETTINGS, "--only", "--embedding", str(tiny_hubert), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert "embeddings need torch and transformers (pip install 'muzarr[pretrained]')" in one_line(result)
    assert not out.exists()


def test_sub_clips_batched_together_equal_each_alone(tiny_hubert):
    """Sub-clips' windows share forward passes (batch_size windows of one length): each row's values are its own."""
    from pipeline.features.embedding import Embedding

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((3, 16000)).astype(np.float32) * 0.1
    feature = Embedding(model=str(tiny_hubert), window_seconds=0.5, batch_size=4)
    together = feature.extract(rows, sampling_rate=16000)
    alone = np.stack([feature.extract(row, sampling_rate=16000) for row in rows])
    assert together.shape == (3, 3, 32)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_a_model_is_loaded_once_per_process_and_device(tiny_hubert):
    from pipeline.embed.models import loaded
    from pipeline.features.embedding import Embedding

    feature = Embedding(model=str(tiny_hubert))
    first = feature.backbone()
    assert feature.backbone() is first  # every batch of a worker uses the copy its first batch loaded
    assert Embedding(model=str(tiny_hubert), layers="0-1").backbone() is first  # other layers: the same model
    other = loaded(str(tiny_hubert), weights=feature.weights, trust_remote_code=False, device="cpu", precision="bfloat16")
    assert other is not first


def test_a_catalog_entry_can_hold_an_embedding(tiny_hubert, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "datasets:\n  demo_emb:\n    recipe: demo\n    task: multilabel\n    splits: [random]\n"
        "    options: {n_clips: 10, seconds: 1.0}\n    clip: {mode: pad_crop, seconds: 1.0}\n"
        f"    features:\n      - {{kind: embedding, model: '{tiny_hubert}', layers: '1-2', pool: mean}}\n"
    )
    result = CliRunner().invoke(main, ["ls", "--catalog", str(catalog)])
    assert result.exit_code == 0, result.output
    assert "embedding/tiny-hubert_L1-2" in result.output


def test_a_track_store_of_embeddings_pooled_and_time_resolved(tiny_hubert, tmp_path):
    """Tracks of 1 s, 1.2 s and 1 ms: the time-resolved array concatenates the first two along time with their
    extents, both arrays equal the model's forward of each whole track. The tracks share forward passes; the 1 ms
    one is shorter than the model's first convolution takes, so the batch's shared call fails, each track is
    computed alone, and only the short one is recorded as those arrays' failure (its waveform stays)."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    for label, name, seconds in (("a", "long1", 1.0), ("a", "tiny", 0.001), ("b", "long2", 1.2)):
        (tmp_path / "src" / label).mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "src" / label / f"{name}.wav", (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000)
    out = tmp_path / "t.zarr"
    result = pipe("build", "folder", "--source", tmp_path / "src", "--out", out, "--set", "clip.mode=track",
                  "--embedding", tiny_hubert, "--embedding", f"{tiny_hubert},pool=none", "--workers", "1", "--quiet")  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # stored, with one clip missing from two arrays
    assert "2 missing from one array" in result.stdout
    assert "1 ms of audio is shorter than one frame of tiny-hubert" in result.stdout
    store = open_store(str(out))
    clips = store.table("clips")
    group = zarr.open_group(str(out), mode="r")
    pooled, timed = group["embedding/tiny-hubert"][:], group["embedding/tiny-hubert_none"]
    extents = group["extents/embedding/tiny-hubert_none"][:]
    short = clips.index[clips["path"].str.contains("tiny")][0]
    assert np.isnan(pooled[short]).all() and not np.isnan(np.delete(pooled, short, axis=0)).any()
    assert extents[short, 1] == 0  # a failed track takes no room along time
    model = HubertModel.from_pretrained(tiny_hubert).eval()
    frames = {"long1": 199, "long2": 239}  # 1 s and 1.2 s at 16 kHz through strides 5, 4, 4
    for row in np.flatnonzero(~clips["path"].str.contains("tiny")):
        path = tmp_path / "src" / clips["path"][row]
        audio = load_clip(str(path), rates=(16000,), policy=ClipPolicy(mode="track")).audio[16000]
        start, length = extents[row]
        assert length == frames[path.stem]
        expected = reference(model, audio, window=None, hop=None, layers=range(3), pool="none")
        np.testing.assert_allclose(timed[:, :, start : start + length], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pooled[row], expected.mean(axis=-1), rtol=1e-4, atol=1e-5)
