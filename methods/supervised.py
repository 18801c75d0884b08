"""Stage-1 methods: supervised training on labeled images (the paper's Section 2.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bmdbench.config import at_least
from bmdbench.data.module import Batch
from bmdbench.methods.base import (
    MARGIN,
    METHODS,
    TRIPLET_PRESETS,
    TRIPLET_WEIGHT,
    FitContext,
    Method,
    Range,
)
from bmdbench.methods.losses import batch_triplet_loss, masked_mse, raw_triplet_scale


@METHODS.register("baseline")
class Baseline(Method):
    """Supervised regression with the MSE loss alone."""

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, pred = self.regressor(ctx.augment(batch.images))
        mse = masked_mse(pred, batch.targets, batch.labeled)
        return {"loss": mse, "mse": mse}


@dataclass(frozen=True)
class TripletParams:
    # λ, weight of the triplet term (equation 5)
    weight: float = field(default=0.5, metadata=at_least(0))
    margin: float = field(default=0.5, metadata=at_least(0))  # m, the triplet margin


class _TripletMethod(Method):
    adaptive: bool
    Params = TripletParams
    presets: ClassVar[dict[str, dict[str, Any]]] = TRIPLET_PRESETS
    search_space: ClassVar[dict[str, Range]] = {"margin": MARGIN, "weight": TRIPLET_WEIGHT}

    @classmethod
    def raw_scale(cls, hparams: Mapping[str, Any], target_sd: float) -> tuple[float, float]:
        return raw_triplet_scale(hparams["weight"], hparams["margin"], target_sd, cls.adaptive)

    @classmethod
    def min_batch_size(cls, params: Any) -> tuple[int, str]:
        return 3, "a triplet needs three images of one batch"

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        embedding, pred = self.regressor(ctx.augment(batch.images))
        mse = masked_mse(pred, batch.targets, batch.labeled)
        triplet = batch_triplet_loss(embedding, batch.targets, self.params.margin, self.adaptive)
        return {"loss": mse + self.params.weight * triplet, "mse": mse, "triplet": triplet}


@METHODS.register("triplet")
class Triplet(_TripletMethod):
    """MSE + λ·triplet loss with a fixed margin (α = 1): the ablation of Table 3."""

    adaptive = False


@METHODS.register("atl")
class AdaptiveTriplet(_TripletMethod):
    """MSE + λ·adaptive triplet loss, margin scaled by the triplet's BMD differences (eq. 3–5)."""

    adaptive = True
    tune_default = ("margin", "lambda")  # Table 3's subject
