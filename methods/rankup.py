"""RankUp and RankUp + RDA: Huang, Fu & Tsao, "RankUp: Boosting Semi-Supervised Regression with
an Auxiliary Ranking Classifier", NeurIPS 2024; code: github.com/pm25/Semi-Supervised-Regression,
``semilearn/algorithms/rankup/rankup.py``, ``semilearn/algorithms/rankuprda/rankuprda.py`` and
the ARC of ``semilearn/algorithms/rankuprda/rankup_net.py``; defaults from
``config/classic_cv/rankup/rankup_utkface_lb*_s0.yaml`` and
``config/classic_cv/rankuprda/rankuprda_utkface_lb*_s0.yaml``.

The auxiliary ranking classifier (ARC) is a ``Linear(D, 2)`` on the regressor's embedding
(xavier-normal weights, zero bias, as the authors initialise it). For an ordered pair (i, j)
of images its logits are ``arc(f_i) − arc(f_j)`` (:func:`pair_logits`), class 0 meaning
"y_i > y_j". Labeled pairs are trained with cross-entropy against
[(1 + sign(y_i − y_j))/2, (1 − sign(y_i − y_j))/2] (a tie between two images is 0.5/0.5, as in
the authors' code). Unlabeled pairs are trained FixMatch-style: the weak view's pair
probabilities (no gradient) give a hard pseudo-label (argmax) where their maximum is ≥ τ,
and the strong view's pair logits are trained on it with cross-entropy, averaged over all
pairs (the unconfident ones count as zeros, as USB's masked mean). The losses::

    rankup:     loss = MSE_labeled + λ_arc · (CE_arc_labeled + w_u · CE_arc_unlabeled)
    rankup_rda: loss = MSE_labeled + w_rda · min(1, t / rampup) · MSE_rda
                       + λ_arc · (CE_arc_labeled + w_u · CE_arc_unlabeled)

with the RDA term of :mod:`bmdbench.methods.rda` (on the weak view's prediction, as in
``rankuprda.py``). The authors' softmax temperature T = 0.5 only sharpens soft
pseudo-labels; their configs use hard labels (``hard_label: True``), where T has no effect,
so it is not a parameter here.

**The pairs.** The authors form all B² ordered pairs of their labeled batch (B = 32: 1,024
pairs, 992 of two different images) and of their unlabeled batch (224 images), an image
paired with itself included (a constant log 2 for a labeled pair, never confident for an
unlabeled one). Here a pair of an image with itself never counts, labeled or unlabeled
(:func:`distinct_pairs`, by pool position, so that an image drawn twice is caught too), and
the labeled pairs are formed over ``arc_labeled_images`` = 32 labeled images per step: the
two-stream batch's own ``stage2.labeled_per_batch`` (4) plus as many more drawn at random
from the rest of the labeled pool (:func:`draw_labeled`, torch's global RNG, fewer if the
pool has fewer), augmented and passed in the same forward pass as the batch: 32 · 31 = 992
labeled pairs per step, the authors' number. The supervised MSE stays on the batch's own
labeled images, as for every two-stream method; the drawn images serve the ranking loss
only. The unlabeled pairs are those of the batch's unlabeled images (12 · 11 = 132 per step;
the authors' 224 · 223 = 49,952). The fraction of unlabeled pairs whose weak-view confidence
passes τ is logged per epoch (``arc_pass_rate`` in the epoch log) and over the stage (the run
record's diagnostics).

**The strong view** (:func:`strong_view`). USB's FixMatch strong augmentation is the weak one
(crop, flip) plus RandAugment(3, 5) — three operations drawn with replacement from fourteen,
each at a uniform random magnitude — plus a Cutout of up to half the image side, filled with
gray. The rule for a radiograph: a strong view may change what a different exposure, display
or detector could have made of the same bone, and nothing else. In a radiograph the density
is read from the image's structure and from how bright bone is *relative to* its surroundings
(the phantoms carry BMD in cortical thickness and trabecular pattern; exposure — gain, offset,
gamma — varies per image and is unrelated to it), not from the absolute grey level. So kept,
with USB's magnitude ranges: identity; the order-preserving intensity maps — autocontrast,
brightness (×[0.05, 0.95]), contrast (towards the mean, ×[0.05, 0.95]), posterize (4–7 bits),
equalize (PIL's per-image histogram equalisation), each a monotone increasing remap of the
grey levels, as exposure and display are; sharpness (blend with PIL's 3×3 smoothing filter,
[0.05, 0.95]: a blur, as the detector's); then Cutout (side U[0, 0.5] of each axis, filled
with 0.5). Left out: Invert and Solarize, which reverse the grey-level order (bone darker than
soft tissue), which no acquisition produces; Color (a no-op on one channel); and the
geometric operations (rotate ±30°, shear ±0.3, translate ±0.3): the view's geometry is the
run's own augmentation (``ctx.augment``, a fresh draw, as USB draws a fresh crop for the
strong view), so the measured bone is not moved out of the frame. Operations and magnitudes
are drawn per image from torch's global RNG (seeded by the Trainer), on the batch's device, in
fp32; images stay in [0, 1] (the weak view is clipped to it first, as PIL's 8-bit images are).

Decisions where the paper and code were silent or do not carry over:

- A stage-2 method: the regressor starts from a stage-1 checkpoint, the ARC from scratch.
- The weak view of the whole batch (labeled and unlabeled) and of the drawn labeled images is
  one forward pass; the strong view is made and predicted for the unlabeled images only, as
  in USB. Batch norm is updated by both passes (USB freezes its statistics during the weak
  unlabeled pass).
- USB's unlabeled set also holds the labeled images (``include_lb_to_ulb``); here it is the
  unlabeled pool only.
- The supervised regression term is bmdbench's MSE (the authors' UTKFace configs use L1);
  the method evaluates its network, not USB's EMA of the weights.
- The ARC head and every loss run in fp32, outside autocast.
"""

from __future__ import annotations

import math
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


def distinct_pairs(index: torch.Tensor) -> torch.Tensor:
    """Pool positions (B,) → mask (B·B,) of the ordered pairs, rows as :func:`pair_logits` orders
    them, of two different images: a pair of an image with itself never counts."""
    return (index[:, None] != index[None, :]).flatten()


def draw_labeled(n_labeled: int, taken: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` labeled pool positions (of 0 … ``n_labeled`` − 1) drawn without replacement
    from torch's global RNG, none of them in ``taken``; fewer if fewer are left, none if
    ``count`` ≤ 0."""
    free = torch.ones(n_labeled, dtype=torch.bool, device=taken.device)
    free[taken] = False
    candidates = free.nonzero().squeeze(1)
    order = torch.randperm(len(candidates), device=taken.device)
    return candidates[order[: max(count, 0)]]


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


def _equalize(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per image on the 8-bit levels floor(255·x): with h the
    histogram, ``step = (Σh − h[last non-empty level]) // 255``, level i maps to
    ``(step // 2 + Σ_{k<i} h[k]) // step`` (at most 255); an image with step 0 is unchanged."""
    levels = (x * 255).floor().clamp(0, 255).long().flatten(1)  # (B, C·H·W)
    hist = torch.zeros(levels.shape[0], 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    last = torch.where(hist > 0, torch.arange(256, device=x.device), 0).amax(dim=1, keepdim=True)
    step = (hist.sum(dim=1, keepdim=True) - hist.gather(1, last)) // 255
    below = hist.cumsum(dim=1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    out = (lut.gather(1, levels).to(x.dtype) / 255).view_as(x)
    return torch.where(_per_image(step.squeeze(1) > 0, x), out, x)


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
    _equalize,
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
    # labeled images whose pairs train the ARC per step: the batch's own and as many more
    # drawn from the labeled pool (the authors' labeled batch, batch_size 32: 992 pairs)
    arc_labeled_images: int = field(default=32, metadata=at_least(0))


class PassRate:
    """How many unlabeled pairs' weak-view confidence passes τ: per epoch and over the stage.
    Counted on the device (no synchronisation per step) and read once per epoch."""

    def __init__(self) -> None:
        self.epoch_passed: torch.Tensor | float = 0.0
        self.epoch_pairs = 0
        self.passed = 0.0
        self.pairs = 0

    def add(self, mask: torch.Tensor) -> None:
        """Count a step's confidence mask (N,) of unlabeled pairs."""
        self.epoch_passed = self.epoch_passed + mask.sum()
        self.epoch_pairs += mask.numel()

    def epoch_end(self, ctx: FitContext) -> None:
        """Log the epoch's pass rate (``arc_pass_rate``), add it to the stage's, start anew."""
        passed = float(self.epoch_passed)
        ctx.log["arc_pass_rate"] = _ratio(passed, self.epoch_pairs)
        self.passed += passed
        self.pairs += self.epoch_pairs
        self.epoch_passed, self.epoch_pairs = 0.0, 0

    @property
    def rate(self) -> float:
        """The stage's pass rate so far (NaN before any pair)."""
        return _ratio(self.passed, self.pairs)


def _ratio(part: float, whole: int) -> float:
    return part / whole if whole else math.nan


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
        self.pass_rate = PassRate()

    def arc_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """The ARC's two outputs per image (B, 2), in fp32."""
        with torch.autocast(embedding.device.type, enabled=False):
            return self.arc(embedding.float())

    def rankup_terms(
        self, batch: Batch, ctx: FitContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weak view's prediction of the batch (B,) and the losses: MSE, the ARC's labeled
        and unlabeled terms (module docstring: the pairs)."""
        labeled, unlabeled = batch.labeled, ~batch.labeled
        own = batch.index[labeled]
        drawn = draw_labeled(ctx.n_labeled, own, self.params.arc_labeled_images - len(own))
        images = batch.images
        if len(drawn):
            images = torch.cat([images, ctx.pool_batch(drawn).images])
        embedding, pred = self.regressor(ctx.augment(images))
        n = len(batch.index)
        pred, scores = pred[:n], self.arc_scores(embedding)
        ranked = torch.cat([own, drawn])
        pairs = distinct_pairs(ranked)
        arc_labeled = soft_cross_entropy(
            pair_logits(torch.cat([scores[:n][labeled], scores[n:]]))[pairs],
            pair_targets(ctx.pool_targets[ranked])[pairs],
        )
        pairs = distinct_pairs(batch.index[unlabeled])
        labels, mask = confident_pseudo_labels(
            pair_logits(scores[:n][unlabeled])[pairs], self.params.threshold
        )
        self.pass_rate.add(mask)
        if bool(unlabeled.any()):
            strong_embedding, _ = self.regressor(strong_view(batch.images[unlabeled], ctx.augment))
            strong_logits = pair_logits(self.arc_scores(strong_embedding))[pairs]
        else:
            strong_logits = pair_logits(scores[:n][unlabeled])
        terms = {
            "mse": masked_mse(pred, batch.targets, labeled),
            "arc_labeled": arc_labeled,
            "arc_unlabeled": masked_cross_entropy(strong_logits, labels, mask),
        }
        return pred, terms

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.pass_rate.epoch_end(ctx)

    def summary(self) -> dict[str, float]:
        """The stage's fraction of unlabeled pairs that passed τ."""
        return {"arc_pass_rate": self.pass_rate.rate}

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
        return {**super().summary(), "rda_refreshes": float(self.bank.refreshes)}
