"""CLSS: Dai, Li, Chui, Li & Cheng, "Semi-Supervised Contrastive Learning for Deep Regression with
Ordinal Rankings from Spectral Seriation", NeurIPS 2023; code: github.com/xmed-lab/CLSS,
``AgeDB-DIR/CLSS/vol_reg_oedNP_semi_ulbsep_ranksim_b2.py`` (``run_epoch``),
``models/ulb_rank_ssl.py`` (``ulb_rank``, ``ulb_rank_prdlb``, ``TrueRanker``) and
``models/OrdinalEntropy.py``; defaults from ``AgeDB-DIR/CLSS/scripts_clss.sh`` (the IXI scripts
use the same weights).

One regressor; its embedding f and prediction ŷ. Per step::

    loss = MSE_labeled + w_ctr · OE(f_labeled, y) + w_0 · R(S_f) + w_1 · R(S_ŷ)

- **Ordinal entropy** OE (:func:`ordinal_entropy`) on the labeled embeddings: images are
  grouped by target value; each group's mean embedding, L2-normalised, is its centre. The
  *diversity* is the mean, over pairs of centres, of their Euclidean distance weighted by
  their targets' distance, (|y_a − y_b| − min)/max over the pairs; the *tightness* is the mean
  squared distance of each normalised embedding to its centre, over the images that are not
  their centre; ``OE = tightness − diversity``.
- **Ordinal ranks of the unlabeled images from spectral seriation** (:func:`seriation`): S_f,
  the cosine similarities of the unlabeled embeddings (B × B); its Laplacian L = D − S_f
  restricted to the vectors orthogonal to 1 (the orthonormal basis Z of that subspace,
  ``ZᵀLZ``); the eigenvector of the smallest eigenvalue, back in image space, orders the images
  along a line: their *positions* 0 … B−1 (no gradient). How close two images are in that
  order is their pseudo-label: for each anchor i, the other images ranked by −|pos_i − pos_j|.
- **Rank losses** R (:func:`rank_loss`): for each anchor i, the MSE between the normalised
  ranks of row i of a similarity matrix and those pseudo-ranks, summed over anchors. S_f is
  the embeddings' cosine similarity (``ulb_rank``); S_ŷ = −|ŷ_i − ŷ_j| the predictions'
  (``ulb_rank_prdlb``), so that the predictions order the images as the embeddings do.
  Ranking is piecewise constant; its gradient is the blackbox-differentiation one (Vlastelica
  et al. 2020, :class:`TrueRanker`, the authors'): the ranks of S + λ·∂loss/∂ranks, their
  difference from the ranks, divided by −λ.

Normalised ranks (:func:`normalised_ranks`) are (k + 1)/B for the k-th largest value of a row
(so the anchor itself, its largest similarity, is 1/B in both). Defaults: w_ctr = 1
(``--w_ctr``), w_0 = 0.05 (``--w_ctrulb_0``), w_1 = 0.01 (``--w_ctrulb_1``), λ = 2
(``--lambda_val``).

Decisions where the paper and the code leave a choice to this benchmark:

- **The batch.** The authors draw 32 labeled images (16 on IXI) and 8 unlabeled ones per step
  in separate passes; here the two-stream batch's 4 labeled and 12 unlabeled images pass
  together (one forward, batch norm over both, as for bmdbench's other two-stream methods):
  the ordinal entropy covers the batch's labeled images, the seriation its unlabeled ones
  (the code's ``ulb_rank``; the paper's wider variant seriates labeled and unlabeled together).
- **Continuous targets.** With BMD every labeled image is its own group, so the tightness term
  has no image (the authors' code would average an empty set, NaN); it is 0, and the ordinal
  entropy is the diversity term alone. Fewer than two distinct targets give no pair, and a
  diversity of 0.
- **Ties** in a row (two images equally far from the anchor in the seriation order, as its
  two neighbours always are) are ranked by batch position (a stable sort; the authors' sort
  leaves them to its implementation). The batch's order is random, so neither codes a
  preference. The authors' subsampling of tied pseudo-labels (``batch_unique_targets``) never
  applies: seriation positions are a permutation.
- The seriation is computed in float64 with ``torch.linalg.eigh`` (ZᵀLZ is symmetric; the
  authors call the general ``eig`` and keep the real parts). The orientation of the order does
  not matter (only |pos_i − pos_j| enters), so the authors' sign choice (``compute_upsets``)
  is not needed.
- The authors' Adam at lr 5·10⁻⁴ and weight decay 10⁻³ give way to the stage's; the
  unlabeled images get the run's augmentation (one view), as the authors' ``X_ulb_0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bmdbench.config import above, at_least
from bmdbench.data.module import Batch
from bmdbench.methods.base import (
    CONSISTENCY_WEIGHT,
    METHODS,
    STAGE1,
    FitContext,
    Method,
    Range,
)
from bmdbench.methods.losses import masked_mse


@dataclass(frozen=True)
class CLSSParams:
    # stage-1 method whose checkpoint this method fine-tunes
    stage1: str = field(default="baseline", metadata=STAGE1)
    # w_ctr: weight of the ordinal entropy of the labeled embeddings (--w_ctr)
    ordinal_weight: float = field(default=1.0, metadata=at_least(0))
    # w_0: weight of the embeddings' rank loss against the seriation order (--w_ctrulb_0)
    feature_rank_weight: float = field(default=0.05, metadata=at_least(0))
    # w_1: weight of the predictions' rank loss against the seriation order (--w_ctrulb_1)
    prediction_rank_weight: float = field(default=0.01, metadata=at_least(0))
    # λ: interpolation of the blackbox rank gradient (--lambda_val)
    rank_lambda: float = field(default=2.0, metadata=above(0))


# ---- the ordinal entropy -----------------------------------------------------------------


def _distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (M, N) as the authors compute them: √max(|x|² + |y|² − 2x·y, 10⁻¹²)."""
    squared = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None, :] - 2 * x @ y.T
    return squared.clamp(min=1e-12).sqrt()


def ordinal_entropy(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """OE = tightness − diversity of ``features`` (N, D) with ``targets`` (N,) (module
    docstring); 0 (with a graph) for no image."""
    values, group, counts = torch.unique(targets, return_inverse=True, return_counts=True)
    centres = torch.zeros(len(values), features.shape[1], device=features.device)
    centres = centres.index_add(0, group, features) / counts[:, None]
    centres = F.normalize(centres, dim=1)
    upper = torch.triu_indices(len(values), len(values), offset=1, device=features.device)
    diversity = features.sum() * 0.0
    if upper.shape[1]:
        weight = (values[:, None] - values[None, :]).abs()[upper[0], upper[1]]
        weight = (weight - weight.min()) / weight.max()
        diversity = (_distance(centres, centres)[upper[0], upper[1]] * weight).mean()
    spread = (F.normalize(features, dim=1) - centres[group]).pow(2).sum(1)
    spread = spread[spread > 0]
    tightness = spread.mean() if spread.numel() else features.sum() * 0.0
    return tightness - diversity


# ---- ranks, the blackbox rank gradient and the seriation -----------------------------------


def normalised_ranks(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks of ``x`` (R, N), largest first, as (k + 1)/N for the k-th largest; ties
    by position."""
    order = torch.argsort(x, dim=1, descending=True, stable=True)
    return (torch.argsort(order, dim=1, stable=True) + 1).to(x.dtype) / x.shape[1]


class TrueRanker(torch.autograd.Function):
    """:func:`normalised_ranks` forward; backward, the blackbox-differentiation gradient:
    −(ranks(x) − ranks(x + λ·g)) / λ for the incoming gradient g."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ranks = normalised_ranks(x)
        ctx.lam = lam
        ctx.save_for_backward(x, ranks)
        return ranks

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, ranks = ctx.saved_tensors
        perturbed = normalised_ranks(x + ctx.lam * grad)
        return -(ranks - perturbed) / ctx.lam, None


@torch.no_grad()
def seriation(similarity: torch.Tensor) -> torch.Tensor:
    """Spectral seriation: each image's position (B,) 0 … B−1 in the order of the eigenvector
    of the smallest eigenvalue of ZᵀLZ, L = D − S the Laplacian of ``similarity`` (B, B) and Z
    an orthonormal basis of the vectors orthogonal to 1. Float64; ties by position; fewer than
    two images are all at position 0."""
    s = similarity.detach().double()
    n = s.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.long, device=s.device)
    centring = torch.eye(n, dtype=s.dtype, device=s.device) - 1.0 / n
    basis = torch.linalg.eigh(centring).eigenvectors[:, 1:]  # eigenvalue 1: orthogonal to 1
    laplacian = torch.diag(s.sum(1)) - s
    vectors = torch.linalg.eigh(basis.T @ laplacian @ basis).eigenvectors
    line = basis @ vectors[:, 0]
    return torch.argsort(torch.argsort(line, stable=True), stable=True)


def rank_loss(similarity: torch.Tensor, positions: torch.Tensor, lam: float) -> torch.Tensor:
    """Σ over anchors i of the mean over j of (rank_i(S)_j − rank_i(−|pos_i − pos|)_j)², the
    first through :class:`TrueRanker` (``similarity`` (B, B), ``positions`` (B,))."""
    targets = normalised_ranks(-(positions[:, None] - positions[None, :]).abs().to(similarity))
    ranks = TrueRanker.apply(similarity, lam)
    return (ranks - targets).pow(2).mean(dim=1).sum()


def cosine_similarity(features: torch.Tensor) -> torch.Tensor:
    """S_f (B, B): cosine similarities of the rows of ``features`` (B, D)."""
    unit = F.normalize(features, dim=1)
    return unit @ unit.T


@METHODS.register("clss")
class CLSS(Method):
    """CLSS: ordinal entropy on labeled embeddings, spectral-seriation rank losses on unlabeled ones."""

    Params = CLSSParams
    stage = 2
    two_stream = True
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("feature_rank", "prediction_rank")
    search_space: ClassVar[dict[str, Range]] = {
        "feature_rank_weight": Range("consistency", 0.005, 0.5, log=True),
        "ordinal_weight": CONSISTENCY_WEIGHT,
    }

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        labeled, unlabeled = batch.labeled, ~batch.labeled
        embedding, pred = self.regressor(ctx.augment(batch.images))
        with torch.autocast(embedding.device.type, enabled=False):
            similarity = cosine_similarity(embedding[unlabeled])
            positions = seriation(similarity)
            p = self.params
            predicted = pred[unlabeled]
            terms = {
                "mse": masked_mse(pred, batch.targets, labeled),
                "ordinal_entropy": ordinal_entropy(embedding[labeled], batch.targets[labeled]),
                "feature_rank": rank_loss(similarity, positions, p.rank_lambda),
                "prediction_rank": rank_loss(
                    -(predicted[:, None] - predicted[None, :]).abs(), positions, p.rank_lambda
                ),
            }
        loss = (
            terms["mse"]
            + p.ordinal_weight * terms["ordinal_entropy"]
            + p.feature_rank_weight * terms["feature_rank"]
            + p.prediction_rank_weight * terms["prediction_rank"]
        )
        return {"loss": loss, **terms}
