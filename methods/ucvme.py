"""UCVME: Dai, Li & Cheng, "Semi-supervised deep regression with uncertainty consistency and
variational model ensembling via Bayesian neural networks", AAAI 2023.

Followed as the authors' code implements it: xmed-lab/UCVME, ``ucvme_age.py`` (``run_epoch``,
``run_epoch_val``) and ``models/resnet50.py``; checked against the port for image regression
in pm25/Semi-Supervised-Regression, ``semilearn/algorithms/ucvme/ucvme.py``.

Two co-trained regressors k = 1, 2, each with a mean head μ_k and a log-variance head s_k
(heteroscedastic regression), dropout on the embedding before both heads (an independent mask
for each head, as in both codes). With ``het(ŷ, y, s) = ½(exp(−s)(y − ŷ)² + s)`` averaged over
images, per batch:

- labeled, ``s̄ = (s_1 + s_2)/2`` (the models' variances ensembled inside the loss)::

      labeled_regression  = het(μ_1, y, s̄) + het(μ_2, y, s̄)
      labeled_uncertainty = mean (s_1 − s_2)²          (uncertainty consistency, weight 1)

- unlabeled, pseudo-labels ``(ỹ, s̃)``: the mean of μ_k and of s_k over T dropout samples of
  each of both models (variational model ensembling), without gradient::

      unlabeled_regression  = het(μ_1, ỹ, s̃) + het(μ_2, ỹ, s̃)
      unlabeled_uncertainty = mean (s_1 − s̃)² + mean (s_2 − s̃)²

- ``loss = labeled_regression + labeled_uncertainty
  + w_ulb · (unlabeled_regression + unlabeled_uncertainty)``.

Defaults, from ``ucvme_age.py``'s options: w_ulb = 10 (``--w_ulb``), T = 5 (``--samp_ssl``,
and ``--samp_fq`` at test time), dropout 0.05 (``--drp_p``). pm25's configs set the unlabeled
weight to 0.05 (``ulb_loss_ratio``) on every data set; the search range covers both.

Decisions where the paper and the code leave a choice to this benchmark:

- **Where the dropout is.** The authors' ResNet-50 drops after layers 1–3 as well as on the
  pooled feature; bmdbench's backbones have no dropout, so here the dropout is on the
  embedding only (pm25's port does the same: one ``nn.Dropout`` on the feature).
- **Pseudo-labels from the training forward's embeddings.** Both codes draw the pseudo-labels
  from the same augmented view of the unlabeled images as the predictions they supervise.
  Since the dropout is on the embedding only, a second backbone pass over that view would give
  the same embedding (train-mode batch norm on the same batch), so the T samples re-draw only
  the dropout and the heads, on the detached embedding: the same distribution at a T-th of the
  cost, and no extra update of batch norm's running statistics (pm25 freezes them for its
  pseudo-label pass).
- **One batch.** Each network sees the labeled and unlabeled images of a two-stream batch in
  one pass (batch norm over both), where the authors pass a labeled and an unlabeled batch
  separately; bmdbench's other two-stream methods do the same. One augmentation per image,
  seen by both networks, as in both codes.
- **Both backbones start from the stage-1 checkpoint; the second network's heads start fresh**
  (``second_heads = "independent"``, the default). In the authors' code both backbones start
  from the same (ImageNet) weights and every head (``fc_m``, ``fc_v``) is initialised
  independently, which is what makes the two networks disagree and their co-training and
  ensembling do something. Here the stage-1 checkpoint plays the pretrained weights' part: the
  first network is that checkpoint (its trained mean head included, as every stage-2 method
  fine-tunes it), the second its backbone under a mean head of PyTorch's default ``Linear``
  initialisation (the authors' ``nn.Linear``), and each log-variance head is fresh. The
  evaluated ensemble mean thus starts as the stage-1 prediction averaged with a fresh head's
  (epoch 0, a selection candidate: its R is near stage 1's, a fresh head's predictions varying
  little). ``second_heads = "copy"`` copies the whole stage-1 regressor, mean head included
  (the earlier bmdbench choice): the two networks then differ only by their dropout masks and
  log-variance heads, and share the averaged variance in their labeled losses, so they stay
  nearly identical. Measured on the phantoms (quick, vgg11_bn_se, seeds 0–4, validation R):
  no reliable difference (selected checkpoint: independent − copy −0.010 on average, paired
  t −1.2; last epoch −0.019, t −1.0, two seeds of five favouring independent), so the
  authors' initialisation stays.
- **No Monte-Carlo average at test time.** The authors predict with the mean of T = 5 dropout
  samples of both models. With dropout on the embedding only and a linear mean head,
  E_mask[μ(drop(e))] = μ(e) exactly (inverted dropout scales the kept units by 1/(1−p)), so
  :meth:`UCVME.predict`, both mean heads without dropout averaged, is the value that MC
  average estimates, without its sampling noise, and it is deterministic (a checkpoint
  predicts the same twice).
- The constant ``+ s̃`` of the unlabeled heteroscedastic term carries no gradient; it is kept
  so that the logged losses are the authors'. Both codes step each network with its own
  Adam; one Adam over both networks' parameters is the same update (Adam is per parameter).
- No EMA of weights (pm25's framework evaluates one; the authors' code does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from bmdbench.config import at_least, from_up_to, one_of
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


@dataclass(frozen=True)
class UCVMEParams:
    # stage-1 method whose checkpoint both networks start from
    stage1: str = field(default="baseline", metadata=STAGE1)
    # w_ulb: weight of the unlabeled loss (ucvme_age.py --w_ulb)
    unlabeled_weight: float = field(default=10.0, metadata=at_least(0))
    # T: dropout samples per network averaged into the pseudo-labels (--samp_ssl)
    samples: int = field(default=5, metadata=at_least(1))
    # dropout rate on the embedding before the mean and log-variance heads (--drp_p)
    dropout: float = field(default=0.05, metadata=from_up_to(0, 1))
    # the second network's mean head: "independent" (freshly initialised, as the authors' heads)
    # or "copy" (the stage-1 head); its backbone is the stage-1 one either way
    second_heads: str = field(default="independent", metadata=one_of("independent", "copy"))


def heteroscedastic_loss(
    pred: torch.Tensor, target: torch.Tensor, log_var: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over ``mask`` of ½(exp(−s)(y − ŷ)² + s), s the predicted log-variance (the
    heteroscedastic Gaussian negative log-likelihood up to a constant); 0 (with a graph) if
    the mask is empty. ``target`` may be NaN outside the mask."""
    diff = torch.where(mask, target - pred, torch.zeros_like(pred))
    s = torch.where(mask, log_var, torch.zeros_like(log_var))
    per_image = 0.5 * (torch.exp(-s) * diff.pow(2) + s)
    return per_image.sum() / mask.sum().clamp(min=1)


def ucvme_losses(
    mean: torch.Tensor,
    log_var: torch.Tensor,
    pseudo_mean: torch.Tensor,
    pseudo_log_var: torch.Tensor,
    targets: torch.Tensor,
    labeled: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """UCVME's four loss parts (module docstring), unweighted.

    ``mean``, ``log_var``: (2, B), one row per network; ``pseudo_mean``, ``pseudo_log_var``:
    (B,), read where ``labeled`` is False; ``targets``: (B,), read where it is True.
    """
    unlabeled = ~labeled
    ensembled = log_var.mean(dim=0)
    return {
        "labeled_regression": heteroscedastic_loss(mean[0], targets, ensembled, labeled)
        + heteroscedastic_loss(mean[1], targets, ensembled, labeled),
        "labeled_uncertainty": masked_mse(log_var[0], log_var[1], labeled),
        "unlabeled_regression": heteroscedastic_loss(
            mean[0], pseudo_mean, pseudo_log_var, unlabeled
        )
        + heteroscedastic_loss(mean[1], pseudo_mean, pseudo_log_var, unlabeled),
        "unlabeled_uncertainty": masked_mse(log_var[0], pseudo_log_var, unlabeled)
        + masked_mse(log_var[1], pseudo_log_var, unlabeled),
    }


@METHODS.register("ucvme")
class UCVME(Method):
    """UCVME: two heteroscedastic co-trained regressors, MC-dropout ensembled pseudo-labels."""

    Params = UCVMEParams
    stage = 2
    two_stream = True
    unsupervised_terms = ("unlabeled_regression", "unlabeled_uncertainty")
    search_space: ClassVar[dict[str, Range]] = {
        "unlabeled_weight": Range("consistency", 0.05, 20.0, log=True)
    }

    pseudo_targets: torch.Tensor  # the last pseudo mean ỹ per pool image, NaN before

    def __init__(
        self,
        regressor: Regressor,
        params: UCVMEParams,
        new_regressor: RegressorFactory | None = None,
    ) -> None:
        super().__init__(regressor, params, new_regressor)
        # both backbones from the stage-1 checkpoint; the mean head fresh or copied (docstring)
        self.second = self.new_regressor()
        if params.second_heads == "copy":
            self.second.load_state_dict(regressor.state_dict())
        else:
            self.second.backbone.load_state_dict(regressor.backbone.state_dict())
        dim = regressor.head.in_features
        # s_k: the log-variance head of network k (self.regressor, then self.second)
        self.log_variance = nn.ModuleList([nn.Linear(dim, 1), nn.Linear(dim, 1)])
        self.dropout = nn.Dropout(params.dropout)

    @property
    def networks(self) -> tuple[Regressor, Regressor]:
        return self.regressor, self.second

    def heads(self, k: int, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network k's (mean, log-variance) (B,) of an fp32 embedding (B, D), each head behind
        its own dropout mask (none in eval mode), in fp32 as :class:`Regressor` runs its head."""
        with torch.autocast(embedding.device.type, enabled=False):
            mean = self.networks[k].head(self.dropout(embedding)).squeeze(1)
            log_var = self.log_variance[k](self.dropout(embedding)).squeeze(1)
        return mean, log_var

    @torch.no_grad()
    def pseudo_labels(
        self, embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ỹ, s̃): means over both networks and T dropout samples each (network 1's samples
        first) of the mean and log-variance heads, on the networks' embeddings (B, D). In
        train mode, where the dropout samples differ (training_step's case)."""
        means, log_vars = [], []
        for k, embedding in enumerate(embeddings):
            for _ in range(self.params.samples):
                mean, log_var = self.heads(k, embedding)
                means.append(mean)
                log_vars.append(log_var)
        return torch.stack(means).mean(dim=0), torch.stack(log_vars).mean(dim=0)

    def on_stage_start(self, ctx: FitContext) -> None:
        nan = torch.full((ctx.pool_size,), torch.nan, device=ctx.pool_targets.device)
        self.register_buffer("pseudo_targets", nan, persistent=False)

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        images = ctx.augment(batch.images)
        embeddings = (self.regressor(images)[0], self.second(images)[0])
        mean, log_var = zip(*(self.heads(k, e) for k, e in enumerate(embeddings)), strict=True)
        pseudo_mean, pseudo_log_var = self.pseudo_labels(
            (embeddings[0].detach(), embeddings[1].detach())
        )
        unlabeled = ~batch.labeled
        self.pseudo_targets[batch.index[unlabeled]] = pseudo_mean[unlabeled]
        terms = ucvme_losses(
            torch.stack(mean),
            torch.stack(log_var),
            pseudo_mean,
            pseudo_log_var,
            batch.targets,
            batch.labeled,
        )
        supervised = terms["labeled_regression"] + terms["labeled_uncertainty"]
        unsupervised = terms["unlabeled_regression"] + terms["unlabeled_uncertainty"]
        loss = supervised + self.params.unlabeled_weight * unsupervised
        return {"loss": loss, **terms}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The ensemble mean ½(μ_1 + μ_2), dropout off (module docstring: the expectation of
        the authors' Monte-Carlo average)."""
        return (self.regressor(x)[1] + self.second(x)[1]) / 2

    def unlabeled_estimates(self, ctx: FitContext) -> torch.Tensor:
        """The pseudo mean ỹ each unlabeled pool image last got during training."""
        return self.pseudo_targets
