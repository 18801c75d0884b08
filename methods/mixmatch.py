"""MixMatch for regression: Berthelot et al., "MixMatch: a holistic approach to
semi-supervised learning", NeurIPS 2019, adapted to regression as pm25/Semi-Supervised-Regression
(the RankUp authors' code, built on USB) does it: ``semilearn/algorithms/mixmatch/mixmatch.py``,
``semilearn/algorithms/utils/ops.py`` (``mixup_one_target``) and the configs
``config/*/mixmatch/mixmatch_*.yaml``.

Per two-stream batch of L labeled images (x, y) and U unlabeled images u:

- guessed targets: ``q = (1/K) Σ_k f(aug_k(u))``, the mean prediction over K augmentations of
  each unlabeled image, without gradient;
- mixup of the concatenation ``X = [aug(x), aug_1(u), …, aug_K(u)]``, ``Y = [y, q, …, q]``
  with one λ ~ Beta(α, α), λ ← max(λ, 1 − λ), and one permutation π of all L + K·U images:
  ``X' = λX + (1 − λ)X[π]``, ``Y' = λY + (1 − λ)Y[π]``;
- ``loss = mse_labeled + w(t) · mse_unlabeled``: the MSE of f(X') against Y' over its first L
  images and over the other K·U, with ``w(t) = λ_u · min(1, t / rampup)``, t the stage's
  progress.

Defaults, from pm25's configs (every data set: ``mixmatch_utkface_lb*.yaml``,
``mixmatch_bvcc_lb250_s0.yaml``, ...): α = 0.5 (``mixup_alpha``; the paper's 0.75), λ_u = 0.1
(``ulb_loss_ratio``; the paper's 75–100 weigh a squared error of probabilities), ramp-up over
0.4 of training (``unsup_warm_up``; the code's fallback 1/64 is the paper's 16k of 1M steps).
K = 2: pm25 averages the predictions of two weak views (``x_ulb_w``, ``x_ulb_w_2``), as the
paper's K = 2.

Where the regression adaptation departs from the classification paper (all as in pm25):

- no sharpening: the guess is the mean prediction itself (sharpening lowers the entropy of a
  class distribution; a regression target has none);
- both losses are squared errors of real-valued targets (the paper: cross-entropy on the
  labeled part, squared error of probabilities on the unlabeled part);
- the ramp-up of λ_u is linear, as in the paper, over a fraction of the stage rather than a
  fixed 16k steps.

Decisions of this benchmark where the paper and pm25 leave a choice or differ from it:

- the supervised term is MSE (equation 1, as every bmdbench method's); pm25's configs set
  ``criterion: l1`` for it, for every method they run;
- batch norm: the guesses are made in train mode (batch statistics), one forward per view, and
  leave the running statistics as they were (the paper skips those update ops, pm25 freezes
  them); the mixed batch goes through the network in one forward, so every image is
  normalised by the statistics of the whole mix (what the paper's interleaving approximates;
  pm25 splits it into chunks of L and updates running statistics from the first only);
- λ and π come from torch's global RNG on the CPU (``torch.distributions.Beta``,
  ``torch.randperm``; pm25 draws λ with numpy), so a seed reproduces the run on any device;
- the labeled images get one augmentation, as in both codes;
- no EMA of weights for evaluation (the paper and USB evaluate one; bmdbench evaluates the
  trained weights of every method but the mean teacher).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from bmdbench.config import at_least, between
from bmdbench.data.module import Batch
from bmdbench.methods.base import METHODS, STAGE1, FitContext, Method, Range
from bmdbench.methods.losses import masked_mse


@dataclass(frozen=True)
class MixMatchParams:
    # stage-1 method whose checkpoint this method fine-tunes
    stage1: str = field(default="baseline", metadata=STAGE1)
    # K: augmentations of each unlabeled image whose predictions are averaged into its guess
    augmentations: int = field(default=2, metadata=at_least(1))
    # α: mixup's λ ~ Beta(α, α) (0: no mixing, λ = 1)
    alpha: float = field(default=0.5, metadata=at_least(0))
    # λ_u: weight of the unlabeled MSE after ramp-up
    unlabeled_weight: float = field(default=0.1, metadata=at_least(0))
    # fraction of stage 2 over which λ_u ramps up linearly from 0
    rampup: float = field(default=0.4, metadata=between(0, 1))


def sample_mixup(n: int, alpha: float) -> tuple[float, torch.Tensor]:
    """λ ~ Beta(α, α) raised to max(λ, 1 − λ) (1 when α = 0), and a permutation of n (CPU);
    both from torch's global RNG."""
    lam = 1.0
    if alpha > 0:
        concentration = torch.tensor(float(alpha))
        lam = float(torch.distributions.Beta(concentration, concentration).sample())
    return max(lam, 1.0 - lam), torch.randperm(n)


def mixup(
    inputs: torch.Tensor, targets: torch.Tensor, lam: float, permutation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ·inputs + (1 − λ)·inputs[π], λ·targets + (1 − λ)·targets[π]): inputs and targets
    mixed with the same λ and the same permutation π (along the first dimension)."""
    return (
        lam * inputs + (1 - lam) * inputs[permutation],
        lam * targets + (1 - lam) * targets[permutation],
    )


def mixmatch_losses(
    pred: torch.Tensor, mixed_targets: torch.Tensor, n_labeled: int
) -> dict[str, torch.Tensor]:
    """MSE over the first ``n_labeled`` mixed images (mixed from the labeled ones) and over the
    rest (mixed from the unlabeled views); each 0 (with a graph) if empty."""
    first = torch.arange(len(pred), device=pred.device) < n_labeled
    return {
        "mse_labeled": masked_mse(pred, mixed_targets, first),
        "mse_unlabeled": masked_mse(pred, mixed_targets, ~first),
    }


@contextmanager
def running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Leave ``module``'s buffers (batch norm's running statistics) as they were before the
    block: a forward in train mode inside it normalises with batch statistics and updates
    nothing."""
    saved = [buffer.clone() for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(module.buffers(), saved, strict=True):
                buffer.copy_(value)


@METHODS.register("mixmatch")
class MixMatch(Method):
    """MixMatch for regression: mean-of-K guesses, mixup of labeled and unlabeled, MSE on both."""

    Params = MixMatchParams
    stage = 2
    two_stream = True
    unsupervised_terms = ("mse_unlabeled",)
    search_space: ClassVar[dict[str, Range]] = {
        "unlabeled_weight": Range("consistency", 0.01, 10.0, log=True)
    }

    guesses: torch.Tensor  # the last guessed target q per pool image, NaN before

    def on_stage_start(self, ctx: FitContext) -> None:
        nan = torch.full((ctx.pool_size,), torch.nan, device=ctx.pool_targets.device)
        self.register_buffer("guesses", nan, persistent=False)

    def unlabeled_weight(self, ctx: FitContext) -> float:
        """w(t) = λ_u · min(1, t / rampup)."""
        ramp = min(1.0, ctx.progress / self.params.rampup) if self.params.rampup > 0 else 1.0
        weight = self.params.unlabeled_weight * ramp
        ctx.log["unsup_weight"] = weight
        return weight

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        labeled = batch.labeled
        x = ctx.augment(batch.images[labeled])
        unlabeled_images = batch.images[~labeled]
        views = [ctx.augment(unlabeled_images) for _ in range(self.params.augmentations)]
        with torch.no_grad(), running_statistics_kept(self.regressor):
            guess = torch.stack([self.regressor(view)[1] for view in views]).mean(dim=0)
        self.guesses[batch.index[~labeled]] = guess
        inputs = torch.cat([x, *views])
        targets = torch.cat([batch.targets[labeled], guess.repeat(len(views))])
        lam, permutation = sample_mixup(len(inputs), self.params.alpha)
        mixed_inputs, mixed_targets = mixup(
            inputs, targets, lam, permutation.to(inputs.device, non_blocking=True)
        )
        _, pred = self.regressor(mixed_inputs)
        terms = mixmatch_losses(pred, mixed_targets, len(x))
        loss = terms["mse_labeled"] + self.unlabeled_weight(ctx) * terms["mse_unlabeled"]
        return {"loss": loss, **terms}

    def unlabeled_estimates(self, ctx: FitContext) -> torch.Tensor:
        """The guessed target q each unlabeled pool image last got during training."""
        return self.guesses
