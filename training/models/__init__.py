"""The model registry: every model muzarr can train, its input and its training protocol.

``MODELS`` maps a name to a :class:`ModelEntry`; :func:`build_model` builds one for a store's
per-example ``input_shape`` and number of classes. Every model's ``forward`` takes a float32
batch ``(B, *input_shape)`` and returns logits ``(B, n_classes)`` (the loss, BCE-with-logits
or cross-entropy, is the training loop's choice), and ``embed`` returns the penultimate
representation ``(B, D)``.

``ModelEntry.protocol`` is the paper's or seed report's training protocol, a typed
:class:`training.protocol.Protocol`: a misspelt setting fails at import, naming the entry.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from pipeline.errors import MuzarrError
from pipeline.suggest import did_you_mean
from training.data.augment import Augment
from training.data.spec import InputSpec
from training.models.cnn5 import FiveLayerCNN
from training.models.cnn_sa import CNNSA
from training.models.crnn import ChoiCRNN
from training.models.crnn_won import WonCRNN
from training.models.dieleman import DielemanCNN
from training.models.fcn import FCN
from training.models.frontend import WaveformMelModel
from training.models.harmonic_cnn import HarmonicCNN
from training.models.musicnn import Musicnn
from training.models.pretrained import ResNet50, Wav2Vec2Classifier
from training.models.resnet import ResNet18
from training.models.rnn import ConvRecurrentClassifier
from training.models.sample_cnn import SampleCNN, SampleCNNSE
from training.models.seed000 import MelCNN, MelMeanMLP
from training.models.short_cnn import ShortChunkCNN
from training.models.short_res import ShortChunkResNet
from training.models.tabular import TabularMLP
from training.run.protocol import Phase, Phases, Plateau, Protocol

__all__ = [
    "MODELS",
    "WON2020",
    "ModelEntry",
    "build_model",
    "count_parameters",
    "get_model",
    "model_options",
]

@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Parameters
    ----------
    build : callable
        ``build(n_classes=..., input_shape=(...), **model_opts) -> nn.Module``.
    input : InputSpec
        The store array it reads and the example length.
    protocol : Protocol
        How its paper or seed report trains and evaluates it (typed: see
        :mod:`training.run.protocol`).
    doc : str
        One line.
    """

    build: Callable[..., nn.Module]
    input: InputSpec
    protocol: Protocol
    doc: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.protocol, Protocol):
            raise MuzarrError(f"model entry {self.doc!r}: protocol must be a training.protocol.Protocol")


_MEL64_3S = InputSpec("logmel", sample_rate=16000, n_mels=64, n_fft=1024, hop_length=512, seconds=3.0)
_MEL128_22K = InputSpec("logmel", sample_rate=22050, n_mels=128, n_fft=2048, hop_length=512)

#: seed 000: Adam, 10 epochs, on the 7000/1500/1500 random subset of MTAT
_SEED000 = Protocol.make("seed 000", optimizer="adam", lr=1e-3, epochs=10, batch_size=32, split_scheme="random")

#: seed 002's sweep: batch {16..128}, lr {1e-4..1e-3}, hidden {64,128,256}, dropout {0.2..0.5},
#: layers {1,2}, 30 epochs, plateau factor {0.5,0.7}, early stopping; it reports no winner, so
#: mid values. It names data augmentation without details: SpecAugment's two time and two
#: frequency masks (Park et al. 2019), the usual choice for log-mel inputs.
_SEED002 = Protocol.make(
    "seed 002", optimizer="adam", lr=3e-4, weight_decay=1e-4, epochs=30, batch_size=32,
    schedule=Plateau(factor=0.5, patience=3), monitor="loss", early_stopping=7,
    augment=Augment(time_masks=2, time_mask_width=0.1, freq_masks=2, freq_mask_width=8),
)  # fmt: skip

#: Won et al. 2020, ``training/solver.py`` + ``main.py`` + ``eval.py`` of
#: minzwon/sota-music-tagging-models: Adam 1e-4 (wd 1e-4), batch 16, 200 epochs; after 80
#: epochs reload the best model and switch to SGD (1e-3, Nesterov, momentum 0.9, wd 1e-4);
#: after 20 more reload and set lr 1e-4, after 20 more reload and set 1e-5 (same SGD state);
#: the best model by validation loss; 16 evaluation chunks at ``i * ((len - input) // 16)``,
#: sigmoid outputs averaged; split "clean"; training crops drawn in the first 29 s
#: (``data_loader/mtat_loader.py``); fp32.
WON2020 = Protocol.make(
    "won2020", optimizer="adam", lr=1e-4, weight_decay=1e-4, epochs=200, batch_size=16,
    schedule=Phases((
        Phase(epochs=80),
        Phase(epochs=20, optimizer="sgd", lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4, reload_best=True),
        Phase(epochs=20, lr=1e-4, reload_best=True),
        Phase(epochs=None, lr=1e-5, reload_best=True),
    )),
    monitor="loss", eval_crops=16, eval_placement="won", split_scheme="clean", train_crop_seconds=29.0,
)  # fmt: skip


def _seed002(conv: str, cell: str, doc: str) -> ModelEntry:
    """One of seed 002's four CNN + RNN variants, on the whole clip's 128-band log-mel."""
    return ModelEntry(functools.partial(ConvRecurrentClassifier, conv=conv, cell=cell), _MEL128_22K, _SEED002, doc)


def _won(build: Callable[..., nn.Module], n_samples: int, doc: str) -> ModelEntry:
    """A model of Won et al.'s zoo: ``n_samples`` of 16 kHz waveform (his ``main.py``), his protocol."""
    return ModelEntry(build, InputSpec("waveform", sample_rate=16000, seconds=n_samples / 16000), WON2020, doc)


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(
        build=MelMeanMLP,
        input=_MEL64_3S,
        protocol=_SEED000,
        doc="Seed 000 MLP on the time-averaged 64-band log-mel (14,770 parameters for 50 tags).",
    ),
    "cnn": ModelEntry(
        build=MelCNN,
        input=_MEL64_3S,
        protocol=_SEED000,
        doc="Seed 000 three-block CNN on a 3 s 64-band log-mel (2,989,810 parameters for 50 tags).",
    ),
    "dieleman": ModelEntry(
        build=DielemanCNN,
        input=InputSpec("waveform", sample_rate=16000, seconds=2.912),
        # seed 001: SGD (best of its grid: momentum 0.99, lr 0.005), each clip's 10 stored
        # sub-clips, batches of 10 clips x 10 sub-clips, a clip's score the mean of its sub-clips'
        protocol=Protocol.make(
            "dieleman", optimizer="sgd", lr=0.005, momentum=0.99, epochs=20, batch_size=100,
            sub_clips=10, group_subclips=True, split_scheme="dieleman",
        ),
        doc="Dieleman & Schrauwen 2014 raw-waveform CNN, strided first layer, on 10 sub-clips per clip (seed 001).",
    ),
    "crnn": ModelEntry(
        build=ChoiCRNN,
        input=InputSpec("logmel", sample_rate=12000, n_mels=96, n_fft=512, hop_length=256, pad_frames=37),
        protocol=Protocol.make("crnn", optimizer="adam", lr=1e-4, epochs=20, batch_size=32, split_scheme="dieleman"),
        doc="Choi et al. 2017 CRNN on the whole clip's 96-band log-mel at 12 kHz, Keras-1 GRU (seed 001).",
    ),
    "cnn1d_gru": _seed002("1d", "gru", "Seed 002 CNN-1D (mel bands as channels) + GRU + global average pooling."),
    "cnn1d_lstm": _seed002("1d", "lstm", "Seed 002 CNN-1D (mel bands as channels) + LSTM + global average pooling."),
    "cnn2d_gru": _seed002("2d", "gru", "Seed 002 CNN-2D + GRU + global average pooling (its best: 71.4 % on FMA)."),
    "cnn2d_lstm": _seed002("2d", "lstm", "Seed 002 CNN-2D + LSTM + global average pooling."),
    "resnet18": ModelEntry(
        build=ResNet18,
        input=_MEL128_22K,
        # seed 003: RMSprop scored best on Kaggle (0.79 vs Adam's 0.76), both at lr 1e-5
        protocol=Protocol.make("resnet18", optimizer="rmsprop", lr=1e-5, weight_decay=1e-6, momentum=0.0, epochs=30, batch_size=32),
        doc="ResNet-18 (64/128/256/512, basic blocks) on a one-channel log-mel (seed 003).",
    ),
    "cnn5": ModelEntry(
        build=FiveLayerCNN,
        input=_MEL128_22K,
        protocol=Protocol.make("cnn5", optimizer="adam", lr=1e-4, weight_decay=1e-5, epochs=30, batch_size=16),
        doc="Seed 004 five-block CNN (8/16/32/64/128) on the whole clip's log-mel.",
    ),
    "mlp_tabular": ModelEntry(
        build=TabularMLP,
        input=InputSpec("tabular", tabular_set="gtzan57"),
        protocol=Protocol.make("mlp_tabular", optimizer="adam", lr=1e-4, weight_decay=1e-5, epochs=500, batch_size=16),
        doc="Seed 004 MLP 512-128 with BatchNorm and dropout on L2-normalised tabular features "
        "(any per-clip vector with --input tabular/SET or embedding/VARIANT[,layer=N]).",
    ),
    "short_res": _won(
        ShortChunkResNet, 59049,
        "Won et al. 2020 short-chunk ResNet, mel front end inside the model (best MTAT tagger).",
    ),
    # -- the rest of Won et al. 2020's zoo: his input lengths (main.py), his protocol --------
    "fcn": _won(
        FCN, 29 * 16000,
        "Choi et al. 2016 fully convolutional tagger (Won et al.'s PyTorch FCN), 96-mel front end in the model, 29 s.",
    ),
    "musicnn": _won(
        Musicnn, 3 * 16000,
        "Pons et al. 2018 musicnn (Won et al.'s PyTorch version, MTAT sizes): timbral/temporal front end, 3 s chunks.",
    ),
    "sample_cnn": _won(
        SampleCNN, 59049,
        "Lee et al. 2017 sample-level CNN (3^9 model) on 59,049 raw samples.",
    ),
    "sample_cnn_se": _won(
        SampleCNNSE, 59049,
        "Kim et al. 2018 sample-level CNN with residual squeeze-and-excitation blocks, 59,049 raw samples.",
    ),
    "crnn_won": _won(
        WonCRNN, 29 * 16000,
        "Won et al.'s PyTorch CRNN after Choi et al. 2017 (ReLU, 16 kHz, 2 x GRU(32)), mel front end in the model, 29 s.",
    ),
    "harmonic_cnn": _won(
        HarmonicCNN, 5 * 16000,
        "Won et al. 2020 Harmonic CNN: learnable harmonic filters (bw_Q) on the STFT, 5 s chunks.",
    ),
    "short_cnn": _won(
        ShortChunkCNN, 59049,
        "Won et al. 2020 short-chunk CNN (seven 3x3 conv blocks), 128-mel front end in the model, 3.69 s chunks.",
    ),
    "cnn_sa": _won(
        CNNSA, 15 * 16000,
        "Won et al. 2019 CNN + self-attention: residual CNN on a 128-band mel, 2-layer BERT encoder, 15 s chunks.",
    ),
    "resnet50": ModelEntry(
        build=ResNet50,
        input=_MEL128_22K,
        # seed 003 names SGD for its ResNet-50 transfer learning and nothing else: the rest
        # is the usual fine-tuning recipe (lr 1e-3, momentum 0.9) and its ResNet-18's epochs
        protocol=Protocol.make("resnet50", optimizer="sgd", lr=1e-3, momentum=0.9, epochs=30, batch_size=32),
        doc="Seed 003 ResNet-50 transfer learning from local torchvision weights (--model-opt weights=FILE).",
    ),
    "wav2vec2": ModelEntry(
        build=Wav2Vec2Classifier,
        input=InputSpec("waveform", sample_rate=16000),
        # seed 004: Adam lr 5e-5, weight decay 1e-5, batch 8; it gives no epoch count (20 here)
        protocol=Protocol.make("wav2vec2", optimizer="adam", lr=5e-5, weight_decay=1e-5, epochs=20, batch_size=8),
        doc="Seed 004 wav2vec2-base fine-tuned on 16 kHz waveforms, mean-pooled, 768-unit head (--model-opt weights=DIR).",
    ),
}


def get_model(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name raises :class:`MuzarrError` listing the known ones."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(MODELS))
        raise MuzarrError(f"unknown model {name!r}{did_you_mean(str(name), MODELS, quote=True)}; known models: {known}") from None


def model_options(name: str) -> dict[str, Any]:
    """The options ``build_model(name, ...)`` accepts, with their defaults."""
    build = get_model(name).build
    fixed = set(build.keywords) if isinstance(build, functools.partial) else set()
    # a waveform model's ``**mel`` takes its front end's settings, named like the fields
    mel = build.mel_defaults.options() if isinstance(build, type) and issubclass(build, WaveformMelModel) else {}
    return mel | {
        param.name: param.default
        for param in inspect.signature(build).parameters.values()
        if param.name not in {"n_classes", "input_shape", *fixed}
        and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    }


def build_model(name: str, *, n_classes: int, input_shape: Sequence[int], **opts: Any) -> nn.Module:
    """Build model ``name`` for ``n_classes`` outputs and per-example ``input_shape`` (no batch axis).

    ``input_shape`` is ``(n_mels, n_frames)`` for log-mel models, ``(n_samples,)`` for waveform
    models and ``(n_features,)`` for tabular ones. ``opts`` override the model's hyper-parameters;
    an unknown option raises :class:`MuzarrError` listing the valid ones.
    """
    entry = get_model(name)
    valid = model_options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        listing = ", ".join(f"{key}={value!r}" for key, value in valid.items())
        raise MuzarrError(f"unknown option(s) {unknown} for model {name!r}{did_you_mean(unknown, valid, quote=True)}; valid options: {listing}")
    try:
        count = operator.index(n_classes)  # numpy ints pass, 50.0 does not
    except TypeError:
        count = 0
    if count < 1 or isinstance(n_classes, bool):
        raise MuzarrError(f"n_classes={n_classes!r} must be a positive integer")
    try:
        shape = tuple(operator.index(n) for n in input_shape)
    except TypeError:
        raise MuzarrError(f"input_shape={input_shape!r} must be a sequence of integers (no batch axis)") from None
    try:
        return entry.build(n_classes=count, input_shape=shape, **opts)
    except MuzarrError:
        raise
    except Exception as err:  # noqa: BLE001 - what the model's own checks let through (torch, librosa): one line
        # said with the options that led to it, never a traceback from deep inside a layer
        given = ", ".join(f"{key}={value!r}" for key, value in opts.items()) or "its default options"
        reason = str(err).splitlines()[0] if str(err) else ""
        raise MuzarrError(
            f"model {name!r} cannot be built with {given} for input {shape}: {type(err).__name__}: {reason}"
        ) from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (PyTorch counting: BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
