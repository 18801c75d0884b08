"""UCVME: each loss against numbers computed by hand, the pseudo-labels' ensembling over both
networks and T dropout samples, the ensemble-mean prediction, the contract, a smoke run."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch import nn

from bmdbench.backbones import build_backbone
from bmdbench.data.module import Batch
from bmdbench.methods import FitContext, Regressor
from bmdbench.methods.ucvme import UCVME, UCVMEParams, heteroscedastic_loss, ucvme_losses
from bmdbench.runner import execute
from bmdbench.spec import resolve


def tiny() -> Regressor:
    return Regressor(build_backbone("tiny"))


def build(**params: Any) -> UCVME:
    torch.manual_seed(0)
    return UCVME(tiny(), UCVMEParams(**params), new_regressor=tiny)


def test_heteroscedastic_loss_by_hand():
    pred = torch.tensor([1.0, 2.0, 5.0])
    target = torch.tensor([0.0, 4.0, float("nan")])
    log_var = torch.tensor([0.0, math.log(2.0), 3.0])
    mask = torch.tensor([True, True, False])
    # image 0: ½(e⁰·(0−1)² + 0) = 0.5
    # image 1: ½(e^(−ln 2)·(4−2)² + ln 2) = ½(4/2 + 0.693147) = 1.346574
    # image 2 is masked out; mean over 2 images = (0.5 + 1.346574) / 2 = 0.923287
    assert heteroscedastic_loss(pred, target, log_var, mask).item() == pytest.approx(
        (0.5 + 0.5 * (2.0 + math.log(2.0))) / 2
    )
    empty = torch.zeros(3, dtype=torch.bool)
    assert heteroscedastic_loss(pred, target, log_var, empty).item() == 0.0


def test_every_ucvme_loss_by_hand():
    # two images: image 0 labeled (y = 1), image 1 unlabeled with pseudo-label ỹ = 2, s̃ = 0;
    # rows: network 1, network 2
    mean = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    log_var = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    terms = ucvme_losses(
        mean,
        log_var,
        pseudo_mean=torch.tensor([float("nan"), 2.0]),
        pseudo_log_var=torch.tensor([float("nan"), 0.0]),
        targets=torch.tensor([1.0, float("nan")]),
        labeled=torch.tensor([True, False]),
    )
    # labeled, s̄ = (0 + 2)/2 = 1: network 1 ½(e⁻¹·(1−0)² + 1), network 2 ½(e⁻¹·(1−2)² + 1)
    # = 2 · ½(0.367879 + 1) = 1.367879
    assert terms["labeled_regression"].item() == pytest.approx(math.exp(-1) + 1)
    # uncertainty consistency: (s_1 − s_2)² = (0 − 2)² = 4
    assert terms["labeled_uncertainty"].item() == pytest.approx(4.0)
    # unlabeled, s̃ = 0: ½(e⁰·(2−1)² + 0) + ½(e⁰·(2−3)² + 0) = 0.5 + 0.5
    assert terms["unlabeled_regression"].item() == pytest.approx(1.0)
    # (s_1 − s̃)² + (s_2 − s̃)² = (1 − 0)² + (0 − 0)² = 1
    assert terms["unlabeled_uncertainty"].item() == pytest.approx(1.0)


class CountingDropout(nn.Module):
    """Multiplies its n-th input by n (1, 2, 3, ...), so that each call can be traced."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.calls


def set_linear(layer: nn.Linear, weight: float, bias: float) -> None:
    with torch.no_grad():
        layer.weight.fill_(weight)
        layer.bias.fill_(bias)


def test_pseudo_labels_average_t_dropout_samples_of_both_networks():
    method = build(samples=2)
    method.dropout = CountingDropout()
    d = method.regressor.head.in_features
    # every head sums the embedding over its D entries, divided by D; variance heads add 0.5
    for network, log_variance in zip(method.networks, method.log_variance, strict=True):
        set_linear(network.head, 1 / d, 0.0)
        set_linear(log_variance, 1 / d, 0.5)
    # image 0's embedding is all 1 in network 1, all 2 in network 2; image 1's all 0
    e1 = torch.stack([torch.ones(d), torch.zeros(d)])
    e2 = torch.stack([2 * torch.ones(d), torch.zeros(d)])
    pseudo_mean, pseudo_log_var = method.pseudo_labels((e1, e2))
    # calls: network 1 sample 1 (mean ×1, log-var ×2), sample 2 (×3, ×4); network 2 (×5, ×6),
    # (×7, ×8): 2 networks × T = 2 samples × 2 heads
    assert method.dropout.calls == 8
    # image 0: ỹ = (1·1 + 1·3 + 2·5 + 2·7) / 4 = 28 / 4 = 7
    #          s̃ = ((1·2 + 0.5) + (1·4 + 0.5) + (2·6 + 0.5) + (2·8 + 0.5)) / 4 = 36 / 4 = 9
    # image 1: ỹ = 0, s̃ = 0.5
    assert pseudo_mean.tolist() == pytest.approx([7.0, 0.0])
    assert pseudo_log_var.tolist() == pytest.approx([9.0, 0.5])


def test_pseudo_labels_without_dropout_are_the_two_networks_mean():
    method = build(dropout=0.0)
    e1, e2 = torch.randn(3, 16), torch.randn(3, 16)
    pseudo_mean, pseudo_log_var = method.pseudo_labels((e1, e2))
    expected_mean = (method.regressor.head(e1) + method.second.head(e2)).squeeze(1) / 2
    expected_log_var = (method.log_variance[0](e1) + method.log_variance[1](e2)).squeeze(1) / 2
    assert torch.allclose(pseudo_mean, expected_mean)
    assert torch.allclose(pseudo_log_var, expected_log_var)


def test_second_network_shares_the_backbone_weights_and_has_fresh_heads():
    method = build()  # second_heads = "independent", the authors' initialisation
    first, second = method.regressor, method.second
    for name, value in first.backbone.state_dict().items():
        assert torch.equal(value, second.backbone.state_dict()[name]), name
    assert not torch.equal(first.head.weight, second.head.weight)
    # the fresh mean head is nn.Linear's default: weights within ±1/√D
    bound = 1 / math.sqrt(second.head.in_features)
    assert second.head.weight.abs().max() <= bound and second.head.bias.abs().max() <= bound
    assert not torch.equal(method.log_variance[0].weight, method.log_variance[1].weight)
    assert second.backbone.parameters().__next__() is not first.backbone.parameters().__next__()


def test_second_heads_copy_copies_the_whole_stage1_regressor():
    method = build(second_heads="copy")
    for name, value in method.regressor.state_dict().items():
        assert torch.equal(value, method.second.state_dict()[name]), name
    first, second = method.log_variance
    assert not torch.equal(first.weight, second.weight)
    assert method.second.head.weight is not method.regressor.head.weight  # not shared


def test_predict_is_the_ensemble_mean_without_dropout():
    method = build(dropout=0.5)
    with torch.no_grad():
        method.second.head.bias.add_(1.0)  # the two networks now differ
    method.eval()
    x = torch.rand(4, 1, 16, 16)
    mean_1, mean_2 = method.regressor(x)[1], method.second(x)[1]
    assert not torch.allclose(mean_1, mean_2)
    assert torch.equal(method.predict(x), (mean_1 + mean_2) / 2)
    assert torch.equal(method.predict(x), method.predict(x))  # no dropout in eval mode


def batch_and_context() -> tuple[Batch, FitContext]:
    torch.manual_seed(1)
    labeled = torch.tensor([True, True, True, False, False, False])
    targets = torch.where(labeled, torch.rand(6), torch.nan)
    batch = Batch(torch.rand(6, 1, 16, 16), targets, labeled, torch.arange(6))
    ctx = FitContext(
        augment=lambda x: x,
        predict_pool=lambda predictor: torch.zeros(6),
        pool_size=6,
        n_labeled=3,
        pool_targets=targets,
        epochs=1,
        steps_per_epoch=1,
    )
    return batch, ctx


def test_every_parameter_of_both_networks_and_variance_heads_gets_a_nonzero_gradient():
    method = build()
    batch, ctx = batch_and_context()
    method.on_stage_start(ctx)
    method.train()
    losses = method.training_step(batch, ctx)
    assert set(losses) == {
        "loss", "labeled_regression", "labeled_uncertainty",
        "unlabeled_regression", "unlabeled_uncertainty",
    }  # fmt: skip
    losses["loss"].backward()
    zero = [n for n, p in method.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not zero
    assert {n.split(".")[0] for n, _ in method.named_parameters()} == {
        "regressor", "second", "log_variance",
    }  # fmt: skip
    # the unlabeled images got their pseudo mean recorded, the labeled ones none
    assert torch.isfinite(method.pseudo_targets[3:]).all()
    assert torch.isnan(method.pseudo_targets[:3]).all()


def test_total_loss_weights_the_unlabeled_parts():
    method = build(unlabeled_weight=10.0)
    batch, ctx = batch_and_context()
    method.on_stage_start(ctx)
    torch.manual_seed(2)
    t = method.training_step(batch, ctx)
    expected = (
        t["labeled_regression"]
        + t["labeled_uncertainty"]
        + 10.0 * (t["unlabeled_regression"] + t["unlabeled_uncertainty"])
    )
    assert t["loss"].item() == pytest.approx(expected.item())


def test_ucvme_runs_end_to_end_on_the_smoke_preset(tmp_path):
    outcome = execute(
        resolve("ucvme", "tiny", "smoke", device="cpu"), tmp_path, show_progress=False
    )
    assert outcome.record.status == "ok" and outcome.record.method == "ucvme"
    assert outcome.record.parent_run.startswith("baseline-tiny-smoke-s0-")
    (epoch,) = [json.loads(line) for line in (outcome.run_dir / "epochs.jsonl").open()]
    for key in ("loss", "unlabeled_regression", "unlabeled_uncertainty"):
        assert math.isfinite(epoch[f"loss_{key}"])
    assert math.isfinite(outcome.record.metrics["test"]["rmse"])
