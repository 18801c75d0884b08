"""Regression distribution alignment (RDA), standalone: Huang, Fu & Tsao, "RankUp: Boosting
Semi-Supervised Regression with an Auxiliary Ranking Classifier", NeurIPS 2024, Section 3.3;
code: github.com/pm25/Semi-Supervised-Regression, ``semilearn/algorithms/rda/rda.py`` and the
``RDAHook`` of ``semilearn/algorithms/rankuprda/rda.py``; defaults from
``config/classic_cv/rda/rda_utkface_lb*_s0.yaml``.

The model's own predictions of the unlabeled images are its pseudo-labels; RDA replaces
them by the labeled targets' distribution, keeping their order (:func:`align_to_labeled`),
and trains the prediction on those targets with an MSE beside the supervised MSE::

    loss = MSE_labeled(ŷ, y) + w · min(1, t / rampup) · MSE_unlabeled(ŷ, RDA(ŷ_bank))

As in the authors' code:

- the bank holds one prediction per unlabeled image: the latest prediction of its weak
  (the run's) augmented view, recorded at every step its batch passes;
- the aligned targets are recomputed from the whole bank at intervals
  (``rda_num_refine_iter`` = 1024 steps, which is one of their epochs: 262,144 steps over
  256 epochs); here once per epoch, at its start;
- the unlabeled loss is plain, not FixMatch-style: it is computed on the same weak-view
  prediction that is recorded, against its aligned target (detached);
- the unlabeled weight rises linearly over the first ``rampup`` of the steps (0.4).

Decisions where the paper and code were silent or do not carry over:

- The authors train from scratch and, for their first epoch, use the raw prediction as its
  own target (a zero loss) because the bank is still filled with ones. This method fine-tunes
  a stage-1 checkpoint, so the bank starts as the stage-1 model's prediction of every
  unlabeled image (eval mode, no augmentation) and is aligned at once: the first epoch
  already has aligned targets.
- The supervised term is bmdbench's MSE (equation 1), as for every other method, where the
  authors' UTKFace configs use L1 (``criterion: l1``).
- The unlabeled term covers the batch's unlabeled images only. USB adds the labeled images
  to the unlabeled set (``include_lb_to_ulb=True``), so there the bank and the alignment also
  take in the labeled images' predictions; here the bank holds the unlabeled pool only.
- USB evaluates an EMA of the weights (``ema_m`` 0.999) for every algorithm; like the rest
  of bmdbench this method evaluates the trained network itself.
- One forward pass takes the weak view of the whole batch (labeled and unlabeled), so batch
  norm's statistics are updated from both; USB freezes them during the unlabeled pass.
- Ties between predictions are ordered by pool position (a stable sort).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bmdbench.config import at_least, between
from bmdbench.data.module import Batch
from bmdbench.methods.base import (
    CONSISTENCY_WEIGHT,
    METHODS,
    STAGE1,
    FitContext,
    Method,
    Range,
    Regressor,
    RegressorFactory,
)
from bmdbench.methods.losses import masked_mse


def align_to_labeled(predictions: torch.Tensor, labeled_targets: torch.Tensor) -> torch.Tensor:
    """RDA: each prediction replaced by the labeled targets' value at its own quantile.

    ``predictions`` (N,) and ``labeled_targets`` (M,), M ≥ 1; returns (N,) in the predictions'
    dtype. The k-th smallest prediction (k = 0 … N−1) sits at quantile k/(N−1) and gets the
    sorted labeled targets linearly interpolated at that quantile, the j-th of them sitting
    at j/(M−1) (the authors' ``np.interp(linspace(0, 1, N), linspace(0, 1, M), sorted)``):
    with N = M the k-th smallest prediction gets the k-th smallest target. Equal predictions
    are ordered by position.
    """
    n, m = predictions.shape[0], labeled_targets.shape[0]
    if m == 0:
        raise ValueError("RDA aligns onto the labeled targets: none were given")
    if n == 0:
        return predictions.clone()
    ordered = labeled_targets.detach().double().sort().values
    position = torch.linspace(0, 1, n, dtype=torch.float64, device=ordered.device) * (m - 1)
    low = position.floor().long().clamp(max=m - 1)
    high = (low + 1).clamp(max=m - 1)
    weight = position - low
    values = ordered[low] + weight * (ordered[high] - ordered[low])
    aligned = torch.empty_like(values)
    aligned[torch.argsort(predictions.detach(), stable=True)] = values
    return aligned.to(predictions.dtype)


def linear_rampup(progress: float, rampup: float) -> float:
    """The authors' warm-up: clip(progress / rampup, 0, 1); 1 when ``rampup`` is 0."""
    return min(max(progress / rampup, 0.0), 1.0) if rampup > 0 else 1.0


def rda_weight(params: Any, ctx: FitContext) -> float:
    """The RDA term's weight now: ``params.unsup_weight`` ramped linearly over
    ``params.rampup`` of the stage (logged as ``unsup_weight``)."""
    weight = params.unsup_weight * linear_rampup(ctx.progress, params.rampup)
    ctx.log["unsup_weight"] = weight
    return weight


class AlignedPseudoLabels(nn.Module):
    """RDA's bank over the training pool: the latest prediction of every unlabeled image and
    its aligned target. Buffers are made by :meth:`start` and are not checkpointed."""

    raw: torch.Tensor  # (pool_size,) latest prediction per image (used for unlabeled ones)
    aligned: torch.Tensor  # (pool_size,) labels for labeled images, RDA targets for the rest
    unlabeled: torch.Tensor  # (pool_size,) bool
    labeled_targets: torch.Tensor  # (n_labeled,)

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    def start(self, ctx: FitContext, predict: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Fill the bank with ``predict`` over the pool (``ctx.predict_pool``) and align it."""
        predictions = ctx.predict_pool(predict).float()
        targets = ctx.pool_targets
        labeled = torch.isfinite(targets)
        self.register_buffer("raw", predictions.clone(), persistent=False)
        self.register_buffer("aligned", torch.where(labeled, targets, 0.0), persistent=False)
        self.register_buffer("unlabeled", ~labeled, persistent=False)
        self.register_buffer("labeled_targets", targets[labeled].clone(), persistent=False)
        self.refreshes = 0
        self.refresh()

    @torch.no_grad()
    def record(self, index: torch.Tensor, prediction: torch.Tensor) -> None:
        """Keep ``prediction`` (B,) as the latest of the unlabeled images at pool ``index``."""
        keep = self.unlabeled[index]
        self.raw[index[keep]] = prediction.detach().float()[keep]

    def epoch_start(self, ctx: FitContext) -> None:
        """Realign before every epoch but the first (:meth:`start` has just aligned the bank),
        and log how many alignments there have been."""
        if ctx.epoch > 0:
            self.refresh()
        ctx.log["rda_refreshes"] = float(self.refreshes)

    @torch.no_grad()
    def refresh(self) -> None:
        """Align the whole bank of unlabeled predictions onto the labeled targets."""
        self.aligned[self.unlabeled] = align_to_labeled(
            self.raw[self.unlabeled], self.labeled_targets
        )
        self.refreshes += 1

    def loss(self, prediction: torch.Tensor, batch: Batch) -> torch.Tensor:
        """MSE of the unlabeled images' ``prediction`` against their aligned targets, after
        recording it in the bank (as the authors' hook does, before it looks the targets up)."""
        self.record(batch.index, prediction)
        target = self.aligned[batch.index]
        return masked_mse(prediction, target, self.unlabeled[batch.index])


@dataclass(frozen=True)
class RDAParams:
    # stage-1 method whose checkpoint this method fine-tunes
    stage1: str = field(default="baseline", metadata=STAGE1)
    # weight of the unlabeled MSE to the aligned targets after the ramp-up (ulb_loss_ratio)
    unsup_weight: float = field(default=1.0, metadata=at_least(0))
    # fraction of stage 2 over which that weight rises linearly from 0 (unsup_warm_up)
    rampup: float = field(default=0.4, metadata=between(0, 1))


@METHODS.register("rda")
class RDA(Method):
    """RDA: the unlabeled images' predictions, quantile-aligned to the labeled targets, as targets."""

    Params = RDAParams
    stage = 2
    two_stream = True
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("rda",)
    search_space: ClassVar[dict[str, Range]] = {"unsup_weight": CONSISTENCY_WEIGHT}

    def __init__(
        self, regressor: Regressor, params: RDAParams, new_regressor: RegressorFactory | None = None
    ) -> None:
        super().__init__(regressor, params, new_regressor)
        self.bank = AlignedPseudoLabels()

    def on_stage_start(self, ctx: FitContext) -> None:
        self.bank.start(ctx, lambda x: self.regressor(x)[1])

    def on_epoch_start(self, ctx: FitContext) -> None:
        self.bank.epoch_start(ctx)

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, pred = self.regressor(ctx.augment(batch.images))
        mse = masked_mse(pred, batch.targets, batch.labeled)
        rda = self.bank.loss(pred, batch)
        loss = mse + rda_weight(self.params, ctx) * rda
        return {"loss": loss, "mse": mse, "rda": rda}

    def unlabeled_estimates(self, ctx: FitContext) -> torch.Tensor:
        return self.bank.aligned

    def summary(self) -> dict[str, float]:
        return {"rda_refreshes": float(self.bank.refreshes)}
