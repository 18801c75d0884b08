"""MixMatch for regression: mixup with one λ and one permutation for inputs and targets, the
guessed targets, each loss and the ramp-up against numbers computed by hand, the contract, a
smoke run."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from bmdbench.backbones import build_backbone
from bmdbench.data.module import Batch
from bmdbench.methods import FitContext, Regressor
from bmdbench.methods import mixmatch as module
from bmdbench.methods.mixmatch import (
    MixMatch,
    MixMatchParams,
    mixmatch_losses,
    mixup,
    running_statistics_kept,
    sample_mixup,
)
from bmdbench.runner import execute
from bmdbench.spec import resolve


def build(**params: Any) -> MixMatch:
    torch.manual_seed(0)
    return MixMatch(Regressor(build_backbone("tiny")), MixMatchParams(**params))


def context(step: int = 0, steps: int = 10) -> FitContext:
    return FitContext(
        augment=lambda x: x,
        predict_pool=lambda predictor: torch.zeros(6),
        pool_size=6,
        n_labeled=2,
        pool_targets=torch.tensor([0.5, 0.7, *[float("nan")] * 4]),
        epochs=1,
        steps_per_epoch=steps,
        step=step,
    )


def test_mixup_by_hand():
    targets = torch.tensor([0.0, 4.0, 8.0])
    inputs = targets[:, None, None, None].expand(3, 1, 2, 2)  # image i: every pixel = target i
    mixed_inputs, mixed_targets = mixup(inputs, targets, 0.75, torch.tensor([2, 0, 1]))
    # 0.75·0 + 0.25·8 = 2; 0.75·4 + 0.25·0 = 3; 0.75·8 + 0.25·4 = 7
    assert mixed_targets.tolist() == pytest.approx([2.0, 3.0, 7.0])
    # the same λ and permutation for the inputs: each mixed image is its mixed target
    assert torch.allclose(mixed_inputs, mixed_targets[:, None, None, None].expand(3, 1, 2, 2))


def test_sampled_lambda_is_the_larger_share_and_a_seed_reproduces_it():
    torch.manual_seed(0)
    draws = [sample_mixup(5, 0.5) for _ in range(200)]
    assert all(0.5 <= lam <= 1.0 for lam, _ in draws)
    assert len({round(lam, 6) for lam, _ in draws}) > 100  # random, not a constant
    assert all(sorted(p.tolist()) == list(range(5)) for _, p in draws)
    torch.manual_seed(0)
    lam, permutation = sample_mixup(5, 0.5)
    assert lam == draws[0][0] and torch.equal(permutation, draws[0][1])
    assert sample_mixup(5, 0.0)[0] == 1.0  # α = 0: no mixing


def test_losses_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0])
    mixed_targets = torch.tensor([0.0, 2.0, 5.0])
    terms = mixmatch_losses(pred, mixed_targets, n_labeled=1)
    assert terms["mse_labeled"].item() == pytest.approx(1.0)  # (0 − 1)²
    assert terms["mse_unlabeled"].item() == pytest.approx(2.0)  # ((2 − 2)² + (5 − 3)²) / 2


@pytest.mark.parametrize(("step", "weight"), [(0, 0.0), (2, 0.05), (4, 0.1), (9, 0.1)])
def test_unlabeled_weight_ramps_up_linearly(step, weight):
    # λ_u = 0.1 over the first 0.4 of 10 steps: step 2 is half-way, 0.1 · 0.2/0.4 = 0.05
    method = build(unlabeled_weight=0.1, rampup=0.4)
    assert method.unlabeled_weight(context(step)) == pytest.approx(weight)


def test_running_statistics_are_kept():
    regressor = Regressor(build_backbone("tiny")).train()
    before = [b.clone() for b in regressor.buffers()]
    with torch.no_grad(), running_statistics_kept(regressor):
        regressor(torch.rand(4, 1, 16, 16))
    assert all(torch.equal(a, b) for a, b in zip(before, regressor.buffers(), strict=True))
    regressor(torch.rand(4, 1, 16, 16))  # outside the block batch norm updates them
    assert not all(torch.equal(a, b) for a, b in zip(before, regressor.buffers(), strict=True))


def test_training_step_mixes_labeled_images_and_k_views_with_their_guesses(monkeypatch):
    method = build(augmentations=3)
    labeled = torch.tensor([True, True, False, False, False, False])
    targets = torch.tensor([0.5, 0.7, *[float("nan")] * 4])
    torch.manual_seed(1)
    batch = Batch(torch.rand(6, 1, 16, 16), targets, labeled, torch.arange(6))
    seen: dict[str, Any] = {}

    def spy(inputs, targets, lam, permutation):
        seen.update(inputs=inputs, targets=targets, lam=lam, permutation=permutation)
        seen["mixed"] = mixup(inputs, targets, lam, permutation)
        return seen["mixed"]

    monkeypatch.setattr(module, "mixup", spy)
    ctx = context()
    method.on_stage_start(ctx)
    method.train()
    losses = method.training_step(batch, ctx)  # augment is the identity: every view alike
    with torch.no_grad():
        guess = method.regressor(batch.images[2:])[1]  # train mode, as the guess pass
    x, y = seen["inputs"], seen["targets"]
    assert x.shape[0] == 2 + 3 * 4 and torch.equal(x[:2], batch.images[:2])
    for k in range(3):  # view k of the unlabeled images, with its guessed target
        assert torch.equal(x[2 + 4 * k : 6 + 4 * k], batch.images[2:])
        assert torch.allclose(y[2 + 4 * k : 6 + 4 * k], guess)
    assert torch.equal(y[:2], targets[:2])
    assert 0.5 <= seen["lam"] <= 1.0 and sorted(seen["permutation"].tolist()) == list(range(14))
    # the loss parts are those of the network's prediction of the mixed images
    mixed_inputs, mixed_targets = seen["mixed"]
    with torch.no_grad():
        expected = mixmatch_losses(method.regressor(mixed_inputs)[1], mixed_targets, 2)
    for key in ("mse_labeled", "mse_unlabeled"):
        assert losses[key].item() == pytest.approx(expected[key].item(), rel=1e-5)
    assert torch.allclose(method.guesses[2:], guess) and torch.isnan(method.guesses[:2]).all()


def test_mixmatch_runs_end_to_end_on_the_smoke_preset(tmp_path):
    outcome = execute(
        resolve("mixmatch", "tiny", "smoke", device="cpu"), tmp_path, show_progress=False
    )
    assert outcome.record.status == "ok" and outcome.record.method == "mixmatch"
    assert outcome.record.parent_run.startswith("baseline-tiny-smoke-s0-")
    (epoch,) = [json.loads(line) for line in (outcome.run_dir / "epochs.jsonl").open()]
    for key in ("loss", "mse_labeled", "mse_unlabeled"):
        assert math.isfinite(epoch[f"loss_{key}"])
    assert math.isfinite(outcome.record.metrics["test"]["rmse"])
