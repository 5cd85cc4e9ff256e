"""Won et al.'s short-chunk ResNet, the best published MagnaTagATune tagger, mel front end included."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import Res2d, check_hyperparameters, check_input_shape
from training.models.frontend import WaveformMelModel

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
    n_classes : int
        Number of outputs (logits).
    input_shape : (n_samples,)
        Samples per chunk.
    sample_rate, n_fft, hop_length, f_min, f_max, n_mels, htk, norm, pad_mode
        Mel front end, see :class:`training.frontend.MelSpectrogram`.
    n_channels : int
        Width of the first residual blocks (doubled twice on the way).
    dropout : float
        Dropout before the output layer.

    Notes
    -----
    ``forward(x [shape=(B, n_samples)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, 4 · n_channels)]``.
    """

    def __init__(
        self,
        n_classes: int = 50,
        input_shape: tuple[int] = (59049,),
        *,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 256,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        n_mels: int = 128,
        htk: bool = True,
        norm: str | None = None,
        pad_mode: str = "reflect",
        n_channels: int = 128,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        (n_samples,) = check_input_shape(input_shape, axes=("n_samples",), model="short_res")
        check_hyperparameters(
            "short_res",
            sizes={"sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels,
                   "n_channels": n_channels},
            rates={"dropout": dropout},
        )
        if n_samples < n_fft:
            raise MuzarrError(f"short_res: input_shape={input_shape} is shorter than one frame (n_fft={n_fft})")
        self._add_log_mel(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            htk=htk,
            norm=norm,
            pad_mode=pad_mode,
        )
        c = n_channels
        widths = (1, c, c, 2 * c, 2 * c, 2 * c, 2 * c, 4 * c)
        self.layers = nn.Sequential(*(Res2d(c_in, c_out, stride=2) for c_in, c_out in itertools.pairwise(widths)))
        self.dense = nn.Sequential(nn.Linear(4 * c, 4 * c), nn.BatchNorm1d(4 * c), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * c, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        mel = self._log_mel(x)
        maps = self.layers(mel)  # (B, 512, n_mels / 128, n_frames / 128)
        pooled = maps.amax(dim=(2, 3))  # global max pool
        return self.dense(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(x)))
