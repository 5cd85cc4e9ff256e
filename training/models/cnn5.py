"""Seed 004's five-layer CNN on mel spectrograms (GTZAN)."""

from __future__ import annotations

from training.models.seed000 import MelCNN

__all__ = ["FiveLayerCNN"]


class FiveLayerCNN(MelCNN):
    """Five-block CNN of seed 004 (Zhang, UCD COMP47650, GTZAN 10 genres, 0.63 test accuracy).

    Five 3×3 "same" convolutions (8, 16, 32, 64, 128 channels) each BatchNorm → ReLU → 2×2
    max-pool; flatten → Linear(hidden) → ReLU → Linear(n_classes). The report fed 224×224 RGB
    renderings of the Kaggle spectrogram images (a 128×7×7 map); here the input is the stored
    one-channel log-mel itself, so the flattened size follows ``input_shape``. The same
    stack as seed 000's :class:`MelCNN`, with five narrower blocks and no dropout.

    Parameters, input and output are :class:`MelCNN`'s, with ``dropout`` fixed at 0.
    """

    registry_name = "cnn5"

    def __init__(
        self,
        n_classes: int = 10,
        input_shape: tuple[int, int] = (128, 1293),
        *,
        channels: tuple[int, ...] = (8, 16, 32, 64, 128),
        hidden: int = 128,
    ) -> None:
        super().__init__(n_classes, input_shape, channels=channels, hidden=hidden, dropout=0.0)
