"""RankUp and RankUp + RDA: Huang, Fu & Tsao, "RankUp: Boosting Semi-Supervised Regression with
an Auxiliary Ranking Classifier", NeurIPS 2024; code: github.com/pm25/Semi-Supervised-Regression,
``semilearn/algorithms/rankup/rankup.py``, ``semilearn/algorithms/rankuprda/rankuprda.py`` and
the ARC of ``semilearn/algorithms/rankuprda/rankup_net.py``; defaults from
``config/classic_cv/rankup/rankup_utkface_lb*_s0.yaml`` and
``config/classic_cv/rankuprda/rankuprda_utkface_lb*_s0.yaml``.

The auxiliary ranking classifier (ARC) is a ``Linear(D, 2)`` on the regressor's embedding
(xavier-normal weights, zero bias, as the authors initialise it). For an ordered pair (i, j)
of images its logits are ``arc(f_i) − arc(f_j)`` (:func:`pair_logits`), class 0 meaning
"y_i > y_j"; the pairs are all B² ordered pairs of a batch's images, i = j included, as in the
authors' ``compute_rank_logits``. Labeled pairs are trained with cross-entropy against
[(1 + sign(y_i − y_j))/2, (1 − sign(y_i − y_j))/2] (a tie, and so every i = j pair, is
0.5/0.5: a constant log 2 with no gradient). Unlabeled pairs are trained FixMatch-style: the
weak view's pair probabilities (no gradient) give a hard pseudo-label (argmax) where their
maximum is ≥ τ, and the strong view's pair logits are trained on it with cross-entropy,
averaged over all pairs (the unconfident ones count as zeros, as USB's masked mean). An
i = j pair has probability 0.5 and is never confident. The losses::

    rankup:     loss = MSE_labeled + λ_arc · (CE_arc_labeled + w_u · CE_arc_unlabeled)
    rankup_rda: loss = MSE_labeled + w_rda · min(1, t / rampup) · MSE_rda
                       + λ_arc · (CE_arc_labeled + w_u · CE_arc_unlabeled)

with the RDA term of :mod:`bmdbench.methods.rda` (on the weak view's prediction, as in
``rankuprda.py``). The authors' softmax temperature T = 0.5 only sharpens soft
pseudo-labels; their configs use hard labels (``hard_label: True``), where T has no effect,
so it is not a parameter here.

The strong view (:func:`strong_view`): USB's FixMatch strong augmentation is the weak one
(crop, flip) plus RandAugment(3, 5) — three operations drawn with replacement from fourteen,
each at a uniform random magnitude — plus a Cutout of up to half the image side, filled with
gray. Built for RGB photographs; for grayscale radiographs this module keeps the
RandAugment operations that act on one channel's intensity, with USB's magnitude ranges:
identity, autocontrast, brightness (×[0.05, 0.95]), contrast (towards the mean,
×[0.05, 0.95]), posterize (4–7 bits) and sharpness (blend with PIL's 3×3 smoothing filter,
[0.05, 0.95]: a blur), then Cutout (side U[0, 0.5] of each axis, filled with 0.5). Left out:
Color (a no-op on one channel), Invert, Solarize (reverse the intensity that carries the
density being regressed), Equalize (a per-image histogram remap), and the geometric
operations (rotate ±30°, shear ±0.3, translate ±0.3): the view's geometry is the run's own
augmentation (``ctx.augment``, a fresh draw, as USB draws a fresh crop for the strong view),
so the strong view differs from a weak one by intensity and occlusion, and the measured
bone is not moved out of the frame. Operations and magnitudes are drawn per image from
torch's global RNG (seeded by the Trainer), on the batch's device, in fp32; images stay in
[0, 1] (the weak view is clipped to it first, as PIL's 8-bit images are).

Decisions where the paper and code were silent or do not carry over:

- A stage-2 method: the regressor starts from a stage-1 checkpoint, the ARC from scratch.
- The weak view of the whole batch (labeled and unlabeled) is one forward pass; the strong
  view is made and predicted for the unlabeled images only, as in USB. Batch norm is updated
  by both passes (USB freezes its statistics during the weak unlabeled pass).
- Labeled and unlabeled pairs are formed within the batch's labeled and unlabeled images
  respectively (``stage2.labeled_per_batch`` labeled images: 16 labeled and 144 unlabeled
  pairs in a batch of 4 + 12). USB's unlabeled set also holds the labeled images
  (``include_lb_to_ulb``); here it is the unlabeled pool only.
- The supervised regression term is bmdbench's MSE (the authors' UTKFace configs use L1);
  the method evaluates its network, not USB's EMA of the weights.
- The ARC head and every loss run in fp32, outside autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
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
from bmdbench.methods.rda import AlignedPseudoLabels, rda_weight

ARC_WEIGHT = Range("lambda", 0.05, 2.0, log=True)  # covers the authors' 0.2 (UTKFace) and 1.0
STRONG_OPS = 3  # RandAugment's n: operations per strong view
GRAY = 0.5  # Cutout's fill (USB: (125, 123, 114) of 255)


# ---- the ARC's pairs and losses ----------------------------------------------------------


def pair_logits(scores: torch.Tensor) -> torch.Tensor:
    """ARC outputs (B, 2) → logits of every ordered pair (B·B, 2): row i·B + j is
    ``scores[i] − scores[j]``, the logits of (y_i > y_j, y_i < y_j)."""
    return (scores[:, None, :] - scores[None, :, :]).flatten(0, 1)


def pair_targets(targets: torch.Tensor) -> torch.Tensor:
    """Targets (B,) → soft labels of every ordered pair (B·B, 2): row i·B + j is
    [(1 + sign(y_i − y_j))/2, (1 − sign(y_i − y_j))/2]; a tie (and i = j) is [0.5, 0.5]."""
    first_larger = ((1 + torch.sign(targets[:, None] - targets[None, :])) / 2).flatten()
    return torch.stack([first_larger, 1 - first_larger], dim=1)


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ_c t_c · log softmax(logits)_c; 0 (with a graph) for no rows."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def confident_pseudo_labels(
    weak_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's pseudo-labels: the argmax class of softmax(``weak_logits``) (N, C) and the
    float mask (N,) of rows whose largest probability is ≥ ``threshold`` (no gradient)."""
    probs = torch.softmax(weak_logits.detach(), dim=1)
    confidence, labels = probs.max(dim=1)
    return labels, (confidence >= threshold).to(probs.dtype)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over all N rows of mask · CE(logits, labels) (unconfident rows count as 0, as
    FixMatch averages); 0 (with a graph) for no rows."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return (F.cross_entropy(logits, labels, reduction="none") * mask).mean()


# ---- the strong view ---------------------------------------------------------------------


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view((-1,) + (1,) * (like.ndim - 1))


def _autocontrast(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp(min=1e-12), x)


def _brightness(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return x * _per_image(0.05 + 0.9 * u, x)


def _contrast(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + _per_image(0.05 + 0.9 * u, x) * (x - mean)


def _posterize(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    bits = 4 + (4 * u).floor().clamp(max=3)  # 4–7 bits of 8 kept
    step = _per_image(2.0 ** (8 - bits), x)
    return ((x * 255).floor() / step).floor() * step / 255


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13


def _sharpness(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    kernel = _SMOOTH.to(x.device, x.dtype).expand(c, 1, 3, 3)
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
    return smooth + _per_image(0.05 + 0.9 * u, x) * (x - smooth)


_OPS: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    lambda x, _: x,
    _autocontrast,
    _brightness,
    _contrast,
    _posterize,
    _sharpness,
)


def cutout(x: torch.Tensor, fill: float = GRAY) -> torch.Tensor:
    """USB's Cutout per image: a box of U[0, 0.5] of each side around a uniform random
    centre, clipped at the borders (its corner moved to the border, as USB does), filled."""
    b, _, h, w = x.shape
    size = torch.rand(b, device=x.device) * 0.5
    cy = torch.rand(b, device=x.device) * h
    cx = torch.rand(b, device=x.device) * w
    y0 = (cy - size * h / 2).clamp(min=0).floor()
    x0 = (cx - size * w / 2).clamp(min=0).floor()
    y1, x1 = y0 + size * h, x0 + size * w
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < y1[:, None])  # (B, H)
    in_cols = (cols >= x0[:, None]) & (cols < x1[:, None])  # (B, W)
    box = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    return torch.where(box, torch.full_like(x, fill), x)


def strong_view(
    x: torch.Tensor, weak: Callable[[torch.Tensor], torch.Tensor], ops: int = STRONG_OPS
) -> torch.Tensor:
    """A strong view of ``x`` (B, C, H, W) in [0, 1]: ``weak(x)`` (a fresh draw of the run's
    augmentation) clipped to [0, 1], then ``ops`` intensity operations drawn per image
    (module docstring) and a Cutout; fp32, in [0, 1], outside autocast."""
    with torch.autocast(x.device.type, enabled=False):
        view = weak(x).float().clamp(0, 1)
        b = view.shape[0]
        for _ in range(ops):
            choice = torch.randint(len(_OPS), (b,), device=view.device)
            magnitude = torch.rand(b, device=view.device)
            out = view
            for k, op in enumerate(_OPS):
                out = torch.where(_per_image(choice == k, view), op(view, magnitude), out)
            view = out.clamp(0, 1)
        return cutout(view)


# ---- the methods -------------------------------------------------------------------------


@dataclass(frozen=True)
class RankUpParams:
    # stage-1 method whose checkpoint this method fine-tunes
    stage1: str = field(default="baseline", metadata=STAGE1)
    # λ_arc: weight of the ARC's loss beside the regression loss (arc_loss_ratio, UTKFace)
    arc_weight: float = field(default=0.2, metadata=at_least(0))
    # w_u: weight of the ARC's unlabeled (FixMatch) term within it (arc_ulb_loss_ratio)
    arc_unlabeled_weight: float = field(default=1.0, metadata=at_least(0))
    # τ: a weak-view pair probability ≥ τ makes a pseudo-label (p_cutoff)
    threshold: float = field(default=0.95, metadata=between(0, 1))


class _RankUp(Method):
    stage = 2
    two_stream = True

    def __init__(
        self,
        regressor: Regressor,
        params: RankUpParams,
        new_regressor: RegressorFactory | None = None,
    ) -> None:
        super().__init__(regressor, params, new_regressor)
        self.arc = nn.Linear(regressor.head.in_features, 2)
        nn.init.xavier_normal_(self.arc.weight)
        nn.init.zeros_(self.arc.bias)

    def arc_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """The ARC's two outputs per image (B, 2), in fp32."""
        with torch.autocast(embedding.device.type, enabled=False):
            return self.arc(embedding.float())

    def rankup_terms(
        self, batch: Batch, ctx: FitContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weak view's prediction (B,) and the losses: MSE, the ARC's labeled and
        unlabeled terms, and the fraction of unlabeled pairs that are confident."""
        embedding, pred = self.regressor(ctx.augment(batch.images))
        labeled, unlabeled = batch.labeled, ~batch.labeled
        scores = self.arc_scores(embedding)
        arc_labeled = soft_cross_entropy(
            pair_logits(scores[labeled]), pair_targets(batch.targets[labeled])
        )
        labels, mask = confident_pseudo_labels(
            pair_logits(scores[unlabeled]), self.params.threshold
        )
        if bool(unlabeled.any()):
            strong_embedding, _ = self.regressor(strong_view(batch.images[unlabeled], ctx.augment))
            strong_logits = pair_logits(self.arc_scores(strong_embedding))
        else:
            strong_logits = pair_logits(scores[unlabeled])
        terms = {
            "mse": masked_mse(pred, batch.targets, labeled),
            "arc_labeled": arc_labeled,
            "arc_unlabeled": masked_cross_entropy(strong_logits, labels, mask),
            "arc_confident": mask.mean() if mask.numel() else mask.sum(),
        }
        return pred, terms

    def arc_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        p = self.params
        return p.arc_weight * (
            terms["arc_labeled"] + p.arc_unlabeled_weight * terms["arc_unlabeled"]
        )


@METHODS.register("rankup")
class RankUp(_RankUp):
    """RankUp: an auxiliary pair-ranking classifier on the embedding, FixMatch on unlabeled pairs."""

    Params = RankUpParams
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("arc_unlabeled",)
    search_space: ClassVar[dict[str, Range]] = {
        "arc_weight": ARC_WEIGHT,
        "arc_unlabeled_weight": CONSISTENCY_WEIGHT,
    }

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, terms = self.rankup_terms(batch, ctx)
        return {"loss": terms["mse"] + self.arc_loss(terms), **terms}


@dataclass(frozen=True)
class RankUpRDAParams(RankUpParams):
    # weight of the RDA term after the ramp-up (ulb_loss_ratio)
    unsup_weight: float = field(default=1.0, metadata=at_least(0))
    # fraction of stage 2 over which the RDA weight rises linearly from 0 (unsup_warm_up)
    rampup: float = field(default=0.4, metadata=between(0, 1))


@METHODS.register("rankup_rda")
class RankUpRDA(_RankUp):
    """RankUp + RDA: the ranking classifier's losses plus RDA's aligned pseudo-label MSE."""

    Params = RankUpRDAParams
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("arc_unlabeled", "rda")
    search_space: ClassVar[dict[str, Range]] = {
        "arc_weight": ARC_WEIGHT,
        "arc_unlabeled_weight": CONSISTENCY_WEIGHT,
        "unsup_weight": CONSISTENCY_WEIGHT,
    }

    def __init__(
        self,
        regressor: Regressor,
        params: RankUpRDAParams,
        new_regressor: RegressorFactory | None = None,
    ) -> None:
        super().__init__(regressor, params, new_regressor)
        self.bank = AlignedPseudoLabels()

    def on_stage_start(self, ctx: FitContext) -> None:
        self.bank.start(ctx, lambda x: self.regressor(x)[1])

    def on_epoch_start(self, ctx: FitContext) -> None:
        self.bank.epoch_start(ctx)

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        pred, terms = self.rankup_terms(batch, ctx)
        terms["rda"] = self.bank.loss(pred, batch)
        loss = terms["mse"] + rda_weight(self.params, ctx) * terms["rda"] + self.arc_loss(terms)
        return {"loss": loss, **terms}

    def unlabeled_estimates(self, ctx: FitContext) -> torch.Tensor:
        return self.bank.aligned

    def summary(self) -> dict[str, float]:
        return {"rda_refreshes": float(self.bank.refreshes)}
