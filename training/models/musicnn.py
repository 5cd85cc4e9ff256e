"""Pons et al.'s musicnn tagger as Won et al. re-implemented it, mel front end included."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import ConvBlock1d, check_hyperparameters
from training.models.frontend import MelFrontend, WaveformMelModel

__all__ = ["Musicnn"]


class _TimbralConv(nn.Module):
    """Tall ("vertical") conv → BatchNorm → ReLU → max over frequency (Won's ``modules.Conv_V``).

    The kernel spans ``height`` mel bands without padding and ``width`` frames with "same"
    padding (an even width gets the extra frame on the right, as TensorFlow pads).
    Input ``[shape=(B, 1, n_mels, T)]``, output ``[shape=(B, out_channels, T)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: tuple[int, int] = (67, 7)) -> None:
        super().__init__()
        height, width = kernel_size
        self.pad = nn.ZeroPad2d(((width - 1) // 2, width // 2, 0, 0))
        self.conv = nn.Conv2d(in_channels, out_channels, (height, width))
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(self.pad(x)))).amax(dim=2)


class _TemporalConv(nn.Module):
    """Mean over frequency → long 1-D conv → BatchNorm → ReLU (Won's ``modules.Conv_H``).

    Input ``[shape=(B, 1, n_mels, T)]``, output ``[shape=(B, out_channels, T)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 129) -> None:
        super().__init__()
        self.conv = ConvBlock1d(in_channels, out_channels, kernel_size=kernel_size, pool=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.mean(dim=2))


class Musicnn(WaveformMelModel):
    """Pons, Nieto, Prockup, Schmidt, Ehmann, Serra, "End-to-end learning for music audio
    tagging at scale", ISMIR 2018 — the musicnn model (jordipons/musicnn) as re-implemented in
    PyTorch by Won et al. 2020 (minzwon/sota-music-tagging-models ``training/model.py``
    ``Musicnn``, ``dataset='mtat'``).

    Raw 16 kHz waveform (48,000 samples = 3 s) → mel spectrogram on the training device
    (n_fft 512, hop 256, f_max 8 kHz, 96 mels, power) → dB → BatchNorm2d(1) →

    - front end, concatenated on channels (2 × 204 + 3 × 51 = 561): two timbral
      :class:`_TimbralConv` of 204 filters, 67×7 and 38×7 (70 % and 40 % of 96 mels by 7
      frames), max-pooled over frequency; three temporal :class:`_TemporalConv` of 51 filters
      of 129, 65 and 33 frames on the frequency mean;
    - mid end: three 1-D convs of 64 filters × 7 frames (BatchNorm, ReLU), the second and
      third with a residual connection; the front end and the three outputs are concatenated
      (561 + 3 × 64 = 753 channels);
    - back end: max and mean over time (2 × 753) → Linear(200) → BatchNorm → ReLU →
      dropout 0.5 → Linear(n_classes).

    Won's ``dataset='msd'`` is ``midend_channels=512, dense_units=500``. Every layer
    keeps the time axis, so any clip of at least ``n_fft`` samples works.

    Parameters
    ----------
    **mel
        Mel front end settings, see :class:`~training.models.frontend.MelFrontend` (Won's, 96 mels).
    timbral_channels : int
        Filters of each timbral convolution.
    timbral_kernels : tuple of (int, int)
        (mel bands, frames) of each timbral convolution; the bands must fit in ``n_mels``.
    temporal_channels : int
        Filters of each temporal convolution.
    temporal_kernels : tuple of int
        Frames of each temporal convolution.
    midend_channels : int
        Filters of the mid-end convolutions.
    midend_kernel : int
        Frames of the mid-end convolutions.
    dense_units : int
        Width of the penultimate layer.

    Notes
    -----
    ``embed(x) -> [shape=(B, dense_units)]``.
    """

    registry_name = "musicnn"
    mel_defaults = MelFrontend(n_mels=96)

    def __init__(self, n_classes: int = 50, input_shape: tuple[int] = (48000,), *, timbral_channels: int = 204,
                 timbral_kernels: tuple[tuple[int, int], ...] = ((67, 7), (38, 7)), temporal_channels: int = 51,
                 temporal_kernels: tuple[int, ...] = (129, 65, 33), midend_channels: int = 64, midend_kernel: int = 7,
                 dense_units: int = 200, dropout: float = 0.5, **mel: Any) -> None:
        super().__init__(input_shape, **mel)
        check_hyperparameters(
            "musicnn",
            sizes={"timbral_channels": timbral_channels, "timbral_kernels": timbral_kernels,
                   "temporal_channels": temporal_channels, "temporal_kernels": temporal_kernels,
                   "midend_channels": midend_channels, "midend_kernel": midend_kernel, "dense_units": dense_units},
            rates={"dropout": dropout},
        )
        self._require_one_frame()
        too_tall = [kernel for kernel in timbral_kernels if kernel[0] > self.mel.n_mels]
        if too_tall:
            raise MuzarrError(f"musicnn: timbral_kernels {too_tall} are taller than n_mels={self.mel.n_mels}")
        self._add_log_mel()
        self.frontend = nn.ModuleList(
            [_TimbralConv(1, timbral_channels, kernel_size=kernel) for kernel in timbral_kernels]
            + [_TemporalConv(1, temporal_channels, kernel_size=kernel) for kernel in temporal_kernels]
        )
        front_channels = timbral_channels * len(timbral_kernels) + temporal_channels * len(temporal_kernels)
        self.midend = nn.ModuleList(
            ConvBlock1d(c_in, midend_channels, kernel_size=midend_kernel, pool=1)
            for c_in in (front_channels, midend_channels, midend_channels)
        )
        pooled = 2 * (front_channels + len(self.midend) * midend_channels)  # max and mean
        self.dense = nn.Sequential(nn.Linear(pooled, dense_units), nn.BatchNorm1d(dense_units), nn.ReLU())
        self._add_head(dense_units, n_classes, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        mel = self._log_mel(x)
        front = torch.cat([branch(mel) for branch in self.frontend], dim=1)  # (B, 561, T)
        first, *residual = self.midend
        outputs = [front, first(front)]
        for layer in residual:
            outputs.append(layer(outputs[-1]) + outputs[-1])
        features = torch.cat(outputs, dim=1)  # (B, 561 + 3 · 64, T)
        pooled = torch.cat([features.amax(dim=-1), features.mean(dim=-1)], dim=1)
        return self.dense(pooled)
