"""Won et al.'s PyTorch version of Choi et al.'s convolutional recurrent tagger, mel front end included."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import ConvBlock2d, check_hyperparameters, output_shape
from training.models.frontend import MelFrontend, WaveformMelModel

__all__ = ["WonCRNN"]


class WonCRNN(WaveformMelModel):
    """Choi, Fazekas, Sandler, Cho, "Convolutional recurrent neural networks for music
    classification", ICASSP 2017 — as re-implemented in PyTorch by Won et al. 2020
    (minzwon/sota-music-tagging-models ``training/model.py`` ``CRNN``).

    Raw 16 kHz waveform (464,000 samples = 29 s) → mel spectrogram on the training device
    (n_fft 512, hop 256, f_max 8 kHz, 96 mels, power) → dB → BatchNorm2d(1) → four
    :class:`ConvBlock2d` (3×3 conv → BatchNorm → ReLU → max-pool) of 64, 128, 128, 128
    channels pooling (2, 2), (3, 3), (4, 4), (4, 4) (96 mels to one row; 1,813 frames to 18
    steps) → GRU(32) → GRU(32) → last step → dropout 0.5 → Linear(n_classes).

    It is not Choi's Keras model (:class:`training.models.crnn.ChoiCRNN`): ReLU instead of
    ELU, no dropout between conv blocks, one BatchNorm over the whole spectrogram instead of
    one per input row, dropout 0.5 instead of 0.3 before the output, 16 kHz with no padding
    frames instead of 12 kHz. Pooling floors, so an input needs at least 2·3·4·4 = 96 frames
    (24,320 samples at hop 256). Frequency rows left after the pools (none spare for 96 mels)
    are stacked into the GRU's features, as in :class:`ChoiCRNN`.

    Parameters
    ----------
    **mel
        Mel front end settings, see :class:`~training.models.frontend.MelFrontend` (Won's, 96 mels).
    channels, pools, rnn_hidden, rnn_layers
        Conv blocks (output channels, (frequency, time) max-pool) and GRU (width, stacked
        layers), as :class:`ChoiCRNN`'s.

    Notes
    -----
    ``embed(x) -> [shape=(B, rnn_hidden)]`` (the top GRU's last state).
    """

    registry_name = "crnn_won"
    mel_defaults = MelFrontend(n_mels=96)

    def __init__(self, n_classes: int = 50, input_shape: tuple[int] = (464000,), *,
                 channels: tuple[int, ...] = (64, 128, 128, 128),
                 pools: tuple[tuple[int, int], ...] = ((2, 2), (3, 3), (4, 4), (4, 4)), rnn_hidden: int = 32,
                 rnn_layers: int = 2, dropout: float = 0.5, **mel: Any) -> None:
        super().__init__(input_shape, **mel)
        check_hyperparameters(
            "crnn_won",
            sizes={"channels": channels, "pools": pools, "rnn_hidden": rnn_hidden, "rnn_layers": rnn_layers},
            rates={"dropout": dropout},
        )
        self._require_one_frame()
        if len(channels) != len(pools):
            raise MuzarrError(f"crnn_won: channels={channels} and pools={pools} must have the same length")
        self._add_log_mel()
        widths = (1, *channels)
        self.features = nn.Sequential(
            *(ConvBlock2d(c_in, c_out, pool=pool) for c_in, c_out, pool in zip(widths, widths[1:], pools))
        )
        n_maps, n_freq, _ = output_shape(self.features, self._log_mel_shape(), model="crnn_won", input_shape=input_shape)
        self.rnn = nn.GRU(n_maps * n_freq, rnn_hidden, num_layers=rnn_layers, batch_first=True)
        self._add_head(rnn_hidden, n_classes, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(self._log_mel(x))  # (B, C, F', T')
        sequence = maps.flatten(1, 2).transpose(1, 2)  # (B, T', C·F')
        _, last_state = self.rnn(sequence)  # (rnn_layers, B, rnn_hidden)
        return last_state[-1]
