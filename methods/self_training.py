"""Pseudo-labelling and the paper's semi-supervised self-training (Section 2.2, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bmdbench.config import at_least
from bmdbench.data.module import Batch
from bmdbench.methods.base import (
    CONSISTENCY_WEIGHT,
    MARGIN,
    METHODS,
    STAGE1,
    TRIPLET_PRESETS,
    TRIPLET_WEIGHT,
    FitContext,
    Method,
    Range,
)
from bmdbench.methods.losses import (
    batch_triplet_loss,
    consistency,
    masked_mse,
    raw_triplet_scale,
)


@dataclass(frozen=True)
class PseudoLabelParams:
    # stage-1 method whose checkpoint this method fine-tunes
    stage1: str = field(default="baseline", metadata=STAGE1)
    # λ, weight of the adaptive triplet loss (0: MSE only)
    weight: float = field(default=0.0, metadata=at_least(0))
    margin: float = field(default=0.5, metadata=at_least(0))  # m, the ATL margin


class PseudoLabelTraining(Method):
    """Fine-tuning on labeled ∪ pseudo-labeled images; pseudo labels live in ``self.pseudo``."""

    stage = 2
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("mse_pseudo",)
    pseudo: torch.Tensor  # (pool_size,) loss-space targets: labels, pseudo labels, NaN for none
    # whether every pool image has a (pseudo) label, read once per refresh (False: the mask
    # of the images with one selects them, which is right in any case)
    complete = False

    @classmethod
    def min_batch_size(cls, params: Any) -> tuple[int, str]:
        if params.weight > 0:
            return 3, "with weight > 0 its triplet loss needs three images of one batch"
        return super().min_batch_size(params)

    @classmethod
    def raw_scale(cls, hparams: Mapping[str, Any], target_sd: float) -> tuple[float, float]:
        return raw_triplet_scale(hparams["weight"], hparams["margin"], target_sd, adaptive=True)

    def on_stage_start(self, ctx: FitContext) -> None:
        """Start with labels only: unlabeled images have no pseudo label (NaN) yet."""
        self.register_buffer("pseudo", ctx.pool_targets.clone(), persistent=False)
        self.complete = bool(torch.isfinite(self.pseudo).all())

    def refresh(self, ctx: FitContext) -> None:
        """Predict every pool image with the current regressor (eval mode, no augmentation)."""
        predictions = ctx.predict_pool(lambda x: self.regressor(x)[1])
        labeled = torch.isfinite(ctx.pool_targets)
        self.pseudo.copy_(torch.where(labeled, ctx.pool_targets, predictions))
        self.complete = bool(torch.isfinite(self.pseudo).all())

    def supervised_terms(
        self, embedding: torch.Tensor, pred: torch.Tensor, batch: Batch
    ) -> dict[str, torch.Tensor]:
        """MSE over labeled ∪ pseudo-labeled images (and its two parts), plus λ·ATL."""
        targets = self.pseudo[batch.index]
        known = torch.isfinite(targets)  # unlabeled images without a pseudo label yet: none
        terms = {
            "mse": masked_mse(pred, targets, known),
            "mse_labeled": masked_mse(pred, targets, batch.labeled),
            "mse_pseudo": masked_mse(pred, targets, known & ~batch.labeled),
        }
        if self.params.weight > 0:
            # the images with a target, by their positions once every pool image has one: the
            # same selection, without the device-to-host copy a boolean mask costs on a GPU
            rows = torch.arange(len(targets), device=targets.device) if self.complete else known
            terms["atl"] = batch_triplet_loss(
                embedding[rows], targets[rows], self.params.margin, adaptive=True
            )
        return terms

    def unlabeled_estimates(self, ctx: FitContext) -> torch.Tensor:
        return self.pseudo


class PseudoLabelsOnce(PseudoLabelTraining):
    """Pseudo labels predicted once, by the stage-1 model, before the first epoch."""

    Params = PseudoLabelParams

    def on_stage_start(self, ctx: FitContext) -> None:
        super().on_stage_start(ctx)
        self.refresh(ctx)

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        embedding, pred = self.regressor(ctx.augment(batch.images))
        terms = self.supervised_terms(embedding, pred, batch)
        loss = terms["mse"] + self.params.weight * terms.get("atl", 0.0)
        return {"loss": loss, **terms}


@METHODS.register("pseudo_label")
class PseudoLabel(PseudoLabelsOnce):
    """Pseudo labels predicted once by the stage-1 model; MSE on labeled ∪ pseudo-labeled (SSL)."""


@dataclass(frozen=True)
class PseudoLabelATLParams(PseudoLabelParams):
    stage1: str = field(default="atl", metadata=STAGE1)
    weight: float = field(default=0.5, metadata=at_least(0))


@METHODS.register("pseudo_label_atl")
class PseudoLabelATL(PseudoLabelsOnce):
    """Pseudo labels predicted once by the ATL model; MSE + λ·ATL on both (SSL + ATL)."""

    Params = PseudoLabelATLParams
    presets: ClassVar[dict[str, dict[str, Any]]] = TRIPLET_PRESETS
    search_space: ClassVar[dict[str, Range]] = {"margin": MARGIN, "weight": TRIPLET_WEIGHT}


@dataclass(frozen=True)
class SelfTrainingParams:
    # stage-1 method whose checkpoint this method fine-tunes
    stage1: str = field(default="atl", metadata=STAGE1)
    # λ, weight of the adaptive triplet loss
    weight: float = field(default=0.5, metadata=at_least(0))
    margin: float = field(default=0.5, metadata=at_least(0))  # m, the ATL margin
    # λ′, weight of the two-view consistency loss (equation 6)
    consistency_weight: float = field(default=1.0, metadata=at_least(0))


@METHODS.register("proposed")
class SelfTraining(PseudoLabelTraining):
    """The paper's self-training: pseudo labels refreshed when val R rises and MSE falls (Alg. 1)."""

    Params = SelfTrainingParams
    presets: ClassVar[dict[str, dict[str, Any]]] = TRIPLET_PRESETS
    search_space: ClassVar[dict[str, Range]] = {
        "margin": MARGIN,
        "weight": TRIPLET_WEIGHT,
        "consistency_weight": CONSISTENCY_WEIGHT,
    }
    tune_default = ("consistency", "lr", "all")  # the paper's method
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("mse_pseudo", "consistency")

    def on_stage_start(self, ctx: FitContext) -> None:
        super().on_stage_start(ctx)
        self.best_r, self.best_mse, self.refreshes = 0.0, float("inf"), 0  # Algorithm 1, line 1

    def on_epoch_start(self, ctx: FitContext) -> None:
        """Algorithm 1, lines 5–9: refresh only when R is higher AND MSE lower than the bests."""
        r, mse = ctx.val["pearson_r"], ctx.val["rmse"] ** 2
        refresh = should_refresh(r, mse, self.best_r, self.best_mse)
        if refresh:
            self.best_r, self.best_mse = r, mse
            self.refresh(ctx)
            self.refreshes += 1
        ctx.log["pseudo_refreshed"] = float(refresh)
        ctx.log["pseudo_refreshes"] = float(self.refreshes)

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        """Both views carry the (pseudo) targets; Lc ties their embeddings and predictions.

        With λ′ = 0 there is no Lc and one view is drawn, so the ablation differs from
        ``proposed`` in the consistency term alone.
        """
        p = self.params
        f1, y1 = self.regressor(ctx.augment(batch.images))
        if p.consistency_weight == 0:
            terms = self.supervised_terms(f1, y1, batch)
            terms.setdefault("atl", torch.zeros((), device=y1.device))
            return {"loss": terms["mse"] + p.weight * terms["atl"], **terms}
        f2, y2 = self.regressor(ctx.augment(batch.images))
        view1 = self.supervised_terms(f1, y1, batch)
        view2 = self.supervised_terms(f2, y2, batch)
        terms = {k: (view1[k] + view2[k]) / 2 for k in view1}
        terms.setdefault("atl", torch.zeros((), device=y1.device))
        terms["consistency"] = consistency(f1, f2, y1, y2)
        loss = terms["mse"] + p.weight * terms["atl"] + p.consistency_weight * terms["consistency"]
        return {"loss": loss, **terms}

    def summary(self) -> dict[str, float]:
        return {"pseudo_refreshes": float(self.refreshes)}


def should_refresh(r: float, mse: float, best_r: float, best_mse: float) -> bool:
    """Algorithm 1, line 6: η > η̂ and ε < ε̂ (both must improve)."""
    return r > best_r and mse < best_mse


@dataclass(frozen=True)
class NoConsistencyParams(SelfTrainingParams):
    consistency_weight: float = field(default=0.0, metadata=at_least(0))


@METHODS.register("proposed_no_consistency")
class SelfTrainingNoConsistency(SelfTraining):
    """The paper's self-training without the consistency loss (λ′ = 0), Table 4's ablation."""

    Params = NoConsistencyParams
    search_space: ClassVar[dict[str, Range]] = {"margin": MARGIN, "weight": TRIPLET_WEIGHT}
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("mse_pseudo",)
