"""RankUp and RankUp + RDA (bmdbench.methods.rankup): the ARC's pairs and losses against
numbers computed by hand, the strong view, the contract, and smoke-preset runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bmdbench.backbones import build_backbone
from bmdbench.data import sources
from bmdbench.data.module import Batch
from bmdbench.methods import FitContext, Regressor
from bmdbench.methods.rankup import (
    RankUp,
    RankUpRDA,
    _brightness,
    _contrast,
    _posterize,
    confident_pseudo_labels,
    cutout,
    masked_cross_entropy,
    pair_logits,
    pair_targets,
    soft_cross_entropy,
    strong_view,
)
from bmdbench.runner import execute
from bmdbench.spec import resolve
from bmdbench.testing import make_imageset

NAN = float("nan")


def test_pair_logits_are_score_differences_of_every_ordered_pair():
    scores = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # row i·2 + j = scores[i] − scores[j]: (0,0) 0; (0,1) [1, −2]; (1,0) [−1, 2]; (1,1) 0
    assert pair_logits(scores).tolist() == [[0, 0], [1, -2], [-1, 2], [0, 0]]


def test_pair_labels():
    # y = [1, 3, 3]; class 0 is "y_i > y_j"; ties and i = j are 0.5 / 0.5
    assert pair_targets(torch.tensor([1.0, 3.0, 3.0])).tolist() == [
        [0.5, 0.5], [0.0, 1.0], [0.0, 1.0],  # i = 0: 1 vs 1, 3, 3
        [1.0, 0.0], [0.5, 0.5], [0.5, 0.5],  # i = 1: 3 vs 1, 3, 3
        [1.0, 0.0], [0.5, 0.5], [0.5, 0.5],  # i = 2: 3 vs 1, 3, 3
    ]  # fmt: skip


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    # row 0: −(½ log ½ + ½ log ½) = log 2; row 1: softmax [¾, ¼], −log ¾ = log(4/3)
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected)


def test_labeled_pairs_of_two_images_by_hand():
    # scores s0 = [ln 3, 0], s1 = [0, 0], y = [2, 1]: pairs (0,0), (1,1) give log 2;
    # (0,1): logits [ln 3, 0], target [1, 0] → log(4/3); (1,0): [−ln 3, 0], [0, 1] → log(4/3)
    scores = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]])
    loss = soft_cross_entropy(pair_logits(scores), pair_targets(torch.tensor([2.0, 1.0])))
    assert loss.item() == pytest.approx((2 * math.log(2) + 2 * math.log(4 / 3)) / 4)


def test_confidence_mask():
    # softmax: [0.99, 0.01], [0.01, 0.99], [0.9, 0.1], [0.5, 0.5]; τ = 0.95
    logits = torch.tensor(
        [[math.log(99), 0.0], [0.0, math.log(99)], [math.log(9), 0.0], [0.0, 0.0]],
        requires_grad=True,
    )
    labels, mask = confident_pseudo_labels(logits, 0.95)
    assert labels.tolist() == [0, 1, 0, 0]
    assert mask.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert not mask.requires_grad and not labels.requires_grad
    assert confident_pseudo_labels(logits, 0.85)[1].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_masked_cross_entropy_by_hand():
    logits = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [0.0, math.log(3)]])
    labels = torch.tensor([0, 1, 0])
    mask = torch.tensor([1.0, 0.0, 1.0])
    # row 0: −log ¾ = log(4/3); row 1 masked; row 2: softmax [¼, ¾], −log ¼ = log 4; over 3 rows
    expected = (math.log(4 / 3) + math.log(4)) / 3
    assert masked_cross_entropy(logits, labels, mask).item() == pytest.approx(expected)


def test_empty_pair_sets_give_zero_losses_with_a_graph():
    scores = torch.zeros(0, 2, requires_grad=True)
    assert soft_cross_entropy(pair_logits(scores), pair_targets(torch.zeros(0))).item() == 0
    labels, mask = confident_pseudo_labels(pair_logits(scores), 0.95)
    loss = masked_cross_entropy(pair_logits(scores), labels, mask)
    assert loss.item() == 0 and loss.requires_grad


def test_intensity_operations_by_hand():
    half = torch.full((1, 1, 2, 2), 0.5)
    # brightness: factor 0.05 + 0.9·u; u = 0.5 → 0.5 · 0.5 = 0.25
    assert _brightness(half, torch.tensor([0.5])).flatten().tolist() == [0.25] * 4
    # contrast: mean 0.5 + 0.05 · (x − 0.5) at u = 0: 0 → 0.475, 1 → 0.525
    ramp = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 2, 2)
    assert _contrast(ramp, torch.tensor([0.0])).flatten().tolist() == pytest.approx(
        [0.475, 0.525] * 2
    )
    # posterize at u = 0 keeps 4 bits: 200 → 192 (of 255); u = 0.99 keeps 7: 201 → 200
    x = torch.tensor([200 / 255, 201 / 255]).view(2, 1, 1, 1)
    out = _posterize(x, torch.tensor([0.0, 0.99])) * 255
    assert out.flatten().tolist() == pytest.approx([192.0, 200.0])


def test_cutout_fills_a_box_with_gray():
    torch.manual_seed(0)
    out = cutout(torch.ones(64, 1, 16, 16))
    filled = (out == 0.5).flatten(1).sum(dim=1)
    assert set(out.unique().tolist()) <= {0.5, 1.0}
    assert filled.max() <= 8 * 8  # at most half of each side
    assert (filled > 0).float().mean() > 0.5


def test_strong_view_stays_in_range_differs_from_weak_and_is_seeded():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(16, 1, 16, 16, generator=generator)

    def weak(x: torch.Tensor) -> torch.Tensor:  # a weak view that leaves [0, 1], as the run's may
        return x * 1.2 - 0.1

    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = strong_view(images, weak)
    torch.manual_seed(0)
    second = strong_view(images, weak)
    assert first.dtype == torch.float32 and first.shape == images.shape
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, second)
    differs = (first != weak(images).clamp(0, 1)).flatten(1).any(dim=1)
    assert differs.sum() >= 14  # three identities and an empty cutout are rare


def tiny_method(cls, **params):
    torch.manual_seed(0)
    return cls(Regressor(build_backbone("tiny")), cls.Params(**params))


def context(targets: torch.Tensor) -> FitContext:
    return FitContext(
        augment=lambda x: x,
        predict_pool=lambda predictor: torch.linspace(0, 1, len(targets)),
        pool_size=len(targets),
        n_labeled=int(torch.isfinite(targets).sum()),
        pool_targets=targets,
        epochs=1,
        steps_per_epoch=1,
    )


def batch_of(targets: torch.Tensor) -> Batch:
    images = torch.rand(len(targets), 1, 16, 16, generator=torch.Generator().manual_seed(2))
    return Batch(images, targets, torch.isfinite(targets), torch.arange(len(targets)))


TARGETS = torch.tensor([0.5, 0.9, 0.7, 0.6, NAN, NAN, NAN, NAN])


def test_rankup_loss_and_its_head():
    method = tiny_method(RankUp, threshold=0.5)  # every off-diagonal unlabeled pair confident
    losses = method.training_step(batch_of(TARGETS), context(TARGETS))
    # MSE + λ_arc (CE_labeled + w_u CE_unlabeled), λ_arc = 0.2, w_u = 1
    expected = losses["mse"] + 0.2 * (losses["arc_labeled"] + losses["arc_unlabeled"])
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # 16 unlabeled pairs, the 4 with i = j have probability 0.5 ≥ 0.5 too
    assert losses["arc_confident"].item() == 1.0
    losses["loss"].backward()
    assert method.arc.weight.grad.abs().sum() > 0 and method.arc.bias.grad is not None
    assert {"arc.weight", "arc.bias"} <= set(method.state_dict())  # checkpointed
    assert {id(p) for p in method.arc.parameters()} <= {
        id(p) for p in method.trainable_parameters()
    }


def test_rankup_rda_loss():
    method = tiny_method(RankUpRDA, rampup=0.0, unsup_weight=2.0)
    ctx = context(TARGETS)
    method.on_stage_start(ctx)
    losses = method.training_step(batch_of(TARGETS), ctx)
    expected = (
        losses["mse"]
        + 2.0 * losses["rda"]
        + 0.2 * (losses["arc_labeled"] + losses["arc_unlabeled"])
    )
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["rda"].item() > 0


def test_rankup_methods_on_the_smoke_preset(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "load_images", lambda cfg: make_imageset(size=32))
    overrides = {"split.val": "8", "split.test": "8", "stage1.epochs": "1"}
    for name in ("rankup", "rankup_rda"):  # one stage-1 run, reused
        cfg = resolve(name, "tiny", "smoke", overrides, device="cpu")
        record = execute(cfg, tmp_path, show_progress=False).record
        assert record.status == "ok" and record.method == name
        assert np.isfinite(record.metrics["test"]["rmse"])
