"""Won et al.'s short-chunk CNN (the plain VGG-like one), mel front end included."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import ConvBlock2d, check_hyperparameters
from training.models.frontend import MelFrontend, WaveformMelModel

__all__ = ["ShortChunkCNN"]

#: conv blocks, each halving both axes (floor), so both need at least 2**7 rows/frames
_N_BLOCKS = 7


class ShortChunkCNN(WaveformMelModel):
    """Won, Ferraro, Bogdanov, Serra, "Evaluation of CNN-based automatic music tagging models",
    SMC 2020 — short-chunk CNN, the VGG-like model with 3×3 filters and 2×2 pooling
    (minzwon/sota-music-tagging-models ``training/model.py`` ``ShortChunkCNN``).

    Raw 16 kHz waveform (59,049 samples = 3.69 s) → mel spectrogram on the training device
    (n_fft 512, hop 256, f_max 8 kHz, 128 mels, power) → dB → BatchNorm2d(1) → seven
    :class:`ConvBlock2d` (3×3 conv → BN → ReLU → 2×2 max-pool; 128, 128, 256, 256, 256, 256,
    512 channels) → global max pool → Linear(512) → BatchNorm → ReLU → dropout 0.5 →
    Linear(n_classes). The residual variant is :class:`~training.models.short_res.ShortChunkResNet`.

    The mel defaults are torchaudio's, which Won et al. used: HTK mel scale, unnormalised
    filters, reflect padding. The max-pools round down, so ``n_mels`` and the number of
    frames must each be at least 128; 128 mels reduce to one row and 231 frames to one,
    and whatever rows and frames remain are max-pooled.

    Parameters
    ----------
    n_classes : int
        Number of outputs (logits).
    input_shape : (n_samples,)
        Samples per chunk; at least ``127 · hop_length`` (32,512 by default).
    **mel
        Mel front end settings, see :class:`~training.models.frontend.MelFrontend` (Won's);
        ``n_mels >= 128``.
    n_channels : int
        Width of the first conv blocks (doubled twice on the way).
    dropout : float
        Dropout before the output layer.

    Notes
    -----
    ``forward(x [shape=(B, n_samples)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, 4 · n_channels)]``.
    """

    registry_name = "short_cnn"
    mel_defaults = MelFrontend(n_mels=128)

    def __init__(
        self,
        n_classes: int = 50,
        input_shape: tuple[int] = (59049,),
        *,
        n_channels: int = 128,
        dropout: float = 0.5,
        **mel: Any,
    ) -> None:
        super().__init__(input_shape, **mel)
        check_hyperparameters("short_cnn", sizes={"n_channels": n_channels}, rates={"dropout": dropout})
        least = 2**_N_BLOCKS
        n_mels, hop_length = self.mel.n_mels, self.mel.hop_length
        if n_mels < least:
            raise MuzarrError(
                f"model 'short_cnn': n_mels={n_mels} is too few; its {_N_BLOCKS} 2x2 max-pools need n_mels >= {least}"
            )
        self._add_log_mel()
        # 2**7 centred frames (hop_length checked by the front end), and reflect padding needs
        # more samples than n_fft // 2
        minimum = max((least - 1) * hop_length, self.mel.n_fft // 2 + 1)
        if self.n_samples < minimum:
            raise MuzarrError(
                f"model 'short_cnn': input_shape={tuple(input_shape)} is too short; it needs at least "
                f"{minimum} samples ({least} frames at hop_length={hop_length})"
            )
        c = n_channels
        widths = (1, c, c, 2 * c, 2 * c, 2 * c, 2 * c, 4 * c)
        self.layers = nn.Sequential(*(ConvBlock2d(c_in, c_out) for c_in, c_out in itertools.pairwise(widths)))
        self.dense = nn.Sequential(nn.Linear(4 * c, 4 * c), nn.BatchNorm1d(4 * c), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * c, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.layers(self._log_mel(x))  # (B, 512, n_mels // 128, n_frames // 128)
        pooled = maps.amax(dim=(2, 3))  # global max pool
        return self.dense(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(x)))
