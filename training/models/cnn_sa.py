"""Won et al.'s CNN + self-attention tagger: a residual CNN front end, a small BERT encoder over its frames."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import Res2d, check_hyperparameters
from training.models.frontend import MelFrontend, WaveformMelModel

__all__ = ["CNNSA", "BertLayer"]


class BertLayer(nn.Module):
    """One post-norm BERT encoder layer (Devlin et al. 2019), as in Won et al.'s ``attention_modules.py``.

    Multi-head self-attention (dropout on the attention probabilities) → Linear → dropout →
    residual + LayerNorm → Linear(intermediate) → GELU (erf form) → Linear → dropout →
    residual + LayerNorm. LayerNorm ε is 1e-12; there is no mask (every frame is attended).
    Unlike :class:`torch.nn.TransformerEncoderLayer` it has no dropout after the activation
    and separate dropout rates for the attention probabilities and the hidden states.

    Parameters
    ----------
    hidden_size : int
        Width of the tokens.
    n_heads : int
        Attention heads; must divide ``hidden_size``.
    intermediate_size : int
        Width of the feed-forward layer.
    hidden_dropout : float
        Dropout on the attention and feed-forward outputs, before each residual sum.
    attention_dropout : float
        Dropout on the attention probabilities.

    Notes
    -----
    Input and output ``[shape=(B, n_tokens, hidden_size)]``.
    """

    def __init__(self, *, hidden_size: int = 256, n_heads: int = 8, intermediate_size: int = 1024,
                 hidden_dropout: float = 0.4, attention_dropout: float = 0.5) -> None:
        super().__init__()
        if hidden_size % n_heads:
            raise MuzarrError(f"hidden_size={hidden_size} is not a multiple of n_heads={n_heads}")
        self.n_heads = n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.attention_out = nn.Linear(hidden_size, hidden_size)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.intermediate = nn.Linear(hidden_size, intermediate_size)
        self.activation = nn.GELU()
        self.output = nn.Linear(intermediate_size, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.hidden_dropout = nn.Dropout(hidden_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.n_heads, width // self.n_heads).transpose(1, 2)  # (B, H, N, D/H)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities ``[shape=(B, n_heads, n_tokens, n_tokens)]`` (before dropout)."""
        query, key = self._heads(self.query(x)), self._heads(self.key(x))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.attention_dropout(self.attention(x))
        context = torch.matmul(probs, self._heads(self.value(x)))  # (B, H, N, D/H)
        context = context.transpose(1, 2).reshape(x.shape)
        x = self.attention_norm(x + self.hidden_dropout(self.attention_out(context)))
        hidden = self.output(self.activation(self.intermediate(x)))
        return self.output_norm(x + self.hidden_dropout(hidden))


class CNNSA(WaveformMelModel):
    """Won, Chun, Serra, "Toward interpretable music tagging with self-attention", arXiv:1906.04972,
    2019 — CNN front end + Transformer (BERT) encoder (minzwon/sota-music-tagging-models
    ``training/model.py`` ``CNNSA``, ``attention_modules.py``).

    Raw 16 kHz waveform (240,000 samples = 15 s) → mel spectrogram (n_fft 512, hop 256, f_max
    8 kHz, 128 mels, power; torchaudio's HTK scale, no filter normalisation, reflect padding) →
    dB → BatchNorm2d(1) → seven :class:`Res2d` blocks (128, 128, 256 channels at stride 2, then
    four at 256 channels striding the mel axis only) → one 256-wide token per remaining frame
    (15 s: 938 frames → 469, 235, 118) → a fixed [CLS] token prepended → two BERT layers (8 heads,
    feed-forward 1024, dropout 0.4 on hidden states and 0.5 on attention probabilities) → BERT
    pooler (Linear + tanh on the [CLS] output) → dropout 0.5 → Linear(n_classes).

    As in the original, the tokens get no positional encoding (his ``BertEmbeddings`` and
    ``PositionalEncoding`` are imported but never called), so the encoder is order-blind past
    what the CNN's receptive field encodes. The [CLS] token is not learnt: it is
    ``numpy.random.seed(0); numpy.random.random(256)``, a constant buffer here (drawn without
    touching numpy's global state) and repeated for any batch size (the original stacks 64
    copies, so it fails on batches over 64).

    Parameters
    ----------
    input_shape : (n_samples,)
        Samples per chunk; any length over ``n_fft // 2`` (the reflect padding) works.
    **mel
        Mel front end settings, see :class:`~training.models.frontend.MelFrontend` (Won's). At
        most 128 mels, which the seven strides reduce to one row.
    n_channels : int
        Width of the first residual blocks; the later ones and the tokens are ``2 · n_channels``.
    n_layers, n_heads, intermediate_size, hidden_dropout, attention_dropout
        Encoder, see :class:`BertLayer`.

    Notes
    -----
    ``forward(x [shape=(B, n_samples)]) -> [shape=(B, n_classes)]`` logits (the original ends
    in a sigmoid); ``embed(x) -> [shape=(B, 2 · n_channels)]``, the pooled [CLS] output.
    """

    registry_name = "cnn_sa"
    mel_defaults = MelFrontend(n_mels=128)

    def __init__(self, n_classes: int = 50, input_shape: tuple[int] = (240000,), *, n_channels: int = 128,
                 n_layers: int = 2, n_heads: int = 8, intermediate_size: int = 1024, hidden_dropout: float = 0.4,
                 attention_dropout: float = 0.5, dropout: float = 0.5, **mel: Any) -> None:
        super().__init__(input_shape, **mel)
        check_hyperparameters(
            "cnn_sa",
            sizes={"n_channels": n_channels, "n_layers": n_layers, "n_heads": n_heads,
                   "intermediate_size": intermediate_size},
            rates={"hidden_dropout": hidden_dropout, "attention_dropout": attention_dropout, "dropout": dropout},
        )
        n_fft, n_mels = self.mel.n_fft, self.mel.n_mels
        if self.n_samples <= n_fft // 2:
            raise MuzarrError(
                f"cnn_sa: input_shape={tuple(input_shape)} is too short to reflect-pad one frame (n_fft={n_fft}); "
                f"give more than {n_fft // 2} samples"
            )
        if not 0 < n_mels <= 128:
            raise MuzarrError(f"cnn_sa: n_mels={n_mels} must be in 1..128, so that seven strides of 2 leave one row")
        self._add_log_mel()
        c = n_channels
        self.layers = nn.Sequential(
            Res2d(1, c, stride=2),
            Res2d(c, c, stride=2),
            Res2d(c, 2 * c, stride=2),
            *(Res2d(2 * c, 2 * c, stride=(2, 1)) for _ in range(4)),
        )
        width = 2 * c
        cls = np.random.RandomState(0).random_sample(width).astype(np.float32)
        self.register_buffer("cls_token", torch.from_numpy(cls), persistent=False)
        self.encoder = nn.ModuleList(
            BertLayer(
                hidden_size=width,
                n_heads=n_heads,
                intermediate_size=intermediate_size,
                hidden_dropout=hidden_dropout,
                attention_dropout=attention_dropout,
            )
            for _ in range(n_layers)
        )
        self.pooler = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self._add_head(width, n_classes, dropout)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder input ``[shape=(B, 1 + n_tokens, 2 · n_channels)]``: [CLS], then one token per CNN frame."""
        mel = self._log_mel(x)  # (B, 1, n_mels, n_frames)
        frames = self.layers(mel).squeeze(2).transpose(1, 2)  # (B, n_tokens, 2 · n_channels)
        cls = self.cls_token.to(frames.dtype).expand(frames.shape[0], 1, -1)
        return torch.cat([cls, frames], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.tokens(x)
        for layer in self.encoder:
            hidden = layer(hidden)
        return self.pooler(hidden[:, 0])
