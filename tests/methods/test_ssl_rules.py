"""The semi-supervised methods' update rules against numbers computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bmdbench.backbones import build_backbone
from bmdbench.methods import Regressor
from bmdbench.methods.consistency_regularisation import (
    MeanTeacher,
    MeanTeacherParams,
    PiModel,
    TemporalEnsembling,
    TemporalEnsemblingParams,
)
from bmdbench.methods.self_training import SelfTraining, SelfTrainingParams, should_refresh


def ctx_stub(pool_size: int = 3, **kw):
    targets = torch.tensor([0.5] + [float("nan")] * (pool_size - 1))
    return SimpleNamespace(pool_size=pool_size, pool_targets=targets, log={}, **kw)


def test_temporal_ensembling_update_and_bias_correction():
    method = TemporalEnsembling(
        Regressor(build_backbone("tiny")), TemporalEnsemblingParams(alpha=0.6)
    )
    ctx = ctx_stub()
    method.on_stage_start(ctx)
    assert torch.isnan(method.targets()).all()  # nothing ensembled yet
    method.epoch_preds.copy_(torch.tensor([1.0, 2.0, 0.0]))
    method.seen.copy_(torch.tensor([True, True, False]))
    method.on_epoch_end(ctx)
    # Z = 0.6·0 + 0.4·z → [0.4, 0.8]; t = 1 → z̃ = Z / (1 − 0.6) = [1.0, 2.0]; image 2 unseen
    assert method.targets()[:2].tolist() == pytest.approx([1.0, 2.0])
    assert torch.isnan(method.targets()[2])
    method.epoch_preds.copy_(torch.tensor([2.0, 2.0, 3.0]))
    method.seen.copy_(torch.tensor([True, True, True]))
    method.on_epoch_end(ctx)
    # image 0: Z = 0.6·0.4 + 0.4·2 = 1.04, t = 2 → 1.04 / (1 − 0.36) = 1.625
    # image 1: Z = 0.6·0.8 + 0.4·2 = 1.28 → 1.28 / 0.64 = 2.0
    # image 2: Z = 0.4·3 = 1.2, t = 1 → 1.2 / 0.4 = 3.0
    assert method.targets().tolist() == pytest.approx([1.625, 2.0, 3.0])


def test_rampup_weight_follows_the_gaussian_schedule():
    method = PiModel(Regressor(build_backbone("tiny")), TemporalEnsemblingParams(rampup=0.5))
    # progress 0.25 of the stage = half of a ramp over 0.5 → exp(−5·0.5²) = 0.2865
    ctx = SimpleNamespace(progress=0.25, log={})
    assert method.unsup_weight(ctx) == pytest.approx(0.286505, abs=1e-6)
    assert ctx.log["unsup_weight"] == pytest.approx(0.286505, abs=1e-6)
    assert method.unsup_weight(SimpleNamespace(progress=0.9, log={})) == 1.0


def test_mean_teacher_ema_update():
    params = MeanTeacherParams(ema_decay_rampup=0.99, ema_decay=0.999, rampup=0.5)
    method = MeanTeacher(Regressor(build_backbone("tiny")), params)
    student_w = method.regressor.head.weight
    teacher_w = method.teacher.module.head.weight
    assert torch.equal(student_w, teacher_w)  # the teacher starts as the stage-1 model
    with torch.no_grad():
        teacher_w.fill_(1.0)
        student_w.fill_(3.0)
    # step 9 in the ramp-up: decay = min(1 − 1/10, 0.99) = 0.9 → 0.9·1 + 0.1·3 = 1.2
    method.after_step(SimpleNamespace(step=9, progress=0.1))
    assert teacher_w.detach() == pytest.approx(torch.full_like(teacher_w, 1.2))
    # step 10 000 after the ramp-up: decay 0.999 → 0.999·1.2 + 0.001·3 = 1.2018
    method.after_step(SimpleNamespace(step=10_000, progress=0.9))
    assert teacher_w.detach() == pytest.approx(torch.full_like(teacher_w, 1.2018))
    assert not any(p.requires_grad for p in method.teacher.parameters())


def test_mean_teacher_predicts_with_the_teacher():
    method = MeanTeacher(Regressor(build_backbone("tiny")), MeanTeacherParams())
    with torch.no_grad():
        method.teacher.module.head.bias.fill_(100.0)
    method.eval()
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(method.predict(x), method.teacher.module(x)[1])
    assert not torch.allclose(method.predict(x), method.regressor(x)[1])


def test_mean_teacher_reports_the_targets_it_trained_on():
    method = MeanTeacher(Regressor(build_backbone("tiny")), MeanTeacherParams())
    method.on_stage_start(ctx_stub(pool_size=4))
    with torch.no_grad():
        method.teacher.module.head.weight.zero_()
        method.teacher.module.head.bias.fill_(2.5)  # the teacher predicts 2.5 for every view
    images = torch.rand(2, 1, 16, 16)
    batch = SimpleNamespace(
        images=images,
        targets=torch.tensor([1.0, float("nan")]),
        labeled=torch.tensor([True, False]),
        index=torch.tensor([1, 3]),
    )
    method.training_step(batch, SimpleNamespace(augment=lambda x: x, progress=1.0, log={}))
    estimates = method.unlabeled_estimates(SimpleNamespace())
    assert estimates[[1, 3]].tolist() == [2.5, 2.5]  # recorded, not predicted again
    assert torch.isnan(estimates[[0, 2]]).all()  # images not trained on yet


@pytest.mark.parametrize(
    ("r", "mse", "expected"),
    [
        (0.80, 0.010, True),  # both improve
        (0.80, 0.030, False),  # R rises, MSE rises
        (0.60, 0.010, False),  # MSE falls, R falls
        (0.70, 0.010, False),  # R equal is not higher
        (0.80, 0.020, False),  # MSE equal is not lower
    ],
)
def test_algorithm_1_refresh_rule(r, mse, expected):
    assert should_refresh(r, mse, best_r=0.70, best_mse=0.020) is expected


def test_self_training_refreshes_only_when_both_improve():
    method = SelfTraining(Regressor(build_backbone("tiny")), SelfTrainingParams())
    calls = []
    ctx = ctx_stub(predict_pool=lambda predictor: calls.append(1) or torch.tensor([9.0, 0.7, 0.8]))
    method.on_stage_start(ctx)
    assert torch.isnan(method.pseudo[1:]).all()  # no pseudo labels before the first refresh
    for r, rmse, refreshed in [
        (0.5, 0.2, True),
        (0.6, 0.3, False),
        (0.4, 0.1, False),
        (0.7, 0.1, True),
    ]:
        ctx.val = {"pearson_r": r, "rmse": rmse}
        method.on_epoch_start(ctx)
        assert ctx.log["pseudo_refreshed"] == float(refreshed)
    assert len(calls) == 2 and method.summary() == {"pseudo_refreshes": 2.0}
    # labeled images keep their labels; unlabeled ones get the model's predictions
    assert method.pseudo.tolist() == pytest.approx([0.5, 0.7, 0.8])


def test_the_no_consistency_ablation_draws_one_view_and_proposed_two(imageset):
    from bmdbench.config import SplitConfig
    from bmdbench.data.module import DataModule
    from bmdbench.data.splits import make_split
    from bmdbench.methods.self_training import NoConsistencyParams, SelfTrainingNoConsistency

    data = DataModule(
        imageset, make_split(imageset, SplitConfig(val=8, test=8)), torch.device("cpu")
    )
    batch = next(data.train_batches(8, True, torch.Generator().manual_seed(0)))
    for cls, params, views in (
        (SelfTrainingNoConsistency, NoConsistencyParams(), 1),
        (SelfTraining, SelfTrainingParams(), 2),
    ):
        calls = []
        ctx = SimpleNamespace(augment=lambda x, calls=calls: calls.append(1) or x)
        method = cls(Regressor(build_backbone("tiny")), params)
        method.register_buffer("pseudo", data.pool_targets.clone(), persistent=False)
        losses = method.training_step(batch, ctx)
        assert len(calls) == views
        assert ("consistency" in losses) == (views == 2)
