"""Seed 004's five-layer CNN on mel spectrograms (GTZAN)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from training.models.blocks import ConvBlock2d, check_input_shape, flat_size, output_shape

__all__ = ["FiveLayerCNN"]


class FiveLayerCNN(nn.Module):
    """Five-block CNN of seed 004 (Zhang, UCD COMP47650, GTZAN 10 genres, 0.63 test accuracy).

    Five 3×3 "same" convolutions (8, 16, 32, 64, 128 channels) each BatchNorm → ReLU → 2×2
    max-pool; flatten → Linear(hidden) → ReLU → Linear(n_classes). The report fed 224×224 RGB
    renderings of the Kaggle spectrogram images (a 128×7×7 map); here the input is the stored
    one-channel log-mel itself, so the flattened size follows ``input_shape``.

    Parameters
    ----------
    n_classes : int
        Number of outputs (logits).
    input_shape : (n_mels, n_frames)
        Per-example log-mel shape; fixes the flattened size.
    channels : tuple of int
        Output channels of the conv blocks.
    hidden : int
        Width of the dense layer.

    Notes
    -----
    ``forward(x [shape=(B, n_mels, n_frames)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, hidden)]``.
    """

    def __init__(
        self,
        n_classes: int = 10,
        input_shape: tuple[int, int] = (128, 1293),
        *,
        channels: tuple[int, ...] = (8, 16, 32, 64, 128),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        n_mels, n_frames = check_input_shape(input_shape, axes=("n_mels", "n_frames"), model="cnn5")
        widths = (1, *channels)
        self.features = nn.Sequential(*(ConvBlock2d(c_in, c_out) for c_in, c_out in itertools.pairwise(widths)))
        n_flat = flat_size(output_shape(self.features, (1, n_mels, n_frames), model="cnn5", input_shape=input_shape))
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(n_flat, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x.unsqueeze(1))  # (B, 128, F/32, T/32)
        return self.hidden(maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
