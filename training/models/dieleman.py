"""End-to-end raw-waveform tagger of Dieleman & Schrauwen (2014), as replicated in seed 001."""

from __future__ import annotations

import torch
from torch import nn

from training.models.blocks import ConvBlock1d, check_hyperparameters, check_input_shape, flat_size, output_shape

__all__ = ["DielemanCNN"]


class DielemanCNN(nn.Module):
    """Dieleman & Schrauwen, "End-to-end learning for music audio", ICASSP 2014.

    A strided Conv1d of ``filter_length`` samples and stride ``stride`` (the learned
    "filter bank", 32 filters) → ReLU; two Conv1d(32, kernel 8, "same") → ReLU → max-pool 4;
    flatten → Linear(100) → ReLU → Linear(n_classes). The paper's grid is length/stride in
    1024/1024, 1024/512, 512/512, 512/256, 256/256; seed 001 (Elwood & Varosyan) got its
    0.8267 test AUC with 256/256.

    Parameters
    ----------
    n_classes : int
        Number of outputs (logits).
    input_shape : (n_samples,)
        Samples per sub-clip (about 3 s at 16 kHz); fixes the flattened size.
    filter_length, stride : int
        Length and stride of the first, strided convolution.
    channels : int
        Filters in every convolution.
    kernel_size : int
        Length of the two later convolutions.
    pool : int
        Max-pool size after each later convolution.
    hidden : int
        Width of the dense layer.

    Notes
    -----
    ``forward(x [shape=(B, n_samples)]) -> [shape=(B, n_classes)]`` logits for each sub-clip;
    the clip's prediction is the mean over its sub-clips (the loop's job).
    ``embed(x) -> [shape=(B, hidden)]``.
    """

    def __init__(self, n_classes: int = 50, input_shape: tuple[int] = (46400,), *, filter_length: int = 256,
                 stride: int = 256, channels: int = 32, kernel_size: int = 8, pool: int = 4, hidden: int = 100) -> None:
        super().__init__()
        (n_samples,) = check_input_shape(input_shape, axes=("n_samples",), model="dieleman")
        check_hyperparameters(
            "dieleman",
            sizes={"filter_length": filter_length, "stride": stride, "channels": channels,
                   "kernel_size": kernel_size, "pool": pool, "hidden": hidden},
        )
        self.frontend = nn.Sequential(nn.Conv1d(1, channels, filter_length, stride=stride), nn.ReLU())
        self.features = nn.Sequential(
            ConvBlock1d(channels, channels, kernel_size=kernel_size, pool=pool, batch_norm=False),
            ConvBlock1d(channels, channels, kernel_size=kernel_size, pool=pool, batch_norm=False),
        )
        trunk = nn.Sequential(self.frontend, self.features)
        n_flat = flat_size(output_shape(trunk, (1, n_samples), model="dieleman", input_shape=input_shape))
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(n_flat, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.frontend(x.unsqueeze(1))  # (B, 32, n_frames): one column per stride
        maps = self.features(frames)  # (B, 32, n_frames / 16)
        return self.hidden(maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
