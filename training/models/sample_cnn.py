"""Sample-level CNNs on raw waveforms: Lee et al.'s SampleCNN and Kim et al.'s SE variant."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import ConvBlock1d, Tagger, check_hyperparameters, check_input_shape

__all__ = ["ResSE1d", "SampleCNN", "SampleCNNSE"]

#: blocks between the strided first layer and the final 1×1 one, each pooling by 3
_N_POOLED = 9


def _widths(n_channels: int) -> tuple[int, ...]:
    """Output channels of the eleven layers: 1 strided, 9 pooled by 3, one 1×1."""
    c = n_channels
    return (c, c, c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 4 * c, 4 * c)


def _check_samples(input_shape: tuple[int], *, model: str) -> int:
    """``n_samples`` of ``input_shape``, raising unless the layers leave at least one step.

    The strided first layer (kernel 3, stride 3, padding 1) gives ``(n - 1) // 3 + 1``
    frames and the nine max-pools need ``3**9`` of them, so the minimum is
    ``3 * (3**9 - 1) + 1 = 59,047`` samples: the padding lets 59,047 stand in for ``3**10``.
    """
    (n_samples,) = check_input_shape(input_shape, axes=("n_samples",), model=model)
    minimum = 3 * (3**_N_POOLED - 1) + 1
    if n_samples < minimum:
        raise MuzarrError(
            f"model {model!r}: input_shape={tuple(input_shape)} is too short; it needs at least "
            f"{minimum} samples (3^10 = 59049 at 16 kHz is 3.69 s)"
        )
    return n_samples


class ResSE1d(nn.Module):
    """Residual block with squeeze-and-excitation of Kim et al. 2018, as in sota-music-tagging-models
    ``modules.ResSE_1d``.

    Conv1d (strided) → BN → ReLU → Conv1d → BN, then squeeze-and-excitation (mean over time →
    Linear(C, C) → ReLU → Linear(C, C) → sigmoid, a per-channel gate: no bottleneck), plus the
    shortcut, ReLU, max-pool. The shortcut is a strided Conv1d of the same kernel + BN whenever
    the stride or width changes, the identity otherwise. Padding is ``kernel_size // 2``.
    Input ``[shape=(B, in_channels, T)]``, output ``[shape=(B, out_channels, T' // pool)]``
    with ``T' = (T + 2 · (kernel_size // 2) - kernel_size) // stride + 1``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1,
                 pool: int = 3) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv_1 = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.bn_1 = nn.BatchNorm1d(out_channels)
        self.conv_2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=padding)
        self.bn_2 = nn.BatchNorm1d(out_channels)
        self.excite = nn.Sequential(
            nn.Linear(out_channels, out_channels),
            nn.ReLU(),
            nn.Linear(out_channels, out_channels),
            nn.Sigmoid(),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
                nn.BatchNorm1d(out_channels),
            )
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool1d(pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_2(self.conv_2(self.relu(self.bn_1(self.conv_1(x)))))
        gate = self.excite(out.mean(dim=-1))  # (B, C)
        out = out * gate.unsqueeze(-1)
        return self.pool(self.relu(out + self.shortcut(x)))


class SampleCNN(Tagger):
    """Lee, Park, Kim, Nam, "Sample-level deep convolutional neural networks for music
    auto-tagging using raw waveforms", SMC 2017 — the 3^9 model, as in
    minzwon/sota-music-tagging-models ``training/model.py`` ``SampleCNN``.

    Raw waveform (59,049 samples = 3.69 s at 16 kHz) → strided Conv1d (kernel 3, stride 3,
    padding 1) → BN → ReLU → nine :class:`ConvBlock1d` (kernel 3, BN, ReLU, max-pool 3;
    128, 128, 256 ×6, 512 channels) → a 1×1 :class:`ConvBlock1d` (512) → dropout 0.5 →
    Linear(n_classes). 59,047 to 118,095 samples reduce to one step; a longer input leaves
    several, which are max-pooled (Won's code only takes inputs that reduce to one).

    Parameters
    ----------
    input_shape : (n_samples,)
        Samples per example; at least 59,047.
    n_channels : int
        Width of the first layers (doubled twice on the way).

    Notes
    -----
    ``embed(x) -> [shape=(B, 4 · n_channels)]``.
    """

    #: the model's name in error messages, as the registry spells it
    registry_name = "sample_cnn"

    def __init__(self, n_classes: int = 50, input_shape: tuple[int] = (59049,), *, n_channels: int = 128,
                 dropout: float = 0.5) -> None:
        super().__init__()
        _check_samples(input_shape, model=self.registry_name)
        check_hyperparameters(self.registry_name, sizes={"n_channels": n_channels}, rates={"dropout": dropout})
        widths = _widths(n_channels)
        self._add_layers(widths)
        self._add_head(widths[-1], n_classes, dropout)

    def _add_layers(self, widths: tuple[int, ...]) -> None:
        """Everything between the waveform and the dropout, for the eleven layers' ``widths``."""
        self.frames = nn.Sequential(
            nn.Conv1d(1, widths[0], 3, stride=3, padding=1),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(),
        )
        pooled = (ConvBlock1d(c_in, c_out, kernel_size=3, pool=3) for c_in, c_out in itertools.pairwise(widths[:-1]))
        self.layers = nn.Sequential(*pooled, ConvBlock1d(widths[-2], widths[-1], kernel_size=1, pool=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.layers(self.frames(x.unsqueeze(1)))  # (B, 512, 1) for 59,049 samples
        return maps.amax(dim=-1)


class SampleCNNSE(SampleCNN):
    """Kim, Lee, Park, Nam, "Sample-level CNN architectures for music auto-tagging using raw
    waveforms", ICASSP 2018 — the sample-level CNN with residual squeeze-and-excitation blocks,
    as in minzwon/sota-music-tagging-models ``training/model.py`` ``SampleCNNSE``.

    Raw waveform (59,049 samples = 3.69 s at 16 kHz) → eleven :class:`ResSE1d` blocks: the
    first strided by 3 and unpooled, nine max-pooled by 3, the last 1×1 and unpooled (128,
    128, 128, 256 ×6, 512, 512 channels) → Linear(512) → BN → ReLU → dropout 0.5 →
    Linear(n_classes). As for :class:`SampleCNN`, more than 118,095 samples leave several
    steps, which are max-pooled. Parameters, input and output are :class:`SampleCNN`'s: only
    the layers between the waveform and the dropout differ.
    """

    registry_name = "sample_cnn_se"

    def _add_layers(self, widths: tuple[int, ...]) -> None:
        first = ResSE1d(1, widths[0], kernel_size=3, stride=3, pool=1)
        pooled = (ResSE1d(c_in, c_out, kernel_size=3, pool=3) for c_in, c_out in itertools.pairwise(widths[:-1]))
        last = ResSE1d(widths[-2], widths[-1], kernel_size=1, pool=1)
        self.layers = nn.Sequential(first, *pooled, last)
        self.dense = nn.Sequential(nn.Linear(widths[-1], widths[-1]), nn.BatchNorm1d(widths[-1]), nn.ReLU())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.layers(x.unsqueeze(1))  # (B, 512, 1) for 59,049 samples
        return self.dense(maps.amax(dim=-1))
