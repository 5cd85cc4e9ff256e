"""Layer blocks the model zoo is built from, and the shape checks every model shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pipeline.errors import MuzarrError

__all__ = [
    "BasicBlock", "ConvBlock1d", "ConvBlock2d", "Res2d", "Tagger", "check_hyperparameters", "check_input_shape",
    "flat_size", "output_shape",
]  # fmt: skip


class Tagger(nn.Module):
    """Base of the zoo's models: ``embed`` gives the penultimate representation ``(B, D)``,
    ``forward`` the logits ``classifier(dropout(embed(x)))``, ``(B, n_classes)``.

    Every subclass takes ``n_classes`` (number of outputs, logits) and ``input_shape`` (one
    example's shape, no batch axis), and most a ``dropout`` (rate before the output layer);
    they are described here once, not in each model.
    """

    def _add_head(self, width: int, n_classes: int, dropout: float, *, dense: bool = False) -> None:
        """The layers after the features: with ``dense``, Won et al.'s ``Linear(width, width)``
        → BN → ReLU as ``self.dense`` (which ``embed`` ends in), then ``dropout`` and
        ``Linear(width, n_classes)``. Registered last, so state_dict keys keep their order."""
        if dense:
            self.dense = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(x)))


class ConvBlock1d(nn.Module):
    """Conv1d ("same" padding) → optional BatchNorm → activation → max-pool.

    An even kernel is padded like TensorFlow's "same" (one more sample on the right), which
    is what ``padding="same"`` does too, minus its per-call copy and warning.
    Input ``[shape=(B, in_channels, T)]``, output ``[shape=(B, out_channels, T // pool)]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        pool: int = 2,
        batch_norm: bool = True,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.pad = nn.ConstantPad1d(((kernel_size - 1) // 2, kernel_size // 2), 0.0)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size)
        self.bn = nn.BatchNorm1d(out_channels) if batch_norm else nn.Identity()
        self.act = activation()
        self.pool = nn.MaxPool1d(pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(self.pad(x)))))


class ConvBlock2d(nn.Module):
    """3×3 "same" Conv2d → BatchNorm → activation → max-pool → optional dropout.

    ``ceil_mode=True`` keeps a partial last pooling window, so an input smaller than the
    pool still yields one output step instead of failing (short clips through the CRNN).
    Input ``[shape=(B, in_channels, F, T)]``, output ``[shape=(B, out_channels, F', T')]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        pool: tuple[int, int] = (2, 2),
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = activation()
        self.pool = nn.MaxPool2d(pool, ceil_mode=ceil_mode)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.act(self.bn(self.conv(x)))))


class Res2d(nn.Module):
    """Residual block of Won et al. 2020 (sota-music-tagging-models ``modules.Res_2d``).

    Two 3×3 convolutions with BatchNorm, the first strided; the shortcut is a strided 3×3
    convolution + BatchNorm whenever the shape changes (not the 1×1 of He et al.), ReLU after
    the sum. Input ``[shape=(B, C_in, F, T)]``, output ``[shape=(B, C_out, ⌈F/s⌉, ⌈T/s⌉)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv_1 = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.bn_1 = nn.BatchNorm2d(out_channels)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=padding)
        self.bn_2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_2(self.conv_2(self.relu(self.bn_1(self.conv_1(x)))))
        return self.relu(out + self.shortcut(x))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): 3×3 conv-BN-ReLU, 3×3 conv-BN, + shortcut, ReLU.

    The shortcut is a strided 1×1 convolution + BatchNorm when the shape changes (torchvision's
    "option B"); convolutions have no bias because BatchNorm follows each one.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def check_hyperparameters(
    model: str, *, sizes: dict[str, Any] | None = None, rates: dict[str, Any] | None = None
) -> None:
    """A model's hyper-parameters, checked before any layer is made (a layer of width -3 fails deep in torch).

    ``sizes`` are widths, counts, kernels and pools: each a positive integer, or a list of them (nested:
    ``pools=((2, 2), (3, 3))``); ``rates`` are dropout probabilities in [0, 1). Raises
    :class:`MuzarrError` naming the model and the option, as ``--model-opt`` spells it.
    """

    def positive(value: Any) -> bool:
        if isinstance(value, (tuple, list)):
            return len(value) > 0 and all(positive(v) for v in value)
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    for name, value in (sizes or {}).items():
        if not positive(value):
            what = "a list of positive integers" if isinstance(value, (tuple, list)) else "a positive integer"
            raise MuzarrError(f"model {model!r}: {name}={value!r} must be {what}")
    for name, value in (rates or {}).items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and 0 <= value < 1):
            raise MuzarrError(f"model {model!r}: {name}={value!r} must be a probability in [0, 1)")


def check_input_shape(input_shape: Sequence[int], *, axes: Sequence[str], model: str) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints with one entry per name in ``axes``.

    Raises :class:`MuzarrError` naming the model and the expected axes otherwise.
    """
    shape = tuple(input_shape)
    expected = f"({', '.join(axes)})"
    if len(shape) != len(axes) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise MuzarrError(
            f"model {model!r} expects input_shape={expected} of positive ints (no batch axis), got {input_shape!r}"
        )
    return shape


def output_shape(
    module: nn.Module, shape: Sequence[int], *, model: str, input_shape: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Per-example output shape of ``module`` fed one example of ``shape`` (no batch axis).

    Runs one zero example through it in eval mode (so BatchNorm statistics are untouched)
    without gradients; an input too small for the layers becomes a :class:`MuzarrError`
    naming ``input_shape``, the model's own input shape (default: ``shape``).
    """
    input_shape = shape if input_shape is None else input_shape
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *shape))
    except RuntimeError as err:
        raise MuzarrError(
            f"model {model!r}: input_shape={tuple(input_shape)} is too small for its layers ({err})"
        ) from None
    finally:
        module.train(was_training)
    if out.numel() == 0:
        raise MuzarrError(f"model {model!r}: input_shape={tuple(input_shape)} leaves no features after its layers")
    return tuple(out.shape[1:])


def flat_size(shape: Sequence[int]) -> int:
    """Number of features once ``shape`` is flattened."""
    return math.prod(shape)


def init_like_torchvision(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: He-normal convolutions, unit-scale zero-shift BatchNorm."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
