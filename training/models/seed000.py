"""Seed 000's two MagnaTagATune taggers: an MLP on the time-averaged log-mel and a small CNN."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from training.models.blocks import (
    ConvBlock2d,
    Tagger,
    check_hyperparameters,
    check_input_shape,
    flat_size,
    output_shape,
)

__all__ = ["MelCNN", "MelMeanMLP"]


class MelMeanMLP(Tagger):
    """MLP on the time-averaged log-mel (seed 000, Castillo Obregón, UPF MLSM lab 5, 2025).

    Mean of the ``n_mels`` bands over time → Linear(hidden) → ReLU → Linear(n_classes):
    14,770 parameters for 64 mels, 128 hidden units and 50 tags.

    Parameters
    ----------
    input_shape : (n_mels, n_frames)
        Per-example log-mel shape; only ``n_mels`` matters.
    hidden : int
        Width of the hidden layer.

    Notes
    -----
    ``forward(x [shape=(B, n_mels, n_frames)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, hidden)]``.
    """

    def __init__(self, n_classes: int = 50, input_shape: tuple[int, int] = (64, 94), *, hidden: int = 128) -> None:
        super().__init__()
        n_mels, _ = check_input_shape(input_shape, axes=("n_mels", "n_frames"), model="mlp")
        check_hyperparameters("mlp", sizes={"hidden": hidden})
        self.hidden = nn.Sequential(nn.Linear(n_mels, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        summary = x.mean(dim=-1)  # (B, n_mels): the MLP sees no time structure
        return self.hidden(summary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class MelCNN(Tagger):
    """Three-block CNN on a 3 s log-mel (seed 000, Castillo Obregón, UPF MLSM lab 5, 2025).

    Three 3×3 "same" convolutions (32, 64, 128 channels) each with BatchNorm, ReLU and 2×2
    max-pool, flatten, Linear(hidden) → ReLU → Linear(n_classes). On 64×94 the flattened map
    is 128×8×11 and the model has 2,989,810 parameters for 50 tags.

    Parameters
    ----------
    input_shape : (n_mels, n_frames)
        Per-example log-mel shape; fixes the flattened size.
    channels : tuple of int
        Output channels of the conv blocks.
    hidden : int
        Width of the dense layer.
    dropout : float
        Dropout before the output layer (the report uses none).

    Notes
    -----
    ``forward(x [shape=(B, n_mels, n_frames)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, hidden)]``.
    """

    registry_name = "cnn"  # the name shape errors speak of

    def __init__(
        self,
        n_classes: int = 50,
        input_shape: tuple[int, int] = (64, 94),
        *,
        channels: tuple[int, ...] = (32, 64, 128),
        hidden: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n_mels, n_frames = check_input_shape(input_shape, axes=("n_mels", "n_frames"), model=self.registry_name)
        check_hyperparameters(
            self.registry_name, sizes={"channels": channels, "hidden": hidden}, rates={"dropout": dropout}
        )
        widths = (1, *channels)
        self.features = nn.Sequential(*(ConvBlock2d(c_in, c_out) for c_in, c_out in itertools.pairwise(widths)))
        shape = output_shape(self.features, (1, n_mels, n_frames), model=self.registry_name, input_shape=input_shape)
        n_flat = flat_size(shape)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(n_flat, hidden), nn.ReLU())
        self._add_head(hidden, n_classes, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x.unsqueeze(1))  # (B, channels[-1], F / 2**len(channels), T / 2**len(channels))
        return self.hidden(maps)
