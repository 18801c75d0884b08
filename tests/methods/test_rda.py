"""RDA (bmdbench.methods.rda): the alignment and the loss against numbers computed by hand,
the contract, and one smoke-preset run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bmdbench.backbones import build_backbone
from bmdbench.data import sources
from bmdbench.data.module import Batch
from bmdbench.methods import FitContext, Regressor
from bmdbench.methods.rda import (
    RDA,
    AlignedPseudoLabels,
    align_to_labeled,
    linear_rampup,
    rda_weight,
)
from bmdbench.runner import execute
from bmdbench.spec import resolve
from bmdbench.testing import make_imageset

NAN = float("nan")


def test_equal_counts_give_the_labeled_targets_in_the_predictions_order():
    # ranks of [0.9, 0.1, 0.5]: 2, 0, 1 → the 3rd, 1st and 2nd smallest of [1, 2, 3]
    aligned = align_to_labeled(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([1.0, 2.0, 3.0]))
    assert aligned.tolist() == [3.0, 1.0, 2.0]


def test_more_predictions_than_targets_are_interpolated():
    # 5 predictions at quantiles 0, ¼, ½, ¾, 1; the sorted targets [1, 2, 3] at 0, ½, 1:
    # 1, 1.5, 2, 2.5, 3 by rank; ranks of [0.9, 0.1, 0.5, 0.3, 0.7] are 4, 0, 2, 1, 3
    aligned = align_to_labeled(
        torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7]), torch.tensor([3.0, 1.0, 2.0])
    )
    assert aligned.tolist() == [3.0, 1.0, 2.0, 1.5, 2.5]


def test_fewer_predictions_than_targets_take_the_matching_quantiles():
    # 2 predictions at quantiles 0 and 1; sorted targets [1, 2, 3, 10] at 0, ⅓, ⅔, 1
    aligned = align_to_labeled(torch.tensor([0.9, 0.1]), torch.tensor([3.0, 1.0, 2.0, 10.0]))
    assert aligned.tolist() == [10.0, 1.0]
    # 3 predictions at 0, ½, 1: ½ lies between ⅓ (2) and ⅔ (3), half way → 2.5
    aligned = align_to_labeled(torch.tensor([5.0, 6.0, 7.0]), torch.tensor([3.0, 1.0, 2.0, 10.0]))
    assert aligned.tolist() == pytest.approx([1.0, 2.5, 10.0])


def test_alignment_is_the_authors_np_interp():
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randn(37, generator=generator)
    targets = torch.rand(11, generator=generator) * 3
    expected = np.empty(37)
    expected[np.argsort(predictions.numpy(), kind="stable")] = np.interp(
        np.linspace(0, 1, 37), np.linspace(0, 1, 11), np.sort(targets.numpy())
    )
    assert align_to_labeled(predictions, targets).numpy() == pytest.approx(expected, abs=1e-6)


def test_alignment_edge_cases():
    # one prediction: quantile 0, the smallest target; one target: every prediction gets it
    assert align_to_labeled(torch.tensor([4.0]), torch.tensor([2.0, 1.0])).tolist() == [1.0]
    assert align_to_labeled(torch.tensor([4.0, 0.0]), torch.tensor([2.0])).tolist() == [2.0, 2.0]
    # equal predictions are ordered by position
    assert align_to_labeled(torch.tensor([1.0, 1.0]), torch.tensor([5.0, 6.0])).tolist() == [
        5.0,
        6.0,
    ]
    assert align_to_labeled(torch.zeros(0), torch.tensor([1.0])).shape == (0,)
    with pytest.raises(ValueError, match="labeled targets"):
        align_to_labeled(torch.tensor([1.0]), torch.zeros(0))


def test_linear_rampup():
    # clip(t / 0.4, 0, 1)
    assert linear_rampup(0.0, 0.4) == 0.0
    assert linear_rampup(0.2, 0.4) == pytest.approx(0.5)
    assert linear_rampup(0.9, 0.4) == 1.0
    assert linear_rampup(0.0, 0.0) == 1.0


def context(pool_targets: torch.Tensor, predictions: torch.Tensor) -> FitContext:
    """A FitContext whose ``predict_pool`` returns ``predictions``."""
    return FitContext(
        augment=lambda x: x,
        predict_pool=lambda predictor: predictions.clone(),
        pool_size=len(pool_targets),
        n_labeled=int(torch.isfinite(pool_targets).sum()),
        pool_targets=pool_targets,
        epochs=1,
        steps_per_epoch=1,
    )


def test_bank_loss_record_and_refresh_by_hand():
    # pool: 3 labeled (targets 1, 2, 3), 3 unlabeled predicted 0.9, 0.1, 0.5 → aligned 3, 1, 2
    targets = torch.tensor([1.0, 2.0, 3.0, NAN, NAN, NAN])
    bank = AlignedPseudoLabels()
    bank.start(context(targets, torch.tensor([0.0, 0.0, 0.0, 0.9, 0.1, 0.5])), lambda x: x)
    assert bank.aligned.tolist() == [1.0, 2.0, 3.0, 3.0, 1.0, 2.0]
    index = torch.tensor([0, 3, 4])
    batch = Batch(torch.zeros(3, 1, 2, 2), targets[index], torch.isfinite(targets[index]), index)
    # unlabeled images 3 and 4 predicted 2.0 and 2.0: ((3 − 2)² + (1 − 2)²) / 2 = 1
    loss = bank.loss(torch.tensor([1.5, 2.0, 2.0]), batch)
    assert loss.item() == pytest.approx(1.0)
    assert bank.raw[3:].tolist() == [2.0, 2.0, 0.5]  # recorded; the labeled image is not
    # realigned: 0.5 is the smallest (→ 1); the two 2.0 by position (→ 2, then 3)
    bank.refresh()
    assert bank.aligned.tolist() == [1.0, 2.0, 3.0, 2.0, 3.0, 1.0]
    assert bank.refreshes == 2


def test_unlabeled_weight_ramps_linearly():
    ctx = context(torch.tensor([1.0, NAN]), torch.zeros(2))
    method = RDA(Regressor(build_backbone("tiny")), RDA.Params(unsup_weight=2.0))
    ctx.epochs, ctx.steps_per_epoch, ctx.step = 10, 10, 20  # progress 0.2 of the 0.4 ramp
    assert rda_weight(method.params, ctx) == pytest.approx(2.0 * 0.5)
    assert ctx.log["unsup_weight"] == pytest.approx(1.0)


def test_loss_is_mse_plus_weighted_rda():
    torch.manual_seed(0)
    method = RDA(Regressor(build_backbone("tiny")), RDA.Params(rampup=0.0, unsup_weight=3.0))
    targets = torch.tensor([1.0, 2.0, NAN, NAN])
    images = torch.rand(4, 1, 16, 16)
    ctx = context(targets, torch.tensor([0.0, 0.0, 0.2, 0.1]))
    method.on_stage_start(ctx)
    index = torch.arange(4)
    losses = method.training_step(Batch(images, targets, torch.isfinite(targets), index), ctx)
    assert losses["loss"].item() == pytest.approx(
        losses["mse"].item() + 3.0 * losses["rda"].item(), rel=1e-6
    )
    assert math.isfinite(losses["rda"].item()) and losses["rda"].item() > 0


def test_rda_on_the_smoke_preset(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "load_images", lambda cfg: make_imageset(size=32))
    overrides = {"split.val": "8", "split.test": "8", "stage1.epochs": "1", "stage2.epochs": "2"}
    cfg = resolve("rda", "tiny", "smoke", overrides, device="cpu")
    record = execute(cfg, tmp_path, show_progress=False).record
    assert record.status == "ok" and record.method == "rda"
    assert np.isfinite(record.metrics["test"]["rmse"])
    assert record.diagnostics["rda_refreshes"] == 2  # at the stage's start, then epoch 2's
