"""Choi et al.'s convolutional recurrent tagger (CRNN), as in seed 001's extension."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import ConvBlock2d, Tagger, check_hyperparameters, check_input_shape, output_shape
from training.models.keras_gru import KerasGRU

__all__ = ["ChoiCRNN"]

#: ``gru=`` choices: the Keras 1 GRU of the original, or PyTorch's (cuDNN) GRU
_GRUS = ("keras", "torch")


class ChoiCRNN(Tagger):
    """Choi, Fazekas, Sandler, Cho, "Convolutional recurrent neural networks for music
    classification", ICASSP 2017 (keunwoochoi/music-auto_tagging-keras ``MusicTaggerCRNN``).

    BatchNorm over frequency on the input; four 3×3 conv blocks (64, 128, 128, 128) each
    BatchNorm → ELU → max-pool (2,2), (3,3), (4,4), (4,4) → dropout 0.1; the frequency axis
    is then collapsed into features (96 mels pool down to 1) and time becomes a sequence:
    GRU(32) → GRU(32) → last state → dropout 0.3 → Linear(n_classes). A 29.12 s clip at
    12 kHz with 37 zero frames each side (96×1440) gives 15 steps.

    Pooling uses ``ceil_mode`` so short inputs keep at least one step (4 s → 262 frames →
    3 steps); on sizes divisible by 2·3·4·4 = 96 (96 mels, 1440 frames) it is identical to
    Keras' floor pooling.

    Differences from the Keras original (396,786 trainable parameters in its Keras summary,
    which counts BatchNorm's gamma/beta but not its moving statistics, as PyTorch does): the
    original's ``bn_0_freq`` is ``BatchNormalization(axis=time_axis)``, i.e. one
    scale/shift per *time* frame (2 × 1440) despite its name, which ties the model to one clip
    length; this class normalises each mel band (2 × 96) as the name and the paper intend.
    That is the only difference with ``gru="keras"`` (the default, :class:`KerasGRU`: the
    Keras 1 GRU's hard-sigmoid gates, reset gate before the recurrent product, one bias per
    gate): 396,786 − 2 × 1440 + 2 × 96 = 394,098 on 96×1440. ``gru="torch"`` uses
    ``nn.GRU`` instead (cuDNN on CUDA), which gates with the sigmoid, resets after the
    recurrent product and keeps two biases per gate, +3 × 32 per layer: 394,290.

    Parameters
    ----------
    input_shape : (n_mels, n_frames)
        Per-example log-mel shape (padding frames included).
    channels : tuple of int
        Output channels of the conv blocks.
    pools : tuple of (int, int)
        Max-pool (frequency, time) of each block.
    conv_dropout : float
        Dropout after each conv block.
    rnn_hidden : int
        GRU width.
    rnn_layers : int
        Stacked GRU layers.
    gru : {"keras", "torch"}
        Recurrent implementation: ``"keras"`` (faithful to the original) or ``"torch"``
        (``nn.GRU``, faster, especially on CUDA).

    Notes
    -----
    ``forward(x [shape=(B, n_mels, n_frames)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, rnn_hidden)]`` (the last GRU state).
    """

    def __init__(
        self,
        n_classes: int = 50,
        input_shape: tuple[int, int] = (96, 1440),
        *,
        channels: tuple[int, ...] = (64, 128, 128, 128),
        pools: tuple[tuple[int, int], ...] = ((2, 2), (3, 3), (4, 4), (4, 4)),
        conv_dropout: float = 0.1,
        rnn_hidden: int = 32,
        rnn_layers: int = 2,
        dropout: float = 0.3,
        gru: str = "keras",
    ) -> None:
        super().__init__()
        n_mels, n_frames = check_input_shape(input_shape, axes=("n_mels", "n_frames"), model="crnn")
        check_hyperparameters(
            "crnn",
            sizes={"channels": channels, "pools": pools, "rnn_hidden": rnn_hidden, "rnn_layers": rnn_layers},
            rates={"conv_dropout": conv_dropout, "dropout": dropout},
        )
        if gru not in _GRUS:
            raise MuzarrError(f"crnn: gru={gru!r} is not one of {list(_GRUS)}")
        if len(channels) != len(pools):
            raise MuzarrError(f"crnn: channels={channels} and pools={pools} must have the same length")
        widths = (1, *channels)
        self.input_bn = nn.BatchNorm1d(n_mels)  # (B, n_mels, T): one scale/shift per mel band
        self.features = nn.Sequential(
            *(
                ConvBlock2d(c_in, c_out, pool=pool, activation=nn.ELU, dropout=conv_dropout, ceil_mode=True)
                for c_in, c_out, pool in zip(widths, widths[1:], pools)
            )
        )
        maps_shape = output_shape(self.features, (1, n_mels, n_frames), model="crnn", input_shape=input_shape)
        n_channels, n_freq, _ = maps_shape
        if gru == "keras":
            self.rnn = KerasGRU(n_channels * n_freq, rnn_hidden, num_layers=rnn_layers)
        else:
            self.rnn = nn.GRU(n_channels * n_freq, rnn_hidden, num_layers=rnn_layers, batch_first=True)
        self._add_head(rnn_hidden, n_classes, dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(x).unsqueeze(1)  # (B, 1, n_mels, T)
        maps = self.features(x)  # (B, C, F', T')
        sequence = maps.flatten(1, 2).transpose(1, 2)  # (B, T', C·F')
        _, last_state = self.rnn(sequence)  # (rnn_layers, B, rnn_hidden)
        return last_state[-1]
