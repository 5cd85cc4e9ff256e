"""The model registry: every model builds, trains one step, and has the published size."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models import (
    MODELS,
    InputSpec,
    build_model,
    count_parameters,
    get_model,
    model_options,
)
from training.models.blocks import output_shape
from training.run.protocol import Protocol

# Small per-example shapes that keep a forward+backward of every model well under a second.
SMALL_SHAPES = {
    "mlp": (64, 94),
    "cnn": (64, 94),
    "dieleman": (16000,),
    "crnn": (96, 262),
    "cnn1d_gru": (128, 96),
    "cnn1d_lstm": (128, 96),
    "cnn2d_gru": (128, 96),
    "cnn2d_lstm": (128, 96),
    "resnet18": (32, 64),
    "cnn5": (128, 96),
    "mlp_tabular": (57,),
    "short_res": (4096,),
    # Won et al.'s zoo at the shortest input each architecture accepts
    "fcn": (327424,),
    "musicnn": (16000,),
    "sample_cnn": (59049,),
    "sample_cnn_se": (59049,),
    "crnn_won": (48000,),
    "harmonic_cnn": (73472,),
    "short_cnn": (32512,),
    "cnn_sa": (16000,),
}

# Parameters for 50 classes on each model's default example (whole-clip inputs: 29.12 s for
# the CRNN as in Choi et al., 30 s otherwise). mlp, cnn: seed 000's table. crnn: the Keras
# original's 396,786 trainable, minus its per-time-frame input BatchNorm (2 x 1440), plus a
# per-mel-band one (2 x 96); its default Keras-1 GRU keeps one bias per gate, as Keras does.
# resnet18: torchvision's 11,689,512 with a 1-channel 7x7 stem (-64*49*2) and a 50-way fc
# (-513,000 + 25,650). short_res: the same modules as Won et al.'s ShortChunkCNN_Res.
EXPECTED_PARAMETERS = {
    "mlp": 14_770,
    "cnn": 2_989_810,
    "dieleman": 65_022,
    "crnn": 396_786 - 2 * 1440 + 2 * 96,
    "cnn1d_gru": 402_546,
    "cnn1d_lstm": 484_978,
    "cnn2d_gru": 789_618,
    "cnn2d_lstm": 970_354,
    "resnet18": 11_689_512 - 64 * 49 * 2 - 513_000 + 25_650,
    "cnn5": 2_726_754,
    "mlp_tabular": 103_090,
    "short_res": 12_104_244,
    # counted from minzwon/sota-music-tagging-models training/model.py + modules.py for 50 tags
    # (torchaudio front ends hold no trainable parameters); see ../shared/docs/anchors.md
    "fcn": 447_732,
    "musicnn": 784_300,
    "sample_cnn": 1_869_874,
    "sample_cnn_se": 6_951_858,
    "crnn_won": 394_100,
    "harmonic_cnn": 3_631_551,
    "short_cnn": 3_687_348,
    "cnn_sa": 10_521_652,
}


def default_shape(name: str) -> tuple[int, ...]:
    spec = MODELS[name].input
    if spec.kind == "tabular" or spec.seconds is not None:
        return spec.example_shape()
    return spec.example_shape(29.12 if name == "crnn" else 30.0)


def batch(shape: tuple[int, ...], size: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, *shape, generator=generator)


# Pretrained backbones build only with weights (or weights=random): see test_backbones.py.
PRETRAINED = {"resnet50", "wav2vec2"}


def test_registry_holds_every_seed_model():
    assert set(MODELS) == set(SMALL_SHAPES) | PRETRAINED
    for name, entry in MODELS.items():
        assert entry.doc and "\n" not in entry.doc, name
        assert entry.input.kind in ("logmel", "waveform", "tabular"), name
        assert isinstance(entry.protocol, Protocol), name


@pytest.mark.parametrize("name", sorted(SMALL_SHAPES))
def test_forward_backward_step(name):
    torch.manual_seed(0)
    n_classes = 5
    model = build_model(name, n_classes=n_classes, input_shape=SMALL_SHAPES[name])
    x = batch(SMALL_SHAPES[name])
    target = torch.zeros(3, n_classes)
    target[:, 1] = 1.0

    logits = model(x)
    assert logits.shape == (3, n_classes)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    params = list(model.parameters())
    # the first weight matrix or kernel: a BatchNorm on the input followed by conv + BatchNorm
    # (Won et al.'s spec_bn) is scale-invariant, so its own gradient can be exactly zero
    first_index = next(i for i, p in enumerate(params) if p.ndim >= 2)
    first, last = params[first_index].detach().clone(), params[-1].detach().clone()
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    optimizer.step()
    # the gradient reaches the first layer as well as the output layer
    assert not torch.equal(first, params[first_index])
    assert not torch.equal(last, params[-1])


@pytest.mark.parametrize("name", sorted(SMALL_SHAPES))
def test_embed_is_the_penultimate_layer(name):
    torch.manual_seed(0)
    model = build_model(name, n_classes=7, input_shape=SMALL_SHAPES[name]).eval()
    x = batch(SMALL_SHAPES[name], size=2)
    with torch.no_grad():
        features = model.embed(x)
        logits = model(x)
    assert features.ndim == 2 and features.shape[0] == 2 and features.shape[1] > 7
    assert model.classifier.in_features == features.shape[1]
    # in eval mode dropout is off, so the logits are the output layer applied to embed
    torch.testing.assert_close(model.classifier(features), logits)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_count_on_default_input(name):
    model = build_model(name, n_classes=50, input_shape=default_shape(name))
    assert count_parameters(model) == EXPECTED_PARAMETERS[name]


def test_seed000_counts_match_the_report():
    assert count_parameters(build_model("mlp", n_classes=50, input_shape=(64, 94))) == 14_770
    assert count_parameters(build_model("cnn", n_classes=50, input_shape=(64, 94))) == 2_989_810


def test_count_parameters_skips_frozen_and_buffers():
    model = build_model("mlp", n_classes=50, input_shape=(64, 94))
    for p in model.hidden.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == 128 * 50 + 50
    # BatchNorm running statistics are buffers, not parameters
    bn = nn.BatchNorm1d(10)
    assert count_parameters(bn) == 20


def test_default_example_shapes():
    assert MODELS["mlp"].input.example_shape() == (64, 94)
    assert MODELS["crnn"].input.example_shape(29.12) == (96, 1440)
    assert MODELS["short_res"].input.example_shape() == (59049,)
    assert MODELS["mlp_tabular"].input.example_shape() == (57,)
    with pytest.raises(MuzarrError, match="whole clips"):
        MODELS["crnn"].input.example_shape()


def test_build_hints():
    assert MODELS["crnn"].input.build_hint() == (
        "--logmel n_mels=96,sample_rate=12000,n_fft=512,hop_length=256,pad_frames=37"
    )
    assert MODELS["cnn"].input.build_hint() == (
        "--logmel n_mels=64,sample_rate=16000,n_fft=1024,hop_length=512,pad_frames=0"
    )
    assert MODELS["short_res"].input.build_hint() == "--waveform sample_rate=16000"
    assert MODELS["dieleman"].input.build_hint() == "--waveform sample_rate=16000"
    assert MODELS["mlp_tabular"].input.build_hint() == "--tabular gtzan57"


def test_input_spec_rejects_incomplete_specs():
    with pytest.raises(MuzarrError, match="needs"):
        InputSpec("logmel", sample_rate=16000)
    with pytest.raises(MuzarrError, match="kind"):
        InputSpec("mfcc")


def test_crnn_keeps_steps_for_short_and_full_clips():
    model = build_model("crnn", n_classes=50, input_shape=(96, 1440)).eval()
    # 29.12 s at 12 kHz padded by 37 frames each side: 15 steps of 128 features (Choi et al.)
    assert output_shape(model.features, (1, 96, 1440), model="crnn") == (128, 1, 15)
    # 4 s: 188 frames + 74 padding; ceil pooling leaves 3 steps instead of failing
    assert output_shape(model.features, (1, 96, 262), model="crnn") == (128, 1, 3)
    assert output_shape(model.features, (1, 96, 10), model="crnn") == (128, 1, 1)
    with torch.no_grad():
        full = model(batch((96, 1440), size=1))
    assert full.shape == (1, 50) and torch.isfinite(full).all()

    short_model = build_model("crnn", n_classes=50, input_shape=(96, 262))
    assert count_parameters(short_model) == count_parameters(model)  # length-independent
    logits = short_model(batch((96, 262), size=2))
    assert logits.shape == (2, 50) and torch.isfinite(logits).all()


def test_dieleman_filter_length_and_stride_are_options():
    model = build_model("dieleman", n_classes=50, input_shape=(46400,), filter_length=1024, stride=512)
    conv = model.frontend[0]
    assert conv.kernel_size == (1024,) and conv.stride == (512,)
    # (46400 - 1024) // 512 + 1 = 89 frames -> 22 -> 5 after two max-pools of 4
    assert model.hidden[1].in_features == 32 * 5
    assert model(batch((46400,), size=2)).shape == (2, 50)


def test_short_res_mel_settings_are_options():
    model = build_model("short_res", n_classes=50, input_shape=(16000,), n_mels=96, hop_length=512)
    assert model.spec.n_mels == 96 and model.spec.hop_length == 512
    assert tuple(model.spec.mel_filters.shape) == (96, 257)
    assert model.eval()(batch((16000,), size=2)).shape == (2, 50)


def test_tabular_mlp_normalises_each_example():
    model = build_model("mlp_tabular", n_classes=10, input_shape=(57,)).eval()
    x = batch((57,), size=4).abs() + 0.1
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x * 1000.0))
    narrow = build_model("mlp_tabular", n_classes=10, input_shape=(57,), hidden=(64,), dropout=0.1)
    assert count_parameters(narrow) == 57 * 64 + 64 + 2 * 64 + 64 * 10 + 10


def test_models_accept_numpy_integer_shapes():
    shape = tuple(np.array([64, 94], dtype=np.int64))
    assert count_parameters(build_model("cnn", n_classes=50, input_shape=shape)) == 2_989_810


def test_unknown_model_lists_known_names():
    with pytest.raises(MuzarrError, match=r"unknown model 'vgg'.*crnn.*short_res"):
        get_model("vgg")
    with pytest.raises(MuzarrError, match="known models"):
        build_model("vgg", n_classes=50, input_shape=(64, 94))


def test_unknown_option_lists_valid_ones():
    with pytest.raises(MuzarrError, match=r"unknown option\(s\) \['filter_len'\].*filter_length=256.*stride=256"):
        build_model("dieleman", n_classes=50, input_shape=(46400,), filter_len=512)


def test_registry_fixed_options_cannot_be_overridden():
    assert "conv" not in model_options("cnn1d_gru") and "cell" not in model_options("cnn1d_gru")
    assert model_options("cnn1d_gru")["hidden_size"] == 128
    with pytest.raises(MuzarrError, match="hidden_size"):
        build_model("cnn1d_gru", n_classes=16, input_shape=(128, 96), conv="2d")


@pytest.mark.parametrize(
    ("name", "shape"),
    [("crnn", (96,)), ("dieleman", (96, 100)), ("mlp_tabular", (0,)), ("cnn", (64.5, 94))],
)
def test_bad_input_shape_is_a_muzarr_error(name, shape):
    with pytest.raises(MuzarrError, match="input_shape"):
        build_model(name, n_classes=50, input_shape=shape)


def test_input_too_small_for_the_layers_is_a_muzarr_error():
    with pytest.raises(MuzarrError, match=r"input_shape=\(100,\) is too small"):
        build_model("dieleman", n_classes=50, input_shape=(100,))


@pytest.mark.parametrize("n_classes", [0, 2.5, True])
def test_bad_n_classes_is_a_muzarr_error(n_classes):
    with pytest.raises(MuzarrError, match="n_classes"):
        build_model("mlp", n_classes=n_classes, input_shape=(64, 94))


def _bad_hyperparameters() -> list[tuple[str, str, object]]:
    """Every size (a positive int, or a list of them) and dropout option of every model, made impossible."""
    cases = []
    for name in SMALL_SHAPES:
        for option, default in model_options(name).items():
            if isinstance(default, int) and not isinstance(default, bool) and default > 0:
                cases.append((name, option, -3))
            elif isinstance(default, tuple) and default and all(isinstance(v, (int, tuple)) for v in default):
                first = default[0]
                cases.append((name, option, ((0, *first[1:]) if isinstance(first, tuple) else 0, *default[1:])))
            elif "dropout" in option:
                cases.append((name, option, 1.5))
    return cases


@pytest.mark.parametrize(("name", "option", "value"), _bad_hyperparameters())
def test_an_impossible_hyperparameter_is_one_error_naming_the_option(name, option, value):
    """Issue #21 item 8: --model-opt hidden=-3 ended in torch's RuntimeError (negative dimension)."""
    with pytest.raises(MuzarrError, match=rf"^model '{name}': {option}={re.escape(repr(value))} must be "):
        build_model(name, n_classes=5, input_shape=SMALL_SHAPES[name], **{option: value})


def test_what_a_model_lets_through_fails_naming_its_options():
    # a kernel of one number where the layer unpacks (height, width)
    with pytest.raises(MuzarrError, match=r"^model 'musicnn' cannot be built with timbral_kernels=\(\(67,\),\) for input "
                                          r"\(16000,\): ValueError: not enough values to unpack"):
        build_model("musicnn", n_classes=5, input_shape=SMALL_SHAPES["musicnn"], timbral_kernels=((67,),))
    with pytest.raises(MuzarrError, match=r"^model 'short_res' cannot be built with norm='xyz' .*ParameterError"):
        build_model("short_res", n_classes=5, input_shape=SMALL_SHAPES["short_res"], norm="xyz")
