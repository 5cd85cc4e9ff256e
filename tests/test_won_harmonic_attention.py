"""Won et al.'s Harmonic CNN and CNN + self-attention: published sizes, the harmonic filters, shapes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import MuzarrError
from training.models import count_parameters
from training.models.cnn_sa import CNNSA
from training.models.harmonic_cnn import HarmonicCNN, HarmonicSTFT

# Counted from minzwon/sota-music-tagging-models training/model.py + modules.py for 50 tags
# (HarmonicCNN: its learnable bandwidth bw_Q is one of them; CNNSA: attention_modules.py's
# BertEncoder and BertPooler, the [CLS] vector is not a parameter).
EXPECTED_PARAMETERS = {HarmonicCNN: 3_631_551, CNNSA: 10_521_652}

# Shortest inputs the architectures take: the Harmonic CNN's pools need 288 frames (hop 256);
# the CNN + self-attention takes any length (1 s gives 8 tokens).
SHORT_INPUT = {HarmonicCNN: (287 * 256,), CNNSA: (16000,)}

SAMPLE_RATE = 16000


def waveforms(shape: tuple[int, ...], size: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(size, *shape, generator=torch.Generator().manual_seed(seed))


def tone(frequency: float, seconds: float = 1.0) -> torch.Tensor:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return torch.tensor(0.5 * np.sin(2 * np.pi * frequency * t), dtype=torch.float32)


@pytest.mark.parametrize("model_class", [HarmonicCNN, CNNSA])
def test_parameter_count_matches_won_et_al(model_class):
    assert count_parameters(model_class(n_classes=50)) == EXPECTED_PARAMETERS[model_class]


def test_front_ends_have_wons_shapes():
    assert HarmonicCNN().hstft.n_pitches == 128  # C1 up to E6 in half semitones
    # 63 frames in 1 s, halved three times: 8 tokens after [CLS] (118 for Won's 15 s)
    assert CNNSA(input_shape=(16000,)).tokens(torch.zeros(1, 16000)).shape == (1, 1 + 8, 256)


@pytest.mark.parametrize("frequency", [440.0, 1000.0])
def test_harmonic_filters_peak_at_the_tone_in_every_harmonic(frequency):
    front = HarmonicSTFT(sample_rate=SAMPLE_RATE)
    with torch.no_grad():
        energy = front(tone(frequency)).mean(dim=-1)  # (n_harmonic, n_pitches)
    pitches = front.f0[: front.n_pitches]
    assert torch.allclose(front.f0[front.n_pitches : 2 * front.n_pitches], 2 * pitches)
    for h in range(front.n_harmonic):
        # the h-th harmonic of the pitch nearest frequency / (h + 1) is the tone itself
        expected = int((pitches - frequency / (h + 1)).abs().argmin())
        assert int(energy[h].argmax()) == expected, f"harmonic {h + 1}"
    # a peak, not a plateau: tens of dB above the typical channel of the first harmonic
    assert energy[0].max() - energy[0].median() > 20.0


def test_harmonic_filters_are_triangles_of_erb_width_over_q():
    front = HarmonicSTFT(sample_rate=SAMPLE_RATE, bw_Q=2.0)
    filters = front.filterbank().detach()  # (n_bins, n_filters)
    assert filters.shape == (257, 6 * 128)
    assert filters.min() >= 0 and filters.max() <= 1
    i = int((front.f0 - 1000.0).abs().argmin())  # 1000 Hz is an FFT bin (31.25 Hz apart)
    half_width = (0.1079 * front.f0[i] + 24.7) / 2.0 / 2.0
    hz = front.fft_hz
    assert filters[:, i].argmax() == int((hz - front.f0[i]).abs().argmin())
    assert (filters[(hz - front.f0[i]).abs() >= half_width, i] == 0).all()


def test_bandwidth_learns_unless_fixed():
    front = HarmonicSTFT(sample_rate=SAMPLE_RATE)
    front(waveforms((4096,), size=1)).mean().backward()
    assert front.bw_Q.grad is not None and torch.isfinite(front.bw_Q.grad).all() and front.bw_Q.grad.abs() > 0
    fixed = HarmonicCNN(learn_bw=False)
    assert not fixed.hstft.bw_Q.requires_grad
    assert count_parameters(fixed) == EXPECTED_PARAMETERS[HarmonicCNN] - 1


@pytest.mark.parametrize("model_class", [HarmonicCNN, CNNSA])
def test_forward_backward_gives_finite_logits(model_class):
    shape = SHORT_INPUT[model_class]
    model = model_class(n_classes=7, input_shape=shape)
    logits = model(waveforms(shape))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if model_class is HarmonicCNN:
        assert model.hstft.bw_Q.grad.abs() > 0


@pytest.mark.parametrize("model_class", [HarmonicCNN, CNNSA])
def test_embed_is_the_penultimate_layer(model_class):
    shape = SHORT_INPUT[model_class]
    model = model_class(n_classes=5, input_shape=shape).eval()
    x = waveforms(shape, seed=1)
    with torch.no_grad():
        embedding = model.embed(x)
        assert embedding.shape == (2, model.classifier.in_features)
        torch.testing.assert_close(model.classifier(embedding), model(x))


def test_cls_token_is_wons_fixed_vector_for_any_batch_size():
    model = CNNSA(input_shape=(1024,)).eval()
    np.random.seed(0)  # what the original does in get_cls
    expected = np.random.random((1, 256)).astype(np.float32)[0]
    np.testing.assert_array_equal(model.cls_token.numpy(), expected)
    assert "cls_token" not in dict(model.named_parameters())
    with torch.no_grad():
        assert model(waveforms((1024,), size=65)).shape == (65, 50)  # the original stops at 64


@pytest.mark.parametrize("model_class", [HarmonicCNN, CNNSA])
@pytest.mark.parametrize("input_shape", [(), (80000, 1), (0,), (-8,), (1.5,), (True,)])
def test_bad_input_shape_raises(model_class, input_shape):
    with pytest.raises(MuzarrError, match="expects input_shape"):
        model_class(input_shape=input_shape)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: HarmonicCNN(input_shape=(16000,)), "n_samples >= 73472"),
        (lambda: HarmonicCNN(semitone_scale=1), "64 pitches"),
        (lambda: HarmonicCNN(n_harmonic=0), "n_harmonic=0"),
        (lambda: HarmonicCNN(bw_Q=0.0), "bw_Q=0.0"),
        (lambda: CNNSA(input_shape=(200,)), "too short"),
        (lambda: CNNSA(n_mels=256), "n_mels=256"),
        (lambda: CNNSA(n_heads=7), "n_heads=7"),
    ],
)
def test_bad_settings_raise(build, match):
    with pytest.raises(MuzarrError, match=match):
        build()
