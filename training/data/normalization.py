"""Input standardisation fitted on the training split and carried inside the model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.data.reader import SplitReader, to_float

__all__ = ["Normalized", "fit_normalization"]


class Normalized(nn.Module):
    """Per-row standardisation fitted on the training split (per mel band, per tabular column), then the model."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.numel() == 0:
            return x
        shape = (-1, 1) if x.ndim == 3 else (-1,)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalise(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.normalise(x))


def fit_normalization(reader: SplitReader, *, max_clips: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per mel band (log-mel) or per column (tabular) over training clips; none for waveforms."""
    plan = reader.plan
    if plan.array.startswith("waveform"):
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    total, total_sq, count = 0.0, 0.0, 0
    seen = 0
    for positions, data in reader.blocks():
        # (clips, ..., time): a track store's block is its tracks joined along time
        values = to_float(data, reader.dtype).reshape(-1, *plan.item_shape[:-1], data.shape[-1]).astype(np.float64)
        axes = (0, 2) if values.ndim == 3 else (0,)
        total = total + values.sum(axis=axes)
        total_sq = total_sq + (values**2).sum(axis=axes)
        count += values.size // values.shape[1]
        seen += len(positions)
        if seen >= max_clips:
            break
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-5).astype(np.float32)
