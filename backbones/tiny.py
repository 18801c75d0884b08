"""A very small conv net for tests: runs in milliseconds on a CPU."""

from __future__ import annotations

import torch
from torch import nn

from bmdbench.backbones._base import BACKBONES, Backbone


class TinyNet(Backbone):
    """Three stride-2 conv3×3-BN-ReLU layers (8, 16, 16 channels) → GAP → ``(B, 16)``."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (8, 16, 16)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


@BACKBONES.register("tiny")
def tiny(in_chans: int = 1) -> TinyNet:
    """A test backbone: 3 conv layers, 16-d embedding, ≈ 3.6 k parameters."""
    return TinyNet(in_chans=in_chans)
