"""The :class:`Backbone` base class and the :data:`BACKBONES` registry."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bmdbench.registry import Registry


class Backbone(nn.Module):
    """An image encoder: ``forward(x)`` maps ``(B, in_chans, H, W)`` floats to ``(B, embed_dim)``.

    Subclasses set :attr:`embed_dim` in ``__init__``. Three hooks serve
    :func:`bmdbench.backbones.pretrained.load_pretrained`:

    - :attr:`checkpoint_root`: the module whose ``state_dict`` keys match the
      torchvision/timm checkpoint layout (a wrapper returns the wrapped model);
    - :attr:`fresh_prefixes`: key prefixes that a checkpoint may lack, because
      they have no counterpart in the original architecture (the SE blocks of
      ``vgg11_bn_se``); they keep their random initialisation;
    - :attr:`classifier_names`: first key components (besides ``classifier``,
      ``head``, ``fc``, ``pre_logits``) of a checkpoint's classification head,
      dropped on loading when the backbone has no such parameters.
    """

    embed_dim: int
    fresh_prefixes: tuple[str, ...] = ()
    classifier_names: tuple[str, ...] = ()

    @property
    def checkpoint_root(self) -> nn.Module:
        return self


BackboneFactory = Callable[..., Backbone]
"""``factory(in_chans: int = 1) -> Backbone``."""

BACKBONES: Registry[BackboneFactory] = Registry(
    "backbone",
    "bmdbench.backbones",  # plug-ins: NAME = "module:factory"
    callable,
    "a backbone factory, factory(in_chans: int = 1) -> Backbone",
)
