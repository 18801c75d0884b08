"""Batched random augmentation on the training device, per-sample parameters.

Geometry (affine: rotation, translation, scale) comes from kornia; ``geometry="shift"``
replaces the affine warp by whole-pixel shifts, which copy pixels instead of resampling them.
The horizontal flip is a few lines here (kornia's took a third of a small batch's
augmentation on a CPU), drawing what kornia 0.9's ``RandomHorizontalFlip`` draws. Brightness and contrast are two lines of tensor arithmetic.
Calling the same :class:`BatchAugment` twice on one batch draws two independent
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
        warp: nn.Module = (
            K.RandomAffine(
                degrees=cfg.rotation_deg,
                translate=(cfg.translate, cfg.translate),
                scale=(cfg.scale_min, cfg.scale_max),
                padding_mode="border",
                p=1.0,
            )
            if cfg.geometry == "affine"
            else RandomShift(cfg.translate)
        )
        self.geometry = nn.Sequential(warp, RandomFlip(cfg.hflip))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.geometry(x)
        b = x.shape[0]
        shape = (b,) + (1,) * (x.ndim - 1)
        # both numbers are drawn whatever the ranges, so later draws keep their place; a zero
        # range makes its factor exactly 1 or its offset ±0 (added to a value that is never
        # −0), which change no bit, so that arithmetic is left out (quick's case)
        brightness = torch.rand(shape, device=x.device)
        contrast = torch.rand(shape, device=x.device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = x - mean
        if self.cfg.contrast != 0:
            out = out * (1 + (contrast * 2 - 1) * self.cfg.contrast)
        out = out + mean
        if self.cfg.brightness != 0:
            out = out + (brightness * 2 - 1) * self.cfg.brightness
        return out


class RandomShift(nn.Module):
    """:func:`shift` as a module, in the place of the affine warp."""

    def __init__(self, translate: float) -> None:
        super().__init__()
        self.translate = translate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shift(x, self.translate)


class RandomFlip(nn.Module):
    """Each image mirrored left to right with probability ``p``: one uniform number per
    image on the images' device, below ``p`` flips (none drawn when ``p`` is 0 or 1), as
    kornia 0.9's ``RandomHorizontalFlip`` decides, so runs keep their random numbers."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0:
            return x
        if self.p == 1:
            return x.flip(-1)
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(flip.view(-1, *(1,) * (x.ndim - 1)), x.flip(-1), x)


def shift(x: torch.Tensor, translate: float) -> torch.Tensor:
    """Shift each image by whole pixels, drawn uniformly from ±round(translate × side) per
    axis, repeating the border pixels into the space uncovered: every output pixel is a
    copy of an input pixel, so the image keeps its sharpness."""
    b, c, h, w = x.shape
    dy_max, dx_max = round(translate * h), round(translate * w)
    if dy_max == 0 and dx_max == 0:
        return x
    dy = torch.randint(-dy_max, dy_max + 1, (b, 1), device=x.device)
    dx = torch.randint(-dx_max, dx_max + 1, (b, 1), device=x.device)
    rows = (torch.arange(h, device=x.device) - dy).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=x.device) - dx).clamp_(0, w - 1)  # (B, W)
    # one gather over each image's flattened pixels (a third of the time of indexing with
    # four broadcast index tensors); the result has the standard strides: a view whose
    # strides also read as channels_last sent the CPU convolutions down a path 20 % slower
    source = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, source).view(b, c, h, w)
