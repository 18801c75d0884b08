"""Loading local pretrained weights (torchvision or timm layout) into a backbone.

Nothing is downloaded: the user passes a file, e.g. one saved with
``torch.save(torchvision.models.vgg11_bn(weights=...).state_dict(), path)`` or a
timm model's ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bmdbench.backbones._base import Backbone
from bmdbench.errors import CheckpointError

HEAD_NAMES = frozenset({"classifier", "head", "fc", "pre_logits", "last_linear"})
"""First key components of classifier heads; such checkpoint keys are dropped when the
backbone has no parameter of that name (the backbone's GAP embedding replaces them)."""

_SAME_ARCH = "pass weights saved from the same architecture (torchvision or timm layout)"


def load_pretrained(backbone: Backbone, path: str | Path, name: str) -> None:
    """Load the weights in ``path`` into ``backbone`` (called ``name`` in messages), in place.

    Accepts a raw state_dict or a dict holding one under ``state_dict`` or
    ``model``; strips ``module.`` prefixes (DataParallel/DDP); drops classifier
    keys the backbone lacks; sums a 3-channel first conv into ``in_chans``
    channels (``timm.models.adapt_input_conv``). Every other key must match the
    backbone's by name and shape, and every backbone key must be present except
    those under ``backbone.fresh_prefixes`` (SE blocks) and BN
    ``num_batches_tracked`` counters. Anything else raises :class:`CheckpointError`.
    """
    path = Path(path)
    state = _read_state_dict(path)
    root = backbone.checkpoint_root
    expected = root.state_dict()
    head_names = HEAD_NAMES | set(backbone.classifier_names)

    state = {k: v for k, v in state.items() if k in expected or k.split(".")[0] not in head_names}
    matching = [k for k in state if k in expected]
    if not matching:
        example = next(iter(state), "none")
        raise CheckpointError(
            f"{path} has no weights for backbone {name!r} (its keys look like {example!r})",
            _SAME_ARCH,
        )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"{path} holds {len(unexpected)} weights backbone {name!r} does not have "
            f"(first: {unexpected[0]!r})",
            _SAME_ARCH,
        )
    for key in matching:
        want, got = expected[key].shape, state[key].shape
        if got == want:
            continue
        if _is_input_conv_mismatch(got, want):
            from timm.models import adapt_input_conv  # timm: only for such a checkpoint

            state[key] = adapt_input_conv(want[1], state[key])
            continue
        raise CheckpointError(
            f"{path}: {key!r} has shape {tuple(got)} but backbone {name!r} expects {tuple(want)}",
            _SAME_ARCH,
        )
    missing = [
        k
        for k in expected
        if k not in state
        and not k.endswith("num_batches_tracked")
        and not k.startswith(backbone.fresh_prefixes)
    ]
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} weights of backbone {name!r} (first: {missing[0]!r})",
            _SAME_ARCH,
        )
    root.load_state_dict(state, strict=False)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        raise CheckpointError(
            f"pretrained weights file {path} is a folder",
            "give the weights file itself (written by torch.save)",
        )
    if not path.is_file():
        raise CheckpointError(
            f"pretrained weights file {path} does not exist",
            "check the path, or leave pretrained unset to start from random weights",
        )
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean the same here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot load {path} ({type(exc).__name__}: {reason})",
            "pass a file written by torch.save holding a state_dict "
            "(loaded with weights_only=True: tensors and plain containers only)",
        ) from exc
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    state = (
        {_strip_module(str(k)): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, Mapping)
        else {}
    )
    if not state:
        raise CheckpointError(
            f"{path} holds no state_dict (found {type(obj).__name__} without tensors)",
            "save the weights with torch.save(model.state_dict(), path)",
        )
    return state


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _is_input_conv_mismatch(got: torch.Size, want: torch.Size) -> bool:
    """An RGB first conv (``(O, 3, k, k)``) where the backbone expects ``(O, C, k, k)``."""
    return (
        len(got) == 4
        and len(want) == 4
        and got[1] == 3
        and want[1] != 3
        and got[0] == want[0]
        and got[2:] == want[2:]
    )
