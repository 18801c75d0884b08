"""timm models as backbones: the registered ResNets, and any other timm model by name."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from bmdbench.backbones._base import BACKBONES, Backbone


class TimmBackbone(Backbone):
    """A timm model created with ``num_classes=0``: its forward returns pooled features.

    The model sits in ``self.model``; :attr:`checkpoint_root` points at it, so
    timm/torchvision checkpoints (``conv1.weight``, ``layer1.0.…``) load without
    a prefix. ``embed_dim`` is the width of the pooled features (timm's
    ``head_hidden_size``, else ``num_features``). ``model_args`` go to the model's
    constructor.
    """

    def __init__(self, name: str, in_chans: int = 1, **model_args: Any) -> None:
        super().__init__()
        import timm  # when a model is built, not when the ResNets register (see bmdbench.backbones)

        self.model = timm.create_model(
            name, pretrained=False, num_classes=0, in_chans=in_chans, **model_args
        )
        # the width of forward's output: ``head_hidden_size`` where a model has a pre-logits
        # layer kept with num_classes=0 (MobileNetV3: 1024, its num_features is 288)
        width = getattr(self.model, "head_hidden_size", None) or self.model.num_features
        self.embed_dim = int(cast(int, width))
        self.classifier_names = _classifier_names(self.model)

    @property
    def checkpoint_root(self) -> nn.Module:
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    """First key components of the model's classifier per its timm pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or ()
    if isinstance(classifier, str):
        classifier = (classifier,)
    return tuple(str(c).split(".")[0] for c in classifier)


RESNET_ARGS = {"zero_init_last": False}
"""The registered ResNets start with every residual branch active, as torchvision's do.

timm zero-initialises the last batch-norm scale of each residual block
(``zero_init_last``, Goyal et al.'s trick for large-batch ImageNet training), so that each
block starts as the identity. In this benchmark's short supervised stages it slowed
learning: on RSNA bone age at 32 px (440 labeled images, 20 epochs, seed 0), resnet18
reached validation R 0.394 with it and 0.483 without (README, "The supervised loop")."""


@BACKBONES.register("resnet18")
def resnet18(in_chans: int = 1) -> TimmBackbone:
    """timm ResNet-18, 512-d embedding."""
    return TimmBackbone("resnet18", in_chans=in_chans, **RESNET_ARGS)


@BACKBONES.register("resnet34")
def resnet34(in_chans: int = 1) -> TimmBackbone:
    """timm ResNet-34, 512-d embedding."""
    return TimmBackbone("resnet34", in_chans=in_chans, **RESNET_ARGS)


@BACKBONES.register("resnet50")
def resnet50(in_chans: int = 1) -> TimmBackbone:
    """timm ResNet-50, 2048-d embedding."""
    return TimmBackbone("resnet50", in_chans=in_chans, **RESNET_ARGS)
