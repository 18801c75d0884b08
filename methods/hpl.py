"""HPL: Sun, Wang, Wang, Wu, Jia & Meng, "Semi-Supervised Regression with Heteroscedastic
Pseudo-Labels", NeurIPS 2025; code: github.com/sxq11/Heteroscedastic-Pseudo-Labels,
``utkface/main_ours.py`` (``run_epoch``) and ``utkface/models/uncertainty_learner.py``, built
on xmed-lab/UCVME. Defaults from ``main_ours.py``'s options and the UTKFace README's command.

One regressor. An unlabeled image's pseudo-label is the prediction of its weak view ỹ (no
gradient); its strong view's prediction ŷ_s is trained towards it with a heteroscedastic
weight ½·exp(−s), where the log-variance s comes from an *uncertainty learner* u_φ, a small
MLP (``Linear(2, 128)``, ReLU, ``Linear(128, 1)``; xavier-normal weights, zero biases) that
reads the disagreement and the prediction, ``s = u_φ([ŷ_s − ỹ, ŷ_s])`` (inputs without
gradient)::

    loss = MSE_labeled(ŷ, y) + w_ulb · mean_unlabeled(½ exp(−s) (ŷ_s − ỹ)²)     (s without gradient)

The regressor never trains u_φ (a jointly trained s would grow on every hard image). u_φ is
learned by a bi-level problem, every ``meta_interval`` = 5 steps: a look-ahead copy of the
regression head θ takes one step on the loss above with s = u_φ(·) *with* gradient, on the
step's embeddings (detached: the backbone is not in the inner problem), θ'(φ) = θ − α ∇_θ
L_in(θ, φ); the outer objective is the labeled error of θ'(φ) on a separate batch of labeled
images, minus a regulariser that keeps u_φ from declaring every image certain::

    meta = MSE(θ'(φ)(f_u), y_u) − λ₂ · mean u_φ([θ'(φ)(f_u) − y_u, θ'(φ)(f_u)])   (inputs detached)

and its gradient reaches φ alone. Defaults: w_ulb = 10 (``--w_ulb``), λ₂ = 0.1 (``--lambda2``),
the meta step every 5 iterations (``train_iter % 5 == 0``), its labeled batch 32
(``--batch_size``, ``dataloader_unc``: an independent shuffle of the labeled set), the
look-ahead's step size 1e-3 (``--fc_lr``, the head's learning rate), dropout 0.05 on the
embedding (``--drp_p``), u_φ's hidden width 128.

Decisions where the paper and the code leave a choice to this benchmark:

- **The look-ahead step is plain gradient descent** with step size α = ``meta_lr``. The
  authors differentiate through one step of the head's own Adam (``higher.innerloop_ctx``
  with its optimiser's state); here the Trainer owns the optimiser and its state, so the
  inner step is θ − α∇θ (the one-step approximation of the bi-level problem as Meta-Weight-Net
  writes it), at the authors' head learning rate.
- **One optimiser step.** The authors step u_φ first (its own Adam, lr 1e-4), then the
  regressor with the updated u_φ. Here the meta objective is one more term of the returned
  loss, whose gradient reaches u_φ only (every tensor of the regressor in it is detached, the
  head's look-ahead copy included), while the regression terms reach the regressor only (s
  without gradient): the Trainer's one Adam steps both from the same backward, u_φ at the
  stage's learning rate (the authors' 1e-4 equals their feature extractor's; their head's
  10× rate has no counterpart). The regressor's step therefore uses u_φ from before this
  step's meta update. The term is logged as ``meta``, 0 on the steps without a meta update
  (so its epoch mean is a fifth of the meta objective's).
- **Embeddings from the training pass.** The authors' meta step runs the backbone again on
  the labeled, weak and strong batches; the inner problem only sees those embeddings detached,
  so here it reuses the training forward's (the same weights; the dropout masks differ, not
  their distribution). The outer labeled batch, ``meta_labeled_images`` images drawn from the
  labeled pool by torch's global RNG (the batch's own may be among them, as in the authors'
  independent loader), is one more forward pass without gradient.
- **Dropout** (p = 0.05) sits on the embedding before the head, in training only (the
  authors' ResNet-50 also drops inside; bmdbench's backbones have none), as for UCVME. The
  evaluated prediction is the regressor's, dropout off.
- **The strong view** is RankUp's (:func:`bmdbench.methods.rankup.strong_view`: the run's
  augmentation, then three order-preserving intensity operations and a Cutout), where the
  authors use FixMatch's RandAugmentMC(3, 4) on RGB faces. Each image gets one weak view
  (labeled and unlabeled in one pass) and the unlabeled ones one strong view.
- The authors' labeled batch is repeated (``--ssl_mult``) to balance the loaders; here the
  two-stream batch (4 labeled, 12 unlabeled) sets the balance, as for every two-stream method.
  Their separate head learning rate and their StepLR schedule give way to the stage's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bmdbench.config import at_least, from_up_to
from bmdbench.data.module import Batch
from bmdbench.methods.base import (
    METHODS,
    STAGE1,
    FitContext,
    Method,
    Range,
    Regressor,
    RegressorFactory,
)
from bmdbench.methods.losses import masked_mse
from bmdbench.methods.rankup import draw_labeled, strong_view


@dataclass(frozen=True)
class HPLParams:
    # stage-1 method whose checkpoint this method fine-tunes
    stage1: str = field(default="baseline", metadata=STAGE1)
    # w_ulb: weight of the uncertainty-weighted unlabeled term (--w_ulb)
    unlabeled_weight: float = field(default=10.0, metadata=at_least(0))
    # λ₂: weight of the regulariser −mean s in the meta objective (--lambda2)
    regularisation: float = field(default=0.1, metadata=at_least(0))
    # the uncertainty learner's meta update every this many optimiser steps (train_iter % 5)
    meta_interval: int = field(default=5, metadata=at_least(1))
    # α: step size of the head's look-ahead gradient step (--fc_lr, the head's learning rate)
    meta_lr: float = field(default=1e-3, metadata=at_least(0))
    # labeled images of the meta objective's batch, drawn from the labeled pool (--batch_size)
    meta_labeled_images: int = field(default=32, metadata=at_least(1))
    # hidden units of the uncertainty learner's one hidden layer (UncertaintyLearner hidden_dim)
    hidden: int = field(default=128, metadata=at_least(1))
    # dropout rate on the embedding before the regression head, in training (--drp_p)
    dropout: float = field(default=0.05, metadata=from_up_to(0, 1))


class UncertaintyLearner(nn.Module):
    """u_φ: (disagreement, prediction) → log-variance s, an MLP with one hidden ReLU layer,
    xavier-normal weights and zero biases (the authors' ``UncertaintyLearner``)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, residual: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """s (N,) of ``residual`` and ``prediction`` (N,), both detached, in fp32."""
        inputs = torch.stack([residual.detach(), prediction.detach()], dim=1).float()
        with torch.autocast(inputs.device.type, enabled=False):
            return self.net(inputs).squeeze(1)


def weighted_consistency(
    strong: torch.Tensor, pseudo: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """Mean over images of ½·exp(−s)·(ŷ_s − ỹ)²; 0 (with a graph) for no image."""
    if strong.numel() == 0:
        return strong.sum() * 0.0
    return (0.5 * torch.exp(-log_var) * (strong - pseudo).pow(2)).mean()


def meta_objective(
    weight: torch.Tensor,
    bias: torch.Tensor,
    inner: dict[str, torch.Tensor],
    outer: tuple[torch.Tensor, torch.Tensor],
    learner: UncertaintyLearner,
    params: HPLParams,
) -> torch.Tensor:
    """The outer objective of HPL's bi-level problem for a linear head (``weight`` (1, D),
    ``bias`` (1,), leaf tensors that require grad).

    ``inner``: the step's detached embeddings and targets — ``labeled`` (L, D) with ``targets``
    (L,), ``weak`` and ``strong`` (U, D) of the unlabeled images. The head steps once on
    ``MSE + w_ulb · weighted_consistency`` (s = u_φ with gradient, pseudo-labels = the weak
    predictions without), θ' = θ − α∇θ; ``outer`` = (embeddings (M, D), targets (M,)) of the
    meta batch give ``MSE(θ') − λ₂ · mean u_φ([θ'(f) − y, θ'(f)])``.
    """
    with torch.autocast(weight.device.type, enabled=False):
        labeled_pred = F.linear(inner["labeled"], weight, bias).squeeze(1)
        strong = F.linear(inner["strong"], weight, bias).squeeze(1)
        with torch.no_grad():
            pseudo = F.linear(inner["weak"], weight, bias).squeeze(1)
        log_var = learner(strong - pseudo, strong)
        inner_loss = F.mse_loss(labeled_pred, inner["targets"]) + params.unlabeled_weight * (
            weighted_consistency(strong, pseudo, log_var)
        )
        grad_weight, grad_bias = torch.autograd.grad(inner_loss, (weight, bias), create_graph=True)
        features, targets = outer
        pred = F.linear(
            features, weight - params.meta_lr * grad_weight, bias - params.meta_lr * grad_bias
        )
        pred = pred.squeeze(1)
        certainty = learner(pred - targets, pred).mean()
        return F.mse_loss(pred, targets) - params.regularisation * certainty


@METHODS.register("hpl")
class HPL(Method):
    """HPL: weak-to-strong pseudo-labels weighted by a bi-level-learned heteroscedastic uncertainty."""

    Params = HPLParams
    stage = 2
    two_stream = True
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("unlabeled",)
    search_space: ClassVar[dict[str, Range]] = {
        "unlabeled_weight": Range("consistency", 0.05, 20.0, log=True),
        "regularisation": Range("lambda", 0.01, 1.0, log=True),
    }

    def __init__(
        self, regressor: Regressor, params: HPLParams, new_regressor: RegressorFactory | None = None
    ) -> None:
        super().__init__(regressor, params, new_regressor)
        self.uncertainty = UncertaintyLearner(params.hidden)
        self.dropout = nn.Dropout(params.dropout)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding after dropout (B, D), prediction (B,)), both fp32."""
        embedding = self.dropout(self.regressor(images)[0])
        with torch.autocast(embedding.device.type, enabled=False):
            return embedding, self.regressor.head(embedding).squeeze(1)

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        labeled, unlabeled = batch.labeled, ~batch.labeled
        embedding, pred = self.features(ctx.augment(batch.images))
        strong_embedding, strong = self.features(strong_view(batch.images[unlabeled], ctx.augment))
        pseudo = pred[unlabeled].detach()
        with torch.no_grad():
            log_var = self.uncertainty(strong - pseudo, strong)
        terms = {
            "mse": masked_mse(pred, batch.targets, labeled),
            "unlabeled": weighted_consistency(strong, pseudo, log_var),
        }
        if ctx.step % self.params.meta_interval == 0:
            terms["meta"] = self.meta(embedding, strong_embedding, batch, ctx)
        else:  # no meta update: 0, so that every step logs the same parts
            terms["meta"] = torch.zeros((), device=pred.device)
        loss = terms["mse"] + self.params.unlabeled_weight * terms["unlabeled"] + terms["meta"]
        return {"loss": loss, **terms}

    def meta(
        self, embedding: torch.Tensor, strong_embedding: torch.Tensor, batch: Batch, ctx: FitContext
    ) -> torch.Tensor:
        """The meta objective (:func:`meta_objective`) on this step's embeddings and a fresh
        batch of labeled images; its gradient reaches the uncertainty learner only."""
        labeled, unlabeled = batch.labeled, ~batch.labeled
        # an independent draw: the batch's own labeled images may be among it (none excluded)
        drawn = draw_labeled(ctx.n_labeled, batch.index[:0], self.params.meta_labeled_images)
        with torch.no_grad():
            outer = self.features(ctx.augment(ctx.pool_batch(drawn).images))[0]
        head = self.regressor.head
        inner = {
            "labeled": embedding[labeled].detach(),
            "targets": batch.targets[labeled],
            "weak": embedding[unlabeled].detach(),
            "strong": strong_embedding.detach(),
        }
        return meta_objective(
            head.weight.detach().requires_grad_(),
            head.bias.detach().requires_grad_(),
            inner,
            (outer, ctx.pool_targets[drawn]),
            self.uncertainty,
            self.params,
        )
