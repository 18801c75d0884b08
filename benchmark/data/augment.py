"""Batched random augmentation on the training device, per-sample parameters.

Geometry (affine: rotation, translation, scale; horizontal flip) comes from
kornia; brightness and contrast are two lines of tensor arithmetic. Calling
the same :class:`BatchAugment` twice on one batch draws two independent
augmentations (the two views consistency methods need).
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from bmdbench.config import AugmentConfig


class BatchAugment(nn.Module):
    """``forward(x: (B, C, H, W) float in [0, 1]) -> (B, C, H, W)``; random per sample."""

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.geometry = nn.Sequential(
            K.RandomAffine(
                degrees=cfg.rotation_deg,
                translate=(cfg.translate, cfg.translate),
                scale=(cfg.scale_min, cfg.scale_max),
                padding_mode="border",
                p=1.0,
            ),
            K.RandomHorizontalFlip(p=cfg.hflip),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.geometry(x)
        b = x.shape[0]
        shape = (b,) + (1,) * (x.ndim - 1)
        brightness = (torch.rand(shape, device=x.device) * 2 - 1) * self.cfg.brightness
        contrast = 1 + (torch.rand(shape, device=x.device) * 2 - 1) * self.cfg.contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * contrast + mean + brightness
