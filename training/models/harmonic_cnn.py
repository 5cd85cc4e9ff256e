"""Won et al.'s Harmonic CNN: a learnable harmonic filter bank on the STFT, then a short-chunk CNN."""

from __future__ import annotations

import math

import librosa
import numpy as np
import torch
from torch import nn

from pipeline.errors import MuzarrError
from pipeline.features.base import n_frames
from training.models.blocks import ConvBlock2d, Tagger, check_hyperparameters, check_input_shape
from training.models.frontend import AmplitudeToDB, filtered_spectrogram

__all__ = ["HarmonicCNN", "HarmonicSTFT"]

# Glasberg & Moore's equivalent rectangular bandwidth, ERB(f) = 0.1079 f + 24.7 Hz: the
# bandwidth of a harmonic filter at Q = 1 (Won et al. 2020, eq. 2)
_ERB_SLOPE = 0.1079
_ERB_OFFSET_HZ = 24.7

# (rows, frames) pooled by each of the seven CNN blocks
_POOLS = ((2, 2), (2, 2), (2, 2), (2, 2), (2, 2), (2, 3), (2, 3))


class HarmonicSTFT(nn.Module):
    """Harmonic spectrogram: STFT power through triangular filters at ``n_harmonic`` multiples of each pitch, in dB.

    Won, Chun, Nieto, Serra, "Data-driven harmonic filters for audio representation learning",
    ICASSP 2020 (minzwon/sota-music-tagging-models ``training/modules.py`` ``HarmonicSTFT``).

    The pitches ``f0`` run from C1 up to the note nearest ``sample_rate / (2 · n_harmonic)``
    (so the top harmonic stays below Nyquist) in steps of ``1 / semitone_scale`` semitone. The
    filter of pitch ``f0`` and harmonic ``h`` is a triangle centred at ``h · f0``, peak 1, total
    width ``ERB(h · f0) / bw_Q`` with ``ERB(f) = 0.1079 f + 24.7 Hz``; ``bw_Q`` is one learnable
    scalar shared by all filters. The STFT is torchaudio's ``Spectrogram`` defaults, which the
    original relies on: periodic Hann window of ``n_fft``, centred frames with reflect padding,
    power 2; the dB conversion is torchaudio's ``AmplitudeToDB()`` (10 log10, floor 1e-10, no
    ``top_db``).

    Parameters
    ----------
    sample_rate : int
        Rate of the input waveform in Hz.
    n_fft : int
        FFT (and window) length in samples.
    hop_length : int
        Samples between frames (torchaudio's default ``n_fft // 2``).
    n_harmonic : int
        Harmonics per pitch, the output's channels.
    semitone_scale : int
        Pitches per semitone.
    bw_Q : float
        Initial quality factor: filter width is ``ERB / bw_Q``.
    learn_bw : bool
        Make ``bw_Q`` a parameter (Won's ``learn_bw="only_Q"``) or keep it fixed (``"fix"``).

    Notes
    -----
    Input ``waveform : torch.Tensor [shape=(..., n_samples)]``; output
    ``[shape=(..., n_harmonic, n_pitches, 1 + n_samples // hop_length)]`` in dB, float32 (or
    float64 for a float64 input). ``f0`` holds the ``n_harmonic · n_pitches`` centre frequencies
    in output order (harmonic-major: ``f0[h * n_pitches + p]`` is ``(h + 1)`` times pitch ``p``).
    """

    def __init__(self, *, sample_rate: int = 16000, n_fft: int = 512, hop_length: int = 256, n_harmonic: int = 6,
                 semitone_scale: int = 2, bw_Q: float = 1.0, learn_bw: bool = True) -> None:
        super().__init__()
        sizes = {
            "sample_rate": sample_rate,
            "n_fft": n_fft,
            "hop_length": hop_length,
            "n_harmonic": n_harmonic,
            "semitone_scale": semitone_scale,
        }
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise MuzarrError(f"HarmonicSTFT: {name}={value!r} must be a positive integer")
        if not bw_Q > 0:
            raise MuzarrError(f"HarmonicSTFT: bw_Q={bw_Q!r} must be positive")
        low_midi = int(librosa.note_to_midi("C1"))
        # rounded to the nearest note like the original (librosa.hz_to_note), which may be a
        # quarter tone sharp; the top pitch is one step below it, so no harmonic passes Nyquist
        high_midi = int(librosa.note_to_midi(librosa.hz_to_note(sample_rate / (2 * n_harmonic))))
        self.n_pitches = (high_midi - low_midi) * semitone_scale
        if self.n_pitches <= 0:
            raise MuzarrError(
                f"HarmonicSTFT: sample_rate={sample_rate} with n_harmonic={n_harmonic} leaves no pitch above C1 "
                f"whose harmonics stay below Nyquist; lower n_harmonic"
            )
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_harmonic = n_harmonic
        midi = np.linspace(low_midi, high_midi, self.n_pitches + 1)[:-1]
        pitches = librosa.midi_to_hz(midi)
        f0 = np.concatenate([pitches * h for h in range(1, n_harmonic + 1)]).astype(np.float32)
        self.register_buffer("f0", torch.from_numpy(f0), persistent=False)
        self.register_buffer("fft_hz", torch.fft.rfftfreq(n_fft, d=1.0 / sample_rate), persistent=False)
        q = torch.tensor([float(bw_Q)])
        if learn_bw:
            self.bw_Q = nn.Parameter(q)
        else:
            self.register_buffer("bw_Q", q)
        self.to_db = AmplitudeToDB()

    def filterbank(self) -> torch.Tensor:
        """The triangular filters, ``[shape=(n_fft // 2 + 1, n_harmonic · n_pitches)]``, differentiable in ``bw_Q``."""
        bandwidth = (_ERB_SLOPE * self.f0 + _ERB_OFFSET_HZ) / self.bw_Q  # (n_filters,)
        # 1 at f0, falling to 0 at f0 ± bandwidth / 2
        distance = (self.fft_hz[:, None] - self.f0[None, :]).abs()
        return torch.clamp(1.0 - 2.0 * distance / bandwidth, min=0.0)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        harmonic = filtered_spectrogram(waveform, self.filterbank().T, n_fft=self.n_fft, hop_length=self.hop_length)
        db = self.to_db(harmonic)  # (..., n_harmonic · n_pitches, n_frames)
        return db.reshape(*db.shape[:-2], self.n_harmonic, self.n_pitches, db.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"n_harmonic={self.n_harmonic}, n_pitches={self.n_pitches}"
        )


class _ResPool2d(nn.Module):
    """Won et al.'s ``Res_2d_mp``: two 3×3 conv+BN with an identity shortcut, ReLU, max-pool."""

    def __init__(self, channels: int, *, pool: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn_1 = nn.BatchNorm2d(channels)
        self.conv_2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn_2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_2(self.conv_2(self.relu(self.bn_1(self.conv_1(x)))))
        return self.pool(self.relu(x + out))


class HarmonicCNN(Tagger):
    """Won, Chun, Nieto, Serra, "Data-driven harmonic filters for audio representation learning",
    ICASSP 2020 — Harmonic CNN (minzwon/sota-music-tagging-models ``training/model.py``
    ``HarmonicCNN``, ``modules.py`` ``HarmonicSTFT`` and ``Res_2d_mp``).

    Raw 16 kHz waveform (80,000 samples = 5 s) → :class:`HarmonicSTFT` (6 harmonics × 128
    pitches, C1 to E6 in half semitones, learnable bandwidth ``bw_Q``) → BatchNorm2d over the
    harmonics → seven 3×3 blocks, each max-pooling: conv, three residual, conv, two residual
    (128, 128, 128, 128, 256, 256, 256 channels; the last two pool 2×3) → global max pool →
    Linear(256) → BatchNorm → ReLU → dropout 0.5 → Linear(n_classes).

    The harmonics are the input channels, so the first convolution sees, at each pitch, the
    energy of its whole harmonic series at once. Five seconds are 313 frames, which the pools
    (2⁵·3² = 288 frames) reduce to one; a longer input is max-pooled over what remains.

    Parameters
    ----------
    input_shape : (n_samples,)
        Samples per chunk, at least enough for 288 frames (73,472 at the default hop).
    sample_rate, n_fft, hop_length, n_harmonic, semitone_scale, bw_Q, learn_bw
        Harmonic front end, see :class:`HarmonicSTFT`. With other values than the defaults the
        pitch axis must still hold 128 rows or more (the seven row pools).
    n_channels : int
        Width of the first blocks (doubled from the fifth).

    Notes
    -----
    ``forward(x [shape=(B, n_samples)]) -> [shape=(B, n_classes)]`` logits (the original ends
    in a sigmoid); ``embed(x) -> [shape=(B, 2 · n_channels)]``.
    """

    def __init__(self, n_classes: int = 50, input_shape: tuple[int] = (80000,), *, sample_rate: int = 16000,
                 n_fft: int = 512, hop_length: int = 256, n_harmonic: int = 6, semitone_scale: int = 2,
                 bw_Q: float = 1.0, learn_bw: bool = True, n_channels: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        (n_samples,) = check_input_shape(input_shape, axes=("n_samples",), model="harmonic_cnn")
        check_hyperparameters(
            "harmonic_cnn",
            sizes={"sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length, "n_harmonic": n_harmonic,
                   "semitone_scale": semitone_scale, "n_channels": n_channels},
            rates={"dropout": dropout},
        )
        self.hstft = HarmonicSTFT(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_harmonic=n_harmonic,
            semitone_scale=semitone_scale,
            bw_Q=bw_Q,
            learn_bw=learn_bw,
        )
        min_rows = math.prod(rows for rows, _ in _POOLS)
        min_frames = math.prod(frames for _, frames in _POOLS)
        if self.hstft.n_pitches < min_rows:
            raise MuzarrError(
                f"harmonic_cnn: sample_rate={sample_rate}, n_harmonic={n_harmonic}, semitone_scale={semitone_scale} "
                f"give {self.hstft.n_pitches} pitches; the seven blocks need at least {min_rows}"
            )
        frames = n_frames(n_samples, hop_length=hop_length)
        if n_samples <= n_fft // 2 or frames < min_frames:
            raise MuzarrError(
                f"harmonic_cnn: input_shape={tuple(input_shape)} gives {frames} frames; the "
                f"seven blocks need at least {min_frames}, i.e. n_samples >= {(min_frames - 1) * hop_length}"
            )
        self.spec_bn = nn.BatchNorm2d(n_harmonic)
        c = n_channels
        self.layers = nn.Sequential(
            ConvBlock2d(n_harmonic, c, pool=_POOLS[0]),
            _ResPool2d(c, pool=_POOLS[1]),
            _ResPool2d(c, pool=_POOLS[2]),
            _ResPool2d(c, pool=_POOLS[3]),
            ConvBlock2d(c, 2 * c, pool=_POOLS[4]),
            _ResPool2d(2 * c, pool=_POOLS[5]),
            _ResPool2d(2 * c, pool=_POOLS[6]),
        )
        self._add_head(2 * c, n_classes, dropout, dense=True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec_bn(self.hstft(x))  # (B, n_harmonic, n_pitches, n_frames)
        maps = self.layers(spec)  # (B, 2 · n_channels, n_pitches / 128, n_frames / 288)
        return self.dense(maps.amax(dim=(2, 3)))
