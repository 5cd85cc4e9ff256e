"""FCN, Musicnn and WonCRNN: Won et al.'s layers, a training step, embed, and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.crnn_won import WonCRNN
from training.models.fcn import FCN
from training.models.musicnn import Musicnn

MODELS = {"fcn": FCN, "musicnn": Musicnn, "crnn_won": WonCRNN}

# Trainable parameters for 50 tags on the default input, counted from
# minzwon/sota-music-tagging-models training/model.py + training/modules.py (FCN, Musicnn with
# dataset='mtat', CRNN); their torchaudio front ends have none.
WON_PARAMETERS = {"fcn": 447_732, "musicnn": 784_300, "crnn_won": 394_100}

# Shortest inputs the layers allow, or short enough: FCN has no global pooling and needs
# 1,280 frames (20.5 s); Musicnn keeps the time axis; the CRNN needs 96 frames.
SMALL_SHAPES = {"fcn": (327424,), "musicnn": (16000,), "crnn_won": (48000,)}


def waveform(shape: tuple[int, ...], size: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(size, *shape, generator=generator)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_matches_won(name):
    model = MODELS[name](n_classes=50)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == WON_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_step_gives_logits_and_reaches_the_first_layer(name):
    torch.manual_seed(0)
    n_classes = 5
    model = MODELS[name](n_classes=n_classes, input_shape=SMALL_SHAPES[name])
    logits = model(waveform(SMALL_SHAPES[name]))
    assert logits.shape == (2, n_classes)
    assert torch.isfinite(logits).all()

    target = torch.zeros(2, n_classes)
    target[:, 1] = 1.0
    nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    first_conv = next(m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)))
    assert model.spec_bn.weight.grad.abs().sum() > 0
    assert first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_embed_is_the_penultimate_layer(name):
    torch.manual_seed(0)
    model = MODELS[name](n_classes=7, input_shape=SMALL_SHAPES[name]).eval()
    x = waveform(SMALL_SHAPES[name], size=1)
    with torch.no_grad():
        features = model.embed(x)
        logits = model(x)
    assert isinstance(model.classifier, nn.Linear)
    assert features.shape == (1, model.classifier.in_features)
    # in eval mode dropout is off, so the logits are the output layer applied to embed
    torch.testing.assert_close(model.classifier(features), logits)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("input_shape", [(96, 1813), (0,), (-16000,), (48000.0,), (True,), (100,)])
def test_malformed_input_shape_is_a_muzarr_error(name, input_shape):
    with pytest.raises(MuzarrError, match=r"input_shape"):
        MODELS[name](input_shape=input_shape)


def test_fcn_needs_its_pools_to_leave_one_step():
    with pytest.raises(MuzarrError, match=r"input_shape=\(48000,\) is too small"):
        FCN(input_shape=(48000,))
    with pytest.raises(MuzarrError, match=r"no global pooling.*n_samples in 327424\.\.655103"):
        FCN(input_shape=(655104,))
    assert FCN(input_shape=(655103,)).classifier.in_features == 64


def test_crnn_won_needs_96_frames():
    with pytest.raises(MuzarrError, match=r"input_shape=\(24000,\) is too small"):
        WonCRNN(input_shape=(24000,))
    assert WonCRNN(input_shape=(24320,)).rnn.input_size == 128


def test_musicnn_timbral_kernels_must_fit_the_mels():
    with pytest.raises(MuzarrError, match=r"timbral_kernels \[\(67, 7\)\] are taller than n_mels=64"):
        Musicnn(n_mels=64)
    assert Musicnn(n_mels=64, timbral_kernels=((44, 7), (25, 7))).classifier.in_features == 200
