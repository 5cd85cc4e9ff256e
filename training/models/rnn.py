"""Seed 002's four convolutional-recurrent genre classifiers (CNN-1D/2D + GRU/LSTM)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import (
    ConvBlock1d,
    ConvBlock2d,
    Tagger,
    check_hyperparameters,
    check_input_shape,
    output_shape,
)

__all__ = ["ConvRecurrentClassifier", "MelConv1d", "MelConv2d"]

_CELLS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}
# seed 002 gives no layer sizes; these are this project's choice
_CONV_CHANNELS: dict[str, tuple[int, ...]] = {"1d": (64, 128, 256), "2d": (32, 64, 128, 128)}


class MelConv1d(nn.Module):
    """1-D conv front end: mel bands are input channels, convolution runs along time only.

    Conv1d(3, "same") → BatchNorm → ReLU → max-pool 2 per entry of ``channels``.
    ``forward(x [shape=(B, n_mels, T)]) -> [shape=(B, T', features)]``.
    """

    def __init__(self, n_mels: int, *, channels: tuple[int, ...] = _CONV_CHANNELS["1d"]) -> None:
        super().__init__()
        widths = (n_mels, *channels)
        self.blocks = nn.Sequential(*(ConvBlock1d(c_in, c_out) for c_in, c_out in itertools.pairwise(widths)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).transpose(1, 2)


class MelConv2d(nn.Module):
    """2-D conv front end: 3×3 conv → BatchNorm → ReLU → 2×2 max-pool per entry of ``channels``;
    the remaining frequency rows are stacked into the features of each time step.

    ``forward(x [shape=(B, n_mels, T)]) -> [shape=(B, T', channels[-1] · n_mels')]``.
    """

    def __init__(self, *, channels: tuple[int, ...] = _CONV_CHANNELS["2d"]) -> None:
        super().__init__()
        widths = (1, *channels)
        self.blocks = nn.Sequential(*(ConvBlock2d(c_in, c_out) for c_in, c_out in itertools.pairwise(widths)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.blocks(x.unsqueeze(1))  # (B, C, F', T')
        return maps.flatten(1, 2).transpose(1, 2)


class ConvRecurrentClassifier(Tagger):
    """CNN + RNN genre classifier of seed 002 (de la Torre, Montero, Morán, Prego, UAB XNAP,
    FMA 16 genres): conv front end → GRU or LSTM → global average pool over time → dropout →
    Linear(n_classes).

    The report gives the structure (CNN-1D or CNN-2D, GRU or LSTM, max-pool after the ReLUs,
    dropout in the RNN, global pooling) and the sweep (hidden 64/128/256, dropout 0.2-0.5,
    1-2 RNN layers) but no layer sizes; ``conv_channels`` defaults are this project's choice.

    Parameters
    ----------
    input_shape : (n_mels, n_frames)
        Per-example log-mel shape.
    conv : {"1d", "2d"}
        Front end: :class:`MelConv1d` or :class:`MelConv2d`.
    cell : {"gru", "lstm"}
        Recurrent cell.
    conv_channels : tuple of int or None
        Front-end widths; ``None`` means (64, 128, 256) for 1-D, (32, 64, 128, 128) for 2-D.
    hidden_size : int
        RNN width.
    rnn_layers : int
        Stacked RNN layers.
    dropout : float
        Dropout between RNN layers (when more than one) and before the output layer.

    Notes
    -----
    ``forward(x [shape=(B, n_mels, n_frames)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, hidden_size)]`` (time-averaged RNN outputs, for the t-SNE plot).
    """

    def __init__(
        self,
        n_classes: int = 16,
        input_shape: tuple[int, int] = (128, 1292),
        *,
        conv: str = "1d",
        cell: str = "gru",
        conv_channels: tuple[int, ...] | None = None,
        hidden_size: int = 128,
        rnn_layers: int = 2,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        name = f"cnn{conv}_{cell}"
        n_mels, n_frames = check_input_shape(input_shape, axes=("n_mels", "n_frames"), model=name)
        extra = {} if conv_channels is None else {"conv_channels": conv_channels}
        check_hyperparameters(
            name, sizes={"hidden_size": hidden_size, "rnn_layers": rnn_layers, **extra}, rates={"dropout": dropout}
        )
        if cell not in _CELLS:
            raise MuzarrError(f"cell={cell!r} is not a known RNN cell; known: {sorted(_CELLS)}")
        if conv not in _CONV_CHANNELS:
            raise MuzarrError(f"conv={conv!r} must be one of {sorted(_CONV_CHANNELS)}")
        channels = _CONV_CHANNELS[conv] if conv_channels is None else tuple(conv_channels)
        self.frontend = MelConv1d(n_mels, channels=channels) if conv == "1d" else MelConv2d(channels=channels)
        _, n_features = output_shape(self.frontend, (n_mels, n_frames), model=name)
        self.rnn = _CELLS[cell](
            n_features,
            hidden_size,
            num_layers=rnn_layers,
            batch_first=True,
            dropout=dropout if rnn_layers > 1 else 0.0,  # torch warns on dropout after the last layer
        )
        self._add_head(hidden_size, n_classes, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        sequence = self.frontend(x)  # (B, T', features)
        outputs, _ = self.rnn(sequence)  # (B, T', hidden_size)
        return outputs.mean(dim=1)  # global average pooling over time
