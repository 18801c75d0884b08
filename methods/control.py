"""The equal-compute supervised controls: what stage 2 gives without unlabeled images.

A stage-2 method fine-tunes its stage-1 parent for stage 2's optimiser steps, at stage 2's
rate and schedule. Part of any gain over the parent comes from that training alone. A
control fine-tunes the same parent with the same steps, schedule and selection rule on
validation (its stage-1 weights compete, so it never ends below its parent on validation),
and sees no unlabeled image: the difference between a method and its parent's control is
the gain from the unlabeled data.

Its batches: ``stage2.batch_size`` labeled images on every step, from back-to-back
shuffles of the labeled training set (:meth:`bmdbench.data.module.DataModule.labeled_batches`).
A two-stream method's step sees ``stage2.labeled_per_batch`` labeled images beside unlabeled
ones; the control spends the whole batch on labels, the most a supervised learner can do
with a step of the same size. Its loss is its parent's: MSE (``control``), or MSE + λ·ATL
(``control_atl``, λ and m as the ``atl`` parent's, and as its stage-2 methods' supervised
term).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bmdbench.config import at_least
from bmdbench.data.module import Batch
from bmdbench.methods.base import METHODS, STAGE1, TRIPLET_PRESETS, FitContext, Method
from bmdbench.methods.losses import batch_triplet_loss, masked_mse, raw_triplet_scale


@dataclass(frozen=True)
class ControlParams:
    # stage-1 method whose checkpoint this control fine-tunes
    stage1: str = field(default="baseline", metadata=STAGE1)


@METHODS.register("control")
class Control(Method):
    """Equal-compute supervised control: the baseline fine-tuned for stage 2's steps, labeled images only."""

    Params = ControlParams
    stage = 2
    labeled_only = True

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, pred = self.regressor(ctx.augment(batch.images))
        mse = masked_mse(pred, batch.targets, batch.labeled)
        return {"loss": mse, "mse": mse}


@dataclass(frozen=True)
class ControlAtlParams:
    # stage-1 method whose checkpoint this control fine-tunes
    stage1: str = field(default="atl", metadata=STAGE1)
    # λ, weight of the adaptive triplet loss (as the parent's)
    weight: float = field(default=0.5, metadata=at_least(0))
    margin: float = field(default=0.5, metadata=at_least(0))  # m, the ATL margin


@METHODS.register("control_atl")
class ControlAtl(Method):
    """Equal-compute supervised control of the ATL methods: atl fine-tuned for stage 2's steps with MSE + λ·ATL, labeled images only."""

    Params = ControlAtlParams
    presets: ClassVar[dict[str, dict[str, Any]]] = TRIPLET_PRESETS  # as its parent's
    stage = 2
    labeled_only = True

    @classmethod
    def min_batch_size(cls, params: Any) -> tuple[int, str]:
        return 3, "a triplet needs three images of one batch"

    @classmethod
    def raw_scale(cls, hparams: Mapping[str, Any], target_sd: float) -> tuple[float, float]:
        return raw_triplet_scale(hparams["weight"], hparams["margin"], target_sd, adaptive=True)

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        embedding, pred = self.regressor(ctx.augment(batch.images))
        mse = masked_mse(pred, batch.targets, batch.labeled)
        labeled = batch.labeled
        atl = batch_triplet_loss(
            embedding[labeled], batch.targets[labeled], self.params.margin, adaptive=True
        )
        return {"loss": mse + self.params.weight * atl, "mse": mse, "atl": atl}


def control_for(parent: str) -> str | None:
    """The registered control that fine-tunes ``parent`` (a stage-1 method) by default, or
    None when no control has that parent."""
    for name in METHODS:
        method = METHODS.get(name)
        if method.labeled_only and getattr(method.Params(), "stage1", None) == parent:
            return name
    return None
