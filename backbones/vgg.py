"""VGG with batch norm, and VGG-11-BN with squeeze-and-excitation (the paper's backbone).

As in the paper, the two 4096-wide fully connected layers are replaced by
global average pooling: conv features → GAP → a 512-d embedding. timm's VGG
class always builds a 4096-wide ``pre_logits`` block (≈ 103 M parameters), so
it is not used; ``features`` is built here from timm's layer configurations,
laid out with the same indices as torchvision's and timm's ``features``
(``conv3×3, BN, ReLU`` per conv, ``MaxPool2d(2)`` per stage end), so
``features.{i}.*`` keys of their checkpoints load unchanged.

timm is imported when a VGG is built, not when the factories register, so that listing
the backbones does not import it (see :mod:`bmdbench.backbones`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bmdbench.backbones._base import BACKBONES, Backbone


class VGG(Backbone):
    """VGG-BN features → (optional SE blocks) → global average pooling → ``(B, 512)``.

    ``cfg`` lists conv widths and ``"M"`` (max-pool), as in ``timm.models.vgg.cfgs``.
    With ``se_reduction`` set, an SE block (``timm.layers.SEModule``, bottleneck
    ``channels // se_reduction``) follows the ReLU of the last conv of each stage,
    just before that stage's max-pool. The SE blocks live in ``self.se`` (keys
    ``se.{stage}.*``), apart from ``features``, so a plain VGG-BN checkpoint
    loads into ``features`` and the SE blocks start fresh.
    """

    def __init__(
        self, cfg: Sequence[int | str], in_chans: int = 1, se_reduction: int | None = None
    ) -> None:
        super().__init__()
        from timm.layers import SEModule  # when built (the module docstring says why)

        layers: list[nn.Module] = []
        se_blocks: list[nn.Module] = []
        self._se_before: dict[int, int] = {}  # index in features of a max-pool → SE block index
        channels = in_chans
        for v in cfg:
            if v == "M":
                if se_reduction is not None:
                    self._se_before[len(layers)] = len(se_blocks)
                    se_blocks.append(
                        SEModule(channels, rd_channels=max(1, channels // se_reduction))
                    )
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int), f"bad VGG cfg entry {v!r}"
                layers += [
                    nn.Conv2d(channels, v, kernel_size=3, padding=1),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                channels = v
        self.features = nn.Sequential(*layers)
        self.se = nn.ModuleList(se_blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = channels
        self.fresh_prefixes = ("se.",) if se_blocks else ()
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's and timm's VGG initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.features):
            if i in self._se_before:
                x = self.se[self._se_before[i]](x)
            x = layer(x)
        return self.pool(x).flatten(1)


def _cfg(depth: str) -> list[int | str]:
    """timm's layer configuration of VGG-``depth`` ("vgg11", …)."""
    from timm.models.vgg import cfgs  # when built (the module docstring says why)

    return list(cfgs[depth])


@BACKBONES.register("vgg11_bn")
def vgg11_bn(in_chans: int = 1) -> VGG:
    """VGG-11 with batch norm, GAP head, 512-d embedding."""
    return VGG(_cfg("vgg11"), in_chans=in_chans)


@BACKBONES.register("vgg13_bn")
def vgg13_bn(in_chans: int = 1) -> VGG:
    """VGG-13 with batch norm, GAP head, 512-d embedding."""
    return VGG(_cfg("vgg13"), in_chans=in_chans)


@BACKBONES.register("vgg16_bn")
def vgg16_bn(in_chans: int = 1) -> VGG:
    """VGG-16 with batch norm, GAP head, 512-d embedding."""
    return VGG(_cfg("vgg16"), in_chans=in_chans)


@BACKBONES.register("vgg11_bn_se")
def vgg11_bn_se(in_chans: int = 1) -> VGG:
    """The paper's backbone: VGG-11-BN with an SE block (reduction 16) ending each of the
    5 stages, GAP head, 512-d embedding."""
    return VGG(_cfg("vgg11"), in_chans=in_chans, se_reduction=16)
