"""Consistency-regularisation baselines of the paper's Table 2, as their own papers define them.

Π-model and temporal ensembling: Laine & Aila, "Temporal ensembling for
semi-supervised learning", ICLR 2017. Mean teacher: Tarvainen & Valpola,
NeurIPS 2017. All fine-tune a stage-1 checkpoint. Every batch holds a fixed
number of labeled images beside the unlabeled ones (``stage2.labeled_per_batch``,
mean teacher's labeled sub-batch), so the MSE term is averaged over the same
number of images on every step; the consistency term covers every image of the
batch (labeled and unlabeled, as in both papers) with a weight ramped up by
exp(−5(1−t)²).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.optim.swa_utils import AveragedModel

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
from bmdbench.methods.losses import gaussian_rampup, masked_mse


@dataclass(frozen=True)
class ConsistencyParams:
    # stage-1 method whose checkpoint this method fine-tunes
    stage1: str = field(default="baseline", metadata=STAGE1)
    # w_max: weight of the consistency term after ramp-up
    consistency_weight: float = field(default=1.0, metadata=at_least(0))
    # fraction of stage 2 over which the weight ramps up
    rampup: float = field(default=0.3, metadata=between(0, 1))


class _Consistency(Method):
    stage = 2
    two_stream = True
    unsupervised_terms = ("consistency",)
    search_space: ClassVar[dict[str, Range]] = {"consistency_weight": CONSISTENCY_WEIGHT}

    def unsup_weight(self, ctx: FitContext) -> float:
        ramp = ctx.progress / self.params.rampup if self.params.rampup > 0 else 1.0
        weight = self.params.consistency_weight * gaussian_rampup(ramp)
        ctx.log["unsup_weight"] = weight
        return weight


@METHODS.register("pi_model")
class PiModel(_Consistency):
    """Π-model: squared difference between the predictions for two augmentations of each image."""

    Params = ConsistencyParams

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, pred_view1 = self.regressor(ctx.augment(batch.images))
        _, pred_view2 = self.regressor(ctx.augment(batch.images))
        mse = masked_mse(pred_view1, batch.targets, batch.labeled)
        consistency = (pred_view1 - pred_view2).pow(2).mean()
        loss = mse + self.unsup_weight(ctx) * consistency
        return {"loss": loss, "mse": mse, "consistency": consistency}


@dataclass(frozen=True)
class TemporalEnsemblingParams(ConsistencyParams):
    # ensemble momentum: Z ← αZ + (1−α)z after every epoch
    alpha: float = field(default=0.6, metadata=between(0, 1, open_=True))


@METHODS.register("temporal_ensembling")
class TemporalEnsembling(_Consistency):
    """Temporal ensembling: consistency to a bias-corrected moving average of past predictions."""

    Params = TemporalEnsemblingParams
    ensemble: torch.Tensor  # Z, per pool image
    epoch_preds: torch.Tensor  # z, this epoch's prediction per pool image
    seen: torch.Tensor  # whether the image was predicted this epoch
    updates: torch.Tensor  # t, how many times Z was updated per image

    def on_stage_start(self, ctx: FitContext) -> None:
        zeros = torch.zeros(ctx.pool_size, device=ctx.pool_targets.device)
        self.register_buffer("ensemble", zeros.clone(), persistent=False)  # Z
        self.register_buffer("epoch_preds", zeros.clone(), persistent=False)  # z of this epoch
        self.register_buffer("seen", zeros.bool(), persistent=False)  # predicted this epoch
        self.register_buffer("updates", zeros.clone(), persistent=False)  # t: updates of Z

    def targets(self) -> torch.Tensor:
        """z̃ = Z / (1 − α^t); NaN for images never ensembled yet."""
        correction = 1.0 - self.params.alpha**self.updates
        return torch.where(self.updates > 0, self.ensemble / correction, torch.nan)

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, pred = self.regressor(ctx.augment(batch.images))
        mse = masked_mse(pred, batch.targets, batch.labeled)
        target = self.targets()[batch.index]
        has_target = torch.isfinite(target)
        consistency = masked_mse(pred, target, has_target)
        with torch.no_grad():
            self.epoch_preds[batch.index] = pred.detach().float()
            self.seen[batch.index] = True
        loss = mse + self.unsup_weight(ctx) * consistency
        return {"loss": loss, "mse": mse, "consistency": consistency}

    def on_epoch_end(self, ctx: FitContext) -> None:
        alpha = self.params.alpha
        self.ensemble.copy_(
            torch.where(
                self.seen, alpha * self.ensemble + (1 - alpha) * self.epoch_preds, self.ensemble
            )
        )
        self.updates += self.seen.float()
        self.seen.zero_()

    def unlabeled_estimates(self, ctx: FitContext) -> torch.Tensor:
        return self.targets()


@dataclass(frozen=True)
class MeanTeacherParams(ConsistencyParams):
    # teacher EMA decay during the ramp-up
    ema_decay_rampup: float = field(default=0.99, metadata=between(0, 1, open_=True))
    # teacher EMA decay afterwards
    ema_decay: float = field(default=0.999, metadata=between(0, 1, open_=True))


@METHODS.register("mean_teacher")
class MeanTeacher(_Consistency):
    """Mean teacher: the student matches an EMA-of-weights teacher; the teacher is evaluated."""

    Params = MeanTeacherParams
    # under quick, the teacher's horizon, 1/(1 − decay) steps, is the same share of stage 2 as
    # the paper's (5 of 276 steps; 1000 of 54,200): with 0.999 or 0.99 the evaluated teacher
    # still holds the weights of stage 2's hot start when its rate has annealed. The ramp-up
    # decay keeps its place below the later one (paper 0.99 < 0.999; its share, 100 of
    # 54,200 steps, is half a step here: 0.5 is a two-step horizon)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"ema_decay": 0.8, "ema_decay_rampup": 0.5}
    }
    search_space: ClassVar[dict[str, Range]] = {
        "consistency_weight": CONSISTENCY_WEIGHT,
        "ema_decay": Range("ema", 0.99, 0.9999),
    }
    tune_default = ("ema",)

    teacher_targets: torch.Tensor  # the teacher's last prediction per pool image, NaN before

    def __init__(
        self,
        regressor: Regressor,
        params: MeanTeacherParams,
        new_regressor: RegressorFactory | None = None,
    ) -> None:
        super().__init__(regressor, params, new_regressor)
        # The teacher: torch's AveragedModel of the student's weights and batch-norm statistics
        # (its network is ``teacher.module``). Its first update copies the student, so it is
        # made here, and every after_step averages, from the stage-1 weights on.
        self.teacher = AveragedModel(regressor, use_buffers=True)
        self.teacher.update_parameters(regressor)
        self.teacher.requires_grad_(False)
        self._ema_groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None

    def on_stage_start(self, ctx: FitContext) -> None:
        nan = torch.full((ctx.pool_size,), torch.nan, device=ctx.pool_targets.device)
        self.register_buffer("teacher_targets", nan, persistent=False)
        self._ema_groups = None  # the tensors of the device the method now lies on

    def train(self, mode: bool = True) -> MeanTeacher:
        """The teacher always runs in eval mode (its batch-norm statistics are averaged too)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, student_view1 = self.regressor(ctx.augment(batch.images))
        with torch.no_grad():
            _, teacher_view2 = self.teacher(ctx.augment(batch.images))
            self.teacher_targets[batch.index] = teacher_view2.float()
        mse = masked_mse(student_view1, batch.targets, batch.labeled)
        consistency = (student_view1 - teacher_view2.detach()).pow(2).mean()
        loss = mse + self.unsup_weight(ctx) * consistency
        return {"loss": loss, "mse": mse, "consistency": consistency}

    def ema_decay(self, ctx: FitContext) -> float:
        """Tarvainen & Valpola: min(1 − 1/(step + 1), decay), decay raised after the ramp-up."""
        in_rampup = ctx.progress < self.params.rampup
        decay = self.params.ema_decay_rampup if in_rampup else self.params.ema_decay
        return min(1.0 - 1.0 / (ctx.step + 1), decay)

    @torch.no_grad()
    def after_step(self, ctx: FitContext) -> None:
        """The teacher's EMA update, as ``AveragedModel.update_parameters`` makes it after its
        first (weights and batch-norm statistics; ``n_averaged`` counted up), without its two
        device-to-host reads of ``n_averaged`` and its regrouping of the tensors every step."""
        if self._ema_groups is None:
            self._ema_groups = self._group_for_ema()
        decay = self.ema_decay(ctx)
        for teacher, student in self._ema_groups:
            ema_update(teacher, student, self.teacher.n_averaged, decay=decay)
        self.teacher.n_averaged += 1

    def _group_for_ema(self) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """The teacher's parameters and buffers beside the student's, grouped by dtype as
        ``AveragedModel`` groups them. Gathered at the first step of a stage: moving the
        method to its device (``Trainer.prepare``, before ``on_stage_start``) replaces the
        buffers."""
        teacher = [*self.teacher.module.parameters(), *self.teacher.module.buffers()]
        student = [*self.regressor.parameters(), *self.regressor.buffers()]
        groups: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for t, s in zip(teacher, student, strict=True):
            group = groups.setdefault(t.dtype, ([], []))
            group[0].append(t)
            group[1].append(s)
        return list(groups.values())

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)[1]

    def unlabeled_estimates(self, ctx: FitContext) -> torch.Tensor:
        """The consistency targets the student last saw: the teacher's prediction of each
        pool image's second view, recorded during training (predicting the whole pool again
        after every epoch only for this diagnostic cost a fifth of stage 2's time)."""
        return self.teacher_targets


def ema_update(
    teacher: list[torch.Tensor],
    student: list[torch.Tensor],
    n_averaged: torch.Tensor | int,
    *,
    decay: float,
) -> None:
    """AveragedModel's ``multi_avg_fn`` for the mean teacher, on tensors of one device and
    dtype: teacher ← decay·teacher + (1 − decay)·student for floating-point tensors,
    multiplied, then added (Tarvainen & Valpola's arithmetic); integer buffers (batch norm's
    ``num_batches_tracked``) are copied. The library's EMA functions (torch's
    ``get_ema_avg_fn``, ``get_ema_multi_avg_fn`` and timm's ``ModelEmaV3``, which lerp) round
    differently in the last bit and would change the published numbers."""
    if teacher[0].is_floating_point():
        torch._foreach_mul_(teacher, decay)
        torch._foreach_add_(teacher, student, alpha=1 - decay)
    else:
        for teacher_value, student_value in zip(teacher, student, strict=True):
            teacher_value.copy_(student_value)
