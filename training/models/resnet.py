"""ResNet-18 on a one-channel log-mel spectrogram (seed 003)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.blocks import BasicBlock, check_hyperparameters, check_input_shape, init_like_torchvision

__all__ = ["ResNet18"]


class ResNet18(nn.Module):
    """He, Zhang, Ren, Sun, "Deep residual learning for image recognition", CVPR 2016 — the
    18-layer pattern, on a one-channel spectrogram as in seed 003 (Bastola, Subedi, Lozoya,
    CS 491/591, Kaggle genre classification).

    Stem: 7×7/2 conv (no bias) → BatchNorm → ReLU → 3×3/2 max-pool; four stages of
    ``blocks`` :class:`BasicBlock` each, ``widths`` channels, stride 2 from the second stage;
    global average pool; Linear(n_classes). Written here because torchvision cannot be
    installed; same layers and initialisation as ``torchvision.models.resnet18`` except the
    first convolution takes one channel.

    Parameters
    ----------
    n_classes : int
        Number of outputs (logits).
    input_shape : (n_mels, n_frames)
        Per-example log-mel shape; the model itself accepts any size.
    widths : tuple of int
        Channels of the four stages.
    blocks : tuple of int
        Basic blocks per stage.

    Notes
    -----
    ``forward(x [shape=(B, n_mels, n_frames)]) -> [shape=(B, n_classes)]`` logits;
    ``embed(x) -> [shape=(B, widths[-1])]`` (the pooled features).
    """

    def __init__(
        self,
        n_classes: int = 10,
        input_shape: tuple[int, int] = (128, 1293),
        *,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        # any size works: padded strides never shrink an axis below one
        check_input_shape(input_shape, axes=("n_mels", "n_frames"), model="resnet18")
        check_hyperparameters("resnet18", sizes={"widths": widths, "blocks": blocks})
        if len(widths) != len(blocks):
            raise MuzarrError(f"resnet18: widths={widths} and blocks={blocks} must have the same length")
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        in_channels = widths[0]
        for index, (width, n_blocks) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(in_channels, width, stride=stride)]
            layers += [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], n_classes)
        init_like_torchvision(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.stages(self.stem(x.unsqueeze(1)))  # (B, 512, F/32, T/32)
        return self.pool(maps).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
