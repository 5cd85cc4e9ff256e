"""Won et al.'s short-chunk ResNet, the best published MagnaTagATune tagger, mel front end included."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from training.models.blocks import Res2d, check_hyperparameters
from training.models.frontend import MelFrontend, WaveformMelModel

__all__ = ["ShortChunkResNet"]


class ShortChunkResNet(WaveformMelModel):
    """Won, Ferraro, Bogdanov, Serra, "Evaluation of CNN-based automatic music tagging models",
    SMC 2020 — short-chunk CNN with residual connections (minzwon/sota-music-tagging-models
    ``training/model.py`` ``ShortChunkCNN_Res``; 0.9129 ROC-AUC / 0.4614 PR-AUC on MTAT).

    Raw 16 kHz waveform (59,049 samples = 3.69 s) → mel spectrogram on the training device
    (n_fft 512, hop 256, f_max 8 kHz, 128 mels, power) → dB → BatchNorm2d(1) → seven
    :class:`Res2d` blocks, stride 2 (128, 128, 256, 256, 256, 256, 512 channels) → global max
    pool → Linear(512) → BatchNorm → ReLU → dropout 0.5 → Linear(n_classes).

    The mel defaults are torchaudio's, which Won et al. used: HTK mel scale, unnormalised
    filters, reflect padding. ``htk=False, norm="slaney", pad_mode="constant"`` gives librosa's
    defaults instead (the convention of the stored log-mels). 128 mels reduce to one row after
    the seven strides; the original then max-pools over time, and so does this class (over
    whatever rows and frames remain, which is the same thing for 128 mels).

    Parameters
    ----------
    **mel
        Mel front end settings, see :class:`~training.models.frontend.MelFrontend` (Won's).
    n_channels : int
        Width of the first residual blocks (doubled twice on the way).

    Notes
    -----
    ``embed(x) -> [shape=(B, 4 · n_channels)]``.
    """

    registry_name = "short_res"
    mel_defaults = MelFrontend(n_mels=128)

    def __init__(self, n_classes: int = 50, input_shape: tuple[int] = (59049,), *, n_channels: int = 128,
                 dropout: float = 0.5, **mel: Any) -> None:
        super().__init__(input_shape, **mel)
        check_hyperparameters(self.registry_name, sizes={"n_channels": n_channels}, rates={"dropout": dropout})
        self._check_input()
        self._add_log_mel()
        c = n_channels
        widths = (1, c, c, 2 * c, 2 * c, 2 * c, 2 * c, 4 * c)
        self.layers = nn.Sequential(*(self._block(c_in, c_out) for c_in, c_out in itertools.pairwise(widths)))
        self._add_head(4 * c, n_classes, dropout, dense=True)

    def _check_input(self) -> None:
        """Refuse what the seven blocks cannot take: strided, they take anything of one frame."""
        self._require_one_frame()

    def _block(self, c_in: int, c_out: int) -> nn.Module:
        """One of the seven blocks, each halving both axes."""
        return Res2d(c_in, c_out, stride=2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        mel = self._log_mel(x)
        maps = self.layers(mel)  # (B, 512, about n_mels / 128, n_frames / 128)
        pooled = maps.amax(dim=(2, 3))  # global max pool
        return self.dense(pooled)
