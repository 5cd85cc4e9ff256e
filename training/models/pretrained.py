"""Pretrained backbones: ResNet-50 transfer learning (seed 003) and wav2vec 2.0 fine-tuning (seed 004).

Nothing is downloaded at run time. Weights come from a local file or folder given as
``--model-opt weights=PATH``; ``weights=random`` builds an untrained model (with
``config=tiny`` for a few-thousand-parameter one in tests). ``transformers`` is needed for
wav2vec2 only (``pip install muzarr[pretrained]``) and imported when one is built.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import check_hyperparameters, check_input_shape, init_like_torchvision

__all__ = ["Bottleneck", "ResNet50", "Wav2Vec2Classifier", "load_torchvision_state"]

#: ResNet-50 layouts: blocks per stage and the first stage's bottleneck width
RESNET_CONFIGS: dict[str, dict[str, Any]] = {
    "resnet50": {"layers": (3, 4, 6, 3), "width": 64},
    "tiny": {"layers": (1, 1, 1, 1), "width": 8},
}

RESNET_WEIGHTS_HELP = (
    "resnet50 needs local ImageNet weights: on a machine with internet run "
    "`torch.save(torchvision.models.resnet50(weights='IMAGENET1K_V2').state_dict(), 'resnet50.pth')`, "
    "copy the file here and pass --model-opt weights=resnet50.pth (or weights=random for an untrained ResNet-50)"
)
WAV2VEC2_WEIGHTS_HELP = (
    "wav2vec2 needs local weights: on a machine with internet run "
    "`transformers.Wav2Vec2Model.from_pretrained('facebook/wav2vec2-base').save_pretrained('wav2vec2-base')`, "
    "copy that folder here and pass --model-opt weights=wav2vec2-base (or weights=random for an untrained model)"
)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (torchvision's): 1×1 → 3×3 (stride here) → 1×1 ×4, BatchNorm after each, ReLU.

    Attribute names follow ``torchvision.models.resnet.Bottleneck`` so its state dicts load.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, *, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    """ResNet-50 (He et al., CVPR 2016; torchvision's v1.5 layout) on a log-mel spectrogram, for
    seed 003's transfer learning (Bastola, Subedi, Lozoya, CS 491/591: "a ResNet-50 ... pre-trained
    ... SGD").

    The spectrogram is one image channel. With ``in_channels=1`` the first convolution's
    ImageNet weights are summed over RGB, which computes exactly what the RGB network computes
    on the spectrogram replicated into three channels (``in_channels=3``), at a third of the
    cost. The ImageNet classifier is replaced by a fresh ``Linear(2048, n_classes)``.

    Parameters
    ----------
    n_classes : int
        Number of outputs (logits).
    input_shape : (n_mels, n_frames)
        Per-example log-mel shape; any size works.
    weights : str
        ``"random"`` (untrained) or a torchvision-format state dict file (``.pth``/``.pt``,
        read with ``torch.load(weights_only=True)``, or ``.safetensors``).
    config : {"resnet50", "tiny"} or None
        Layout: ``resnet50`` (default), or ``tiny`` (one block per stage, width 8) for tests.
    in_channels : {1, 3}
        Summed first convolution (1) or replicated input (3).

    Notes
    -----
    ``forward(x [shape=(B, n_mels, n_frames)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, 2048)]`` (the pooled features).
    """

    def __init__(
        self,
        n_classes: int = 10,
        input_shape: tuple[int, int] = (128, 1293),
        *,
        weights: str | None = None,
        config: str | None = None,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        check_input_shape(input_shape, axes=("n_mels", "n_frames"), model="resnet50")
        check_hyperparameters("resnet50", sizes={"in_channels": in_channels})
        if weights is None:
            raise MuzarrError(RESNET_WEIGHTS_HELP)
        if (config or "resnet50") not in RESNET_CONFIGS:
            raise MuzarrError(f"resnet50: config={config!r} must be one of {', '.join(RESNET_CONFIGS)}")
        if in_channels not in (1, 3):
            raise MuzarrError(f"resnet50: in_channels={in_channels!r} must be 1 (summed RGB filters) or 3 (replicated input)")
        layout = RESNET_CONFIGS[config or "resnet50"]
        width = layout["width"]
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = width
        for index, blocks in enumerate(layout["layers"]):
            stage_width = width * 2**index
            stride = 1 if index == 0 else 2
            layers = [Bottleneck(channels, stage_width, stride=stride)]
            channels = stage_width * Bottleneck.expansion
            layers += [Bottleneck(channels, stage_width) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, n_classes)
        init_like_torchvision(self)
        if weights != "random":
            load_torchvision_state(self, weights)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        image = x.unsqueeze(1)
        if self.in_channels == 3:
            image = image.expand(-1, 3, -1, -1)
        maps = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        maps = self.layer4(self.layer3(self.layer2(self.layer1(maps))))
        return self.avgpool(maps).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


def load_torchvision_state(model: ResNet50, path: str | Path) -> None:
    """Load a torchvision ResNet-50 state dict from ``path`` into ``model``, all but its classifier.

    ``.safetensors`` files are read with safetensors, anything else with
    ``torch.load(weights_only=True)`` (no code runs). RGB first-layer filters are summed for a
    one-channel model.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MuzarrError(f"resnet50: weights file {path} does not exist. {RESNET_WEIGHTS_HELP}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise MuzarrError(f"resnet50: reading {path.name} needs safetensors: pip install safetensors") from None
    except Exception as err:  # noqa: BLE001 - untrusted file: a pickle with code, a truncated file... never a traceback
        raise MuzarrError(f"resnet50: cannot read weights {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MuzarrError(f"resnet50: {path} is not a state dict of tensors (torchvision's model.state_dict())")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is new
    first = state.get("conv1.weight")
    if first is not None and first.ndim == 4 and first.shape[1] == 3 and model.in_channels == 1:
        state["conv1.weight"] = first.sum(dim=1, keepdim=True)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.startswith("fc."))
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys
        )
        raise MuzarrError(f"resnet50: {path} is not a torchvision ResNet-50 state dict for this config ({details})")
    model.load_state_dict(state, strict=False)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MuzarrError("wav2vec2 needs the transformers package: pip install muzarr[pretrained]") from None
    return transformers


#: a few-thousand-parameter wav2vec2 for tests (the same modules as wav2vec2-base, narrower)
TINY_WAV2VEC2 = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
    "conv_dim": (32, 32, 32), "conv_kernel": (10, 8, 4), "conv_stride": (5, 4, 4),
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
}  # fmt: skip


@contextlib.contextmanager
def _quiet_transformers(transformers):
    # loading a pre-training checkpoint into the bare encoder lists unused heads: not news to users
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


class Wav2Vec2Classifier(nn.Module):
    """wav2vec 2.0 (Baevski et al., NeurIPS 2020) fine-tuned for genres, as in seed 004 (GTZAN):
    16 kHz waveform → wav2vec2 encoder → mean of the last hidden state over time →
    Linear(head_hidden) → BatchNorm → ReLU → Linear(n_classes).

    Parameters
    ----------
    n_classes : int
        Number of outputs (logits).
    input_shape : (n_samples,)
        Per-example waveform length at 16 kHz.
    weights : str
        ``"random"`` or a folder written by ``Wav2Vec2Model.save_pretrained`` (``config.json``
        and ``model.safetensors``), read with ``local_files_only=True``.
    config : {"base", "tiny"} or None
        Layout of a ``weights=random`` model: wav2vec2-base (default) or a tiny one for tests.
    head_hidden : int
        Width of the hidden layer of the head (seed 004: 768).
    freeze_feature_encoder : bool
        Keep the convolutional feature encoder fixed, as Hugging Face's fine-tuning recipes do.
    spec_augment : bool
        wav2vec2's time masking while training. Off by default: Hugging Face draws the masks
        from numpy's global generator, which would make runs irreproducible.
    normalize_input : bool
        Zero mean, unit variance per example (what ``Wav2Vec2FeatureExtractor`` does for base).

    Notes
    -----
    ``forward(x [shape=(B, n_samples)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, head_hidden)]``.
    """

    def __init__(
        self,
        n_classes: int = 10,
        input_shape: tuple[int] = (480_000,),
        *,
        weights: str | None = None,
        config: str | None = None,
        head_hidden: int = 768,
        freeze_feature_encoder: bool = True,
        spec_augment: bool = False,
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        (n_samples,) = check_input_shape(input_shape, axes=("n_samples",), model="wav2vec2")
        check_hyperparameters("wav2vec2", sizes={"head_hidden": head_hidden})
        if weights is None:
            raise MuzarrError(WAV2VEC2_WEIGHTS_HELP)
        transformers = _transformers()
        if weights == "random":
            if (config or "base") not in ("base", "tiny"):
                raise MuzarrError(f"wav2vec2: config={config!r} must be base or tiny")
            settings = TINY_WAV2VEC2 if config == "tiny" else {}
            self.encoder = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**settings))
        else:
            if config is not None:
                raise MuzarrError(f"wav2vec2: config={config!r} applies to weights=random only; {weights} has its own config.json")
            self.encoder = _load_wav2vec2(transformers, Path(weights).expanduser())
        self.encoder.config.apply_spec_augment = bool(spec_augment)
        if freeze_feature_encoder:
            self.encoder.freeze_feature_encoder()
        frames = int(self.encoder._get_feat_extract_output_lengths(torch.tensor(n_samples)))
        if frames < 1:
            raise MuzarrError(f"wav2vec2: input_shape=({n_samples},) is too short for its feature encoder")
        self.normalize_input = normalize_input
        hidden = self.encoder.config.hidden_size
        self.project = nn.Linear(hidden, head_hidden)
        self.norm = nn.BatchNorm1d(head_hidden)
        self.classifier = nn.Linear(head_hidden, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_input:
            x = (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True) + 1e-7)
        states = self.encoder(x).last_hidden_state  # (B, frames, hidden)
        h = self.project(states.mean(dim=1))
        if self.training and len(h) == 1:
            # a last batch of one example: BatchNorm cannot take batch statistics, use the running ones
            n = self.norm
            h = F.batch_norm(h, n.running_mean, n.running_var, n.weight, n.bias, training=False, eps=n.eps)
        else:
            h = self.norm(h)
        return F.relu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _load_wav2vec2(transformers, folder: Path):
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise MuzarrError(f"wav2vec2: {folder} is not a save_pretrained folder (config.json + model.safetensors). {WAV2VEC2_WEIGHTS_HELP}")
    try:
        with _quiet_transformers(transformers):
            return transformers.Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise MuzarrError(f"wav2vec2: cannot load {folder}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
