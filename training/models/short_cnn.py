"""Won et al.'s short-chunk CNN (the plain VGG-like one), mel front end included."""

from __future__ import annotations

from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import ConvBlock2d
from training.models.short_res import ShortChunkResNet

__all__ = ["ShortChunkCNN"]

#: conv blocks, each halving both axes (floor), so both need at least 2**7 rows/frames
_N_BLOCKS = 7


class ShortChunkCNN(ShortChunkResNet):
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

    Parameters, input and output are :class:`~training.models.short_res.ShortChunkResNet`'s
    (``n_mels >= 128``): only the blocks differ.
    """

    registry_name = "short_cnn"

    def _check_input(self) -> None:
        least = 2**_N_BLOCKS
        n_mels, hop_length = self.mel.n_mels, self.mel.hop_length
        if n_mels < least:
            raise MuzarrError(
                f"model 'short_cnn': n_mels={n_mels} is too few; its {_N_BLOCKS} 2x2 max-pools need n_mels >= {least}"
            )
        # 2**7 centred frames (hop_length checked by the front end), and reflect padding needs
        # more samples than n_fft // 2
        minimum = max((least - 1) * hop_length, self.mel.n_fft // 2 + 1)
        if self.n_samples < minimum:
            raise MuzarrError(
                f"model 'short_cnn': input_shape={(self.n_samples,)} is too short; it needs at least "
                f"{minimum} samples ({least} frames at hop_length={hop_length})"
            )

    def _block(self, c_in: int, c_out: int) -> nn.Module:
        return ConvBlock2d(c_in, c_out)
