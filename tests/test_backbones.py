"""Pretrained backbones: ResNet-50 from torchvision-format state dicts, wav2vec2 from save_pretrained folders."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import MuzarrError, open_store
from training.models import MODELS, build_model, count_parameters
from training.run.config import TrainConfig
from training.run.inference import load_run
from training.run.loop import train
from training.run.metrics import compute_metrics
from training.run.predict import clip_scores, select_rows

try:
    import transformers  # noqa: F401

    HAVE_TRANSFORMERS = True
except ImportError:
    HAVE_TRANSFORMERS = False
needs_transformers = pytest.mark.skipif(
    not HAVE_TRANSFORMERS, reason="transformers is not installed (pip install muzarr[pretrained])"
)

# A few of the 320 keys of torchvision.models.resnet50().state_dict(), to pin the layout.
TORCHVISION_KEYS = [
    "conv1.weight", "bn1.running_var", "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer1.0.bn3.bias",
    "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean", "layer2.3.conv2.weight",
    "layer3.5.bn2.weight", "layer4.2.conv3.weight", "layer4.0.downsample.1.weight", "fc.weight", "fc.bias",
]  # fmt: skip


def _images(seed: int = 0, shape=(2, 128, 40)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- ResNet-50 -------------------------------------------------------------------------------
def test_resnet50_has_torchvisions_layout_and_size():
    model = build_model("resnet50", n_classes=1000, input_shape=(128, 100), weights="random", in_channels=3)
    state = model.state_dict()
    assert count_parameters(model) == 25_557_032 and len(state) == 320  # torchvision's resnet50
    assert all(key in state for key in TORCHVISION_KEYS)
    assert state["conv1.weight"].shape == (64, 3, 7, 7) and state["fc.weight"].shape == (1000, 2048)
    ours = build_model("resnet50", n_classes=10, input_shape=(128, 100), weights="random")
    assert count_parameters(ours) == 25_557_032 - 64 * 49 * 2 - 2048 * 990 - 990


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet50_loads_a_torchvision_state_dict(tmp_path, suffix):
    torch.manual_seed(0)
    source = build_model("resnet50", n_classes=1000, input_shape=(128, 40), weights="random", config="tiny", in_channels=3)
    # non-trivial BatchNorm statistics, so a missed buffer would show
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"resnet50{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    source.eval()
    x = _images()
    rgb = build_model("resnet50", n_classes=6, input_shape=(128, 40), weights=str(path), config="tiny", in_channels=3).eval()
    mono = build_model("resnet50", n_classes=6, input_shape=(128, 40), weights=str(path), config="tiny").eval()
    with torch.no_grad():
        expected = source.embed(x)
        torch.testing.assert_close(rgb.embed(x), expected)
        # summed RGB filters on one channel = the RGB network on the replicated spectrogram
        torch.testing.assert_close(mono.embed(x), expected, rtol=1e-4, atol=1e-5)
        assert rgb(x).shape == (2, 6)
    assert mono.conv1.weight.shape == (8, 1, 7, 7)
    torch.testing.assert_close(mono.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))


def test_resnet50_weights_errors_say_what_to_do(tmp_path):
    with pytest.raises(MuzarrError, match=r"resnet50 needs local ImageNet weights: .*--model-opt weights=resnet50.pth"):
        build_model("resnet50", n_classes=6, input_shape=(128, 40))
    with pytest.raises(MuzarrError, match="does not exist"):
        build_model("resnet50", n_classes=6, input_shape=(128, 40), weights=str(tmp_path / "none.pth"))
    resnet18 = build_model("resnet18", n_classes=6, input_shape=(128, 40))
    torch.save(resnet18.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(MuzarrError, match=r"not a torchvision ResNet-50 state dict .*missing: "):
        build_model("resnet50", n_classes=6, input_shape=(128, 40), weights=str(tmp_path / "r18.pth"), config="tiny")
    full = build_model("resnet50", n_classes=6, input_shape=(128, 40), weights="random")
    torch.save(full.state_dict(), tmp_path / "full.pth")
    with pytest.raises(MuzarrError, match="wrong shape: "):
        build_model("resnet50", n_classes=6, input_shape=(128, 40), weights=str(tmp_path / "full.pth"), config="tiny")
    torch.save({"model": resnet18}, tmp_path / "pickled.pth")  # a pickled module: refused by weights_only
    with pytest.raises(MuzarrError, match="cannot read weights"):
        build_model("resnet50", n_classes=6, input_shape=(128, 40), weights=str(tmp_path / "pickled.pth"), config="tiny")
    with pytest.raises(MuzarrError, match="config='huge'"):
        build_model("resnet50", n_classes=6, input_shape=(128, 40), weights="random", config="huge")


def test_resnet50_trains_an_epoch_and_predicts_its_metrics(small_store, tmp_path):
    out = tmp_path / "resnet50"
    config = TrainConfig(store=small_store, model="resnet50", epochs=1, batch_size=8, emissions=False,
                         model_opts={"weights": "random", "config": "tiny"})  # fmt: skip
    metrics = train(config, out=out, progress=False)
    assert metrics["epochs_run"] == 1 and 0.0 <= metrics["test"]["roc_auc"] <= 1.0
    assert json.loads((out / "config.json").read_text())["protocol"]["optimizer"] == "sgd"  # seed 003's optimizer
    run, store = load_run(out), open_store(small_store)
    rows = select_rows(store, "test", None)
    ours = compute_metrics("multilabel", store.label_matrix[rows], clip_scores(run, store, rows), store.classes)
    assert ours["roc_auc"] == pytest.approx(metrics["test"]["roc_auc"], abs=1e-6)


# -- wav2vec2 --------------------------------------------------------------------------------
def test_wav2vec2_without_weights_or_transformers_says_how_to_get_them():
    with pytest.raises(MuzarrError, match=r"wav2vec2 needs local weights: .*save_pretrained.*--model-opt weights="):
        build_model("wav2vec2", n_classes=6, input_shape=(16000,))
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from pipeline import MuzarrError\nfrom training.models import build_model\n"
        "try:\n    build_model('wav2vec2', n_classes=6, input_shape=(16000,), weights='random')\n"
        "except MuzarrError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.stdout.strip() == "wav2vec2 needs the transformers package: pip install muzarr[pretrained]"


@needs_transformers
def test_wav2vec2_defaults_follow_seed004():
    entry = MODELS["wav2vec2"]
    assert entry.input.kind == "waveform" and entry.input.sample_rate == 16000
    assert (entry.protocol.optimizer, entry.protocol.lr, entry.protocol.weight_decay, entry.protocol.batch_size) == (
        "adam", 5e-5, 1e-5, 8
    )
    model = build_model("wav2vec2", n_classes=10, input_shape=(16000,), weights="random")  # wav2vec2-base layout
    assert model.encoder.config.hidden_size == 768 and model.encoder.config.num_hidden_layers == 12
    assert model.project.out_features == 768 and model.classifier.out_features == 10


@needs_transformers
def test_wav2vec2_loads_a_save_pretrained_folder(tmp_path):
    torch.manual_seed(0)
    source = build_model("wav2vec2", n_classes=6, input_shape=(16000,), weights="random", config="tiny")
    source.encoder.save_pretrained(tmp_path / "w2v")
    assert (tmp_path / "w2v" / "model.safetensors").exists()
    loaded = build_model("wav2vec2", n_classes=6, input_shape=(16000,), weights=str(tmp_path / "w2v"))
    source.eval(), loaded.eval()
    x = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(x).last_hidden_state, source.encoder(x).last_hidden_state)
    assert not any(p.requires_grad for p in loaded.encoder.feature_extractor.parameters())  # frozen encoder
    assert loaded.encoder.config.apply_spec_augment is False


@needs_transformers
def test_wav2vec2_weights_errors(tmp_path):
    with pytest.raises(MuzarrError, match=r"is not a save_pretrained folder \(config.json \+ model.safetensors\)"):
        build_model("wav2vec2", n_classes=6, input_shape=(16000,), weights=str(tmp_path))
    with pytest.raises(MuzarrError, match="applies to weights=random only"):
        build_model("wav2vec2", n_classes=6, input_shape=(16000,), weights=str(tmp_path), config="tiny")
    with pytest.raises(MuzarrError, match="too short"):
        build_model("wav2vec2", n_classes=6, input_shape=(50,), weights="random", config="tiny")


@needs_transformers
def test_wav2vec2_trains_an_epoch_through_the_cli(small_store, tmp_path):
    from click.testing import CliRunner

    from training.cli import main

    out = tmp_path / "w2v"
    result = CliRunner().invoke(main, ["--store", small_store, "--model", "wav2vec2", "--model-opt", "weights=random",
                                       "--model-opt", "config=tiny", "--epochs", "1", "--batch-size", "8",
                                       "--no-emissions", "--quiet", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output + str(result.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and np.isfinite(metrics["valid"]["loss"])
    run, store = load_run(out), open_store(small_store)
    rows = select_rows(store, "test", None)
    ours = compute_metrics("multilabel", store.label_matrix[rows], clip_scores(run, store, rows), store.classes)
    assert ours["roc_auc"] == pytest.approx(metrics["test"]["roc_auc"], abs=1e-6)
