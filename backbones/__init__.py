"""Backbones: image encoders mapping ``(B, 1, H, W)`` X-rays to ``(B, embed_dim)`` embeddings.

Registered (in this order): ``vgg11_bn``, ``vgg13_bn``, ``vgg16_bn``,
``vgg11_bn_se`` (the paper's backbone), ``resnet18``, ``resnet34``,
``resnet50`` and ``tiny`` (for tests); those of installed plug-ins (entry-point group
``bmdbench.backbones``, each naming a :data:`BackboneFactory`) follow on the first lookup.
:func:`build_backbone` also accepts any timm model name (``timm.list_models()``), created
with ``pretrained=False`` and ``num_classes=0``. The regressor built on top is backbone →
``Linear(embed_dim, 1)``.

timm (with torchvision under it: about 2 s of imports) is imported when a timm model is
built or an unregistered name is looked up, not with this package, so that listing and
checking the registered names stays quick.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# isort: off
# Importing these modules registers their backbones; the import order is the listing order.
from bmdbench.backbones import vgg, timm_backbone, tiny  # noqa: F401

# isort: on
from bmdbench.backbones._base import BACKBONES, Backbone, BackboneFactory
from bmdbench.backbones.pretrained import load_pretrained
from bmdbench.backbones.timm_backbone import TimmBackbone
from bmdbench.errors import ConfigError
from bmdbench.registry import unknown

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneFactory",
    "TimmBackbone",
    "backbone_names",
    "build_backbone",
    "check_backbone",
    "check_name",
    "count_parameters",
    "load_pretrained",
]


def backbone_names(pattern: str = "*") -> list[str]:
    """Registered backbone names matching the wildcard ``pattern``, in registration order."""
    return BACKBONES.names(pattern)


def build_backbone(name: str, pretrained: str | Path | None = None, in_chans: int = 1) -> Backbone:
    """Create the backbone ``name`` for ``in_chans``-channel images.

    ``name`` is a registered backbone or any timm model name. ``pretrained`` is
    a local weights file (see :func:`load_pretrained`); ``None`` means random
    initialisation. Unknown names raise :class:`ConfigError`; unusable weights
    :class:`~bmdbench.errors.CheckpointError`.
    """
    check_name(name)
    if name in BACKBONES:
        backbone = BACKBONES.get(name)(in_chans=in_chans)
    else:
        backbone = TimmBackbone(name, in_chans=in_chans)
    if pretrained is not None:
        load_pretrained(backbone, pretrained, name)
    return backbone


def check_backbone(name: str, pretrained: str | Path | None, size: tuple[int, int]) -> None:
    """Build ``name`` with its ``pretrained`` weights and pass one single-channel image of
    ``size`` (H, W) through it on the meta device (shapes only, no arithmetic), so that an
    unknown name, unusable weights or images the network cannot take fail before a run
    starts (:class:`ConfigError`, :class:`~bmdbench.errors.CheckpointError`)."""
    backbone = build_backbone(name, pretrained).eval().to("meta")
    try:
        with torch.no_grad():
            features = backbone(torch.zeros(1, 1, *size, device="meta"))
    except NotImplementedError:  # an operation without a meta kernel: the run will tell
        return
    except (RuntimeError, ValueError, AssertionError) as exc:  # timm asserts input sizes
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise ConfigError(
            f"backbone {name!r} cannot take {size[0]}×{size[1]}-pixel images ({reason})",
            "raise image_size (--set image_size=...) or choose another backbone",
        ) from None
    if tuple(features.shape) != (1, backbone.embed_dim):
        raise ConfigError(
            f"backbone {name!r} gives features of shape {tuple(features.shape)[1:]}, "
            f"not ({backbone.embed_dim},)",
            "choose a backbone that pools its features (bmdbench list backbones)",
        )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


TIMM_NAMES = "or any timm model name (timm.list_models())"


def check_name(name: str) -> None:
    """Raise :class:`ConfigError`, naming the closest, unless ``name`` is a registered
    backbone or a timm model name (an architecture, with or without a pretrained tag)."""
    if name in BACKBONES:
        return
    import timm  # only for a name the registry does not hold (the module docstring says why)

    if not timm.is_model(name):
        raise unknown("backbone", name, backbone_names(), TIMM_NAMES, timm.list_models())
