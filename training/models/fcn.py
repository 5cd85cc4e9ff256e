"""Choi et al.'s fully convolutional tagger (FCN) as Won et al. re-implemented it, mel front end included."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import ConvBlock2d, check_hyperparameters, output_shape
from training.models.frontend import MelFrontend, WaveformMelModel

__all__ = ["FCN"]


class FCN(WaveformMelModel):
    """Choi, Fazekas, Sandler, "Automatic tagging using deep convolutional neural networks",
    ISMIR 2016 — fully convolutional network, as re-implemented in PyTorch by Won et al. 2020
    (minzwon/sota-music-tagging-models ``training/model.py`` ``FCN``).

    Raw 16 kHz waveform (464,000 samples = 29 s) → mel spectrogram on the training device
    (n_fft 512, hop 256, f_max 8 kHz, 96 mels, power) → dB → BatchNorm2d(1) → five
    :class:`ConvBlock2d` (3×3 conv → BatchNorm → ReLU → max-pool) of 64, 128, 128, 128, 64
    channels pooling (freq, time) by (2, 4), (2, 4), (2, 4), (3, 5), (4, 4) → flatten →
    dropout 0.5 → Linear(n_classes).

    There is no global pooling: the pools must leave exactly one row and one step, which
    takes 96–191 mels and 1,280–2,559 frames (327,424–655,103 samples at hop 256); other
    shapes raise :class:`MuzarrError`. Pooling floors, so of the 1,813 frames of 29 s only
    the first ~1,685 reach the output. The mel defaults are torchaudio's, which Won et al.
    used (HTK scale, unnormalised filters, reflect padding).

    Parameters
    ----------
    **mel
        Mel front end settings, see :class:`~training.models.frontend.MelFrontend` (Won's, 96 mels).
    channels : tuple of int
        Output channels of the conv blocks.
    pools : tuple of (int, int)
        Max-pool (frequency, time) of each block.

    Notes
    -----
    ``embed(x) -> [shape=(B, channels[-1])]``.
    """

    registry_name = "fcn"
    mel_defaults = MelFrontend(n_mels=96)

    def __init__(self, n_classes: int = 50, input_shape: tuple[int] = (464000,), *,
                 channels: tuple[int, ...] = (64, 128, 128, 128, 64),
                 pools: tuple[tuple[int, int], ...] = ((2, 4), (2, 4), (2, 4), (3, 5), (4, 4)), dropout: float = 0.5,
                 **mel: Any) -> None:
        super().__init__(input_shape, **mel)
        check_hyperparameters("fcn", sizes={"channels": channels, "pools": pools}, rates={"dropout": dropout})
        self._require_one_frame()
        if len(channels) != len(pools):
            raise MuzarrError(f"fcn: channels={channels} and pools={pools} must have the same length")
        self._add_log_mel()
        widths = (1, *channels)
        self.layers = nn.Sequential(
            *(ConvBlock2d(c_in, c_out, pool=pool) for c_in, c_out, pool in zip(widths, widths[1:], pools))
        )
        maps_shape = output_shape(self.layers, self._log_mel_shape(), model="fcn", input_shape=input_shape)
        if maps_shape[1:] != (1, 1):
            freq_pool = math.prod(f for f, _ in pools)
            time_pool = math.prod(t for _, t in pools)
            hop_length = self.mel.hop_length
            raise MuzarrError(
                f"fcn: input_shape={input_shape} with n_mels={self.mel.n_mels} leaves feature maps of "
                f"{maps_shape[1]}×{maps_shape[2]} (mels × steps), and the FCN has no global pooling: it "
                f"needs n_mels in {freq_pool}..{2 * freq_pool - 1} and n_samples in "
                f"{(time_pool - 1) * hop_length}..{(2 * time_pool - 1) * hop_length - 1}"
            )
        self._add_head(channels[-1], n_classes, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.layers(self._log_mel(x))  # (B, channels[-1], 1, 1)
        return maps.flatten(1)
