"""Won et al.'s raw-waveform models: SampleCNN, SampleCNN + SE and the short-chunk CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.sample_cnn import SampleCNN, SampleCNNSE
from training.models.short_cnn import ShortChunkCNN

MODELS = {"sample_cnn": SampleCNN, "sample_cnn_se": SampleCNNSE, "short_cnn": ShortChunkCNN}

# counted from minzwon/sota-music-tagging-models training/model.py (+ modules.py) for 50 tags
EXPECTED_PARAMETERS = {
    "sample_cnn": 1_869_874,
    "sample_cnn_se": 6_951_858,
    "short_cnn": 3_687_348,
}

# 3^10 samples, Won et al.'s input_length for all three (3.69 s at 16 kHz)
N_SAMPLES = 59049


def waveforms(size: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(size, N_SAMPLES, generator=generator)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_matches_won_et_al(name):
    model = MODELS[name](n_classes=50)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_then_embed_is_the_penultimate_layer(name):
    # one model per test: the sample CNNs are the slow part of this file on a CPU
    torch.manual_seed(0)
    n_classes = 5
    model = MODELS[name](n_classes=n_classes)
    x = waveforms()

    logits = model(x)
    assert logits.shape == (2, n_classes)
    assert torch.isfinite(logits).all()
    target = torch.zeros(2, n_classes)
    target[:, 1] = 1.0
    nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    params = list(model.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    # the gradient reaches the first layer
    assert params[0].grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        features = model.embed(x)
        logits = model(x)
    assert features.shape == (2, 512)
    assert model.classifier.in_features == 512
    # in eval mode dropout is off, so the logits are the output layer applied to embed
    torch.testing.assert_close(model.classifier(features), logits)


@pytest.mark.parametrize(
    ("name", "n_samples", "minimum"),
    [
        ("sample_cnn", 59046, "59047"),
        ("sample_cnn_se", 16000, "59047"),
        ("short_cnn", 32511, "32512"),
    ],
)
def test_too_short_input_names_the_minimum(name, n_samples, minimum):
    with pytest.raises(MuzarrError, match=minimum):
        MODELS[name](n_classes=3, input_shape=(n_samples,))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_input_shape_needs_one_positive_axis(name):
    with pytest.raises(MuzarrError, match="n_samples"):
        MODELS[name](input_shape=(128, 231))


def test_short_cnn_needs_128_mels():
    with pytest.raises(MuzarrError, match="n_mels=64"):
        ShortChunkCNN(n_mels=64)


@pytest.mark.parametrize("name", ["sample_cnn", "short_cnn"])
def test_minimum_input_runs(name):
    minimum = {"sample_cnn": 59047, "short_cnn": 32512}[name]
    model = MODELS[name](n_classes=3, input_shape=(minimum,)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, minimum)).shape == (1, 3)
