"""HPL (bmdbench.methods.hpl): the uncertainty learner, the weighted unlabeled term and the
bi-level meta objective (value and gradient) against numbers computed by hand, which
parameters each term trains, the meta interval, and a smoke-preset run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bmdbench.backbones import build_backbone
from bmdbench.data import sources
from bmdbench.data.module import Batch
from bmdbench.methods import FitContext, Regressor
from bmdbench.methods.hpl import (
    HPL,
    HPLParams,
    UncertaintyLearner,
    meta_objective,
    weighted_consistency,
)
from bmdbench.runner import execute
from bmdbench.spec import resolve
from bmdbench.speed import measure_limit, resident_batch
from bmdbench.testing import make_imageset
from bmdbench.trainer import Trainer

NAN = float("nan")


def set_learner(learner: UncertaintyLearner, w1, b1, w2, b2) -> None:
    first, last = learner.net[0], learner.net[2]
    with torch.no_grad():
        first.weight.copy_(torch.tensor(w1))
        first.bias.copy_(torch.tensor(b1))
        last.weight.copy_(torch.tensor(w2))
        last.bias.copy_(torch.tensor(b2))


def test_uncertainty_learner_by_hand():
    learner = UncertaintyLearner(hidden=2)
    # hidden = relu([residual, −prediction]); s = 1·h₁ + 2·h₂ + 0.5
    set_learner(learner, [[1.0, 0.0], [0.0, -1.0]], [0.0, 0.0], [[1.0, 2.0]], [0.5])
    residual = torch.tensor([3.0, -1.0], requires_grad=True)
    prediction = torch.tensor([-2.0, 1.0])
    s = learner(residual, prediction)
    # image 0: relu([3, 2]) → 3 + 4 + 0.5 = 7.5; image 1: relu([−1, −1]) = 0 → 0.5
    assert s.tolist() == pytest.approx([7.5, 0.5])
    s.sum().backward()
    assert residual.grad is None  # its inputs carry no gradient


def test_uncertainty_learner_initialisation():
    learner = UncertaintyLearner(hidden=128)
    assert learner.net[0].weight.shape == (128, 2) and learner.net[2].weight.shape == (1, 128)
    assert not learner.net[0].bias.any() and not learner.net[2].bias.any()
    assert learner.net[0].weight.std() > 0  # xavier-normal, not zeros


def test_weighted_consistency_by_hand():
    # ½·e⁰·(1 − 0)² = 0.5; ½·e^(−ln 2)·(3 − 1)² = ½·½·4 = 1; mean 0.75
    strong, pseudo = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])
    log_var = torch.tensor([0.0, math.log(2.0)])
    assert weighted_consistency(strong, pseudo, log_var).item() == pytest.approx(0.75)
    empty = torch.zeros(0, requires_grad=True)
    loss = weighted_consistency(empty, empty, empty)
    assert loss.item() == 0 and loss.requires_grad


def hand_problem() -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """D = 1: a labeled image f = 1, y = 2; an unlabeled one, weak f = 1, strong f = 2; a meta
    batch f = [1, 3], y = [1, 2]."""
    inner = {
        "labeled": torch.tensor([[1.0]]),
        "targets": torch.tensor([2.0]),
        "weak": torch.tensor([[1.0]]),
        "strong": torch.tensor([[2.0]]),
    }
    return inner, (torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 2.0]))


def test_meta_objective_and_its_gradient_by_hand():
    # u_φ outputs its last bias s everywhere (every weight 0), s = ln 2
    learner = UncertaintyLearner(hidden=2)
    set_learner(learner, [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0], [[0.0, 0.0]], [math.log(2.0)])
    params = HPLParams(unlabeled_weight=4.0, meta_lr=0.1, regularisation=0.1)
    weight = torch.tensor([[1.0]], requires_grad=True)
    bias = torch.tensor([0.0], requires_grad=True)
    inner, outer = hand_problem()
    meta = meta_objective(weight, bias, inner, outer, learner, params)
    # head w = 1, b = 0: labeled prediction 1 (error −1); pseudo-label 1, strong prediction 2
    # L_in = (1 − 2)² + 4 · ½e^(−s)(2 − 1)²; ∂L_in/∂w = 2(−1)(1) + 4e^(−s)(1)(2) = −2 + 8e^(−s) = 2,
    # ∂L_in/∂b = −2 + 4e^(−s) = 0 at s = ln 2; look-ahead w' = 1 − 0.1·2 = 0.8, b' = 0
    # meta batch: predictions 0.8, 2.4 → errors −0.2, 0.4 → MSE (0.04 + 0.16)/2 = 0.1
    # meta = 0.1 − λ₂ · s = 0.1 − 0.1 ln 2
    assert meta.item() == pytest.approx(0.1 - 0.1 * math.log(2.0), abs=1e-6)  # fp32
    meta.backward()
    # d meta/ds: dw'/ds = −0.1 · ∂(−2 + 8e^(−s))/∂s = 0.8e^(−s) = 0.4, db'/ds = 0.4e^(−s) = 0.2;
    # ∂MSE/∂w' = (2(−0.2)(1) + 2(0.4)(3))/2 = 1.0, ∂MSE/∂b' = (2(−0.2) + 2(0.4))/2 = 0.2;
    # 1.0 · 0.4 + 0.2 · 0.2 − λ₂ = 0.44 − 0.1 = 0.34
    assert learner.net[2].bias.grad.item() == pytest.approx(0.34, abs=1e-6)


def tiny_method(**params) -> HPL:
    torch.manual_seed(0)
    return HPL(Regressor(build_backbone("tiny")), HPLParams(**params))


# a pool of 6 labeled and 4 unlabeled images; a batch of 2 labeled and the 4 unlabeled ones
POOL = torch.tensor([0.1, 0.9, 0.7, 0.6, 0.3, 0.2, NAN, NAN, NAN, NAN])
IMAGES = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(2))


def pool_batch(index: torch.Tensor) -> Batch:
    return Batch(IMAGES[index], POOL[index], torch.isfinite(POOL[index]), index)


def context(step: int = 0) -> FitContext:
    return FitContext(
        augment=lambda x: x,
        predict_pool=lambda predictor: torch.zeros(len(POOL)),
        pool_size=len(POOL),
        n_labeled=6,
        pool_targets=POOL,
        epochs=1,
        steps_per_epoch=10,
        step=step,
        pool_batch=pool_batch,
    )


BATCH = pool_batch(torch.tensor([0, 4, 6, 7, 8, 9]))


def gradients(method: HPL, loss: torch.Tensor) -> dict[str, bool]:
    method.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {
        name: p.grad is not None and bool(p.grad.any()) for name, p in method.named_parameters()
    }


def test_each_term_trains_its_own_parameters():
    method = tiny_method()
    losses = method.training_step(BATCH, context(step=0))
    assert set(losses) == {"loss", "mse", "unlabeled", "meta"}
    expected = losses["mse"] + 10.0 * losses["unlabeled"] + losses["meta"]
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the regression terms train the regressor, never the uncertainty learner
    for term in ("mse", "unlabeled"):
        trained = gradients(method, losses[term])
        assert any(v for k, v in trained.items() if k.startswith("regressor.backbone."))
        assert not any(v for k, v in trained.items() if k.startswith("uncertainty."))
    # the meta objective trains the uncertainty learner only
    trained = gradients(method, losses["meta"])
    assert trained["uncertainty.net.2.bias"] and trained["uncertainty.net.0.weight"]
    assert not any(v for k, v in trained.items() if not k.startswith("uncertainty."))


def test_the_meta_update_comes_every_meta_interval_steps():
    method = tiny_method(meta_interval=5)
    assert method.training_step(BATCH, context(step=5))["meta"].requires_grad
    off = method.training_step(BATCH, context(step=7))
    assert off["meta"].item() == 0 and not off["meta"].requires_grad
    trained = gradients(method, off["loss"])
    assert not any(v for k, v in trained.items() if k.startswith("uncertainty."))


def test_the_meta_batch_is_drawn_from_the_labeled_pool(monkeypatch):
    method = tiny_method(meta_labeled_images=4)
    drawn = []
    ctx = context()
    ctx.pool_batch = lambda index: drawn.append(index.clone()) or pool_batch(index)
    method.training_step(BATCH, ctx)
    (index,) = drawn
    assert len(index) == 4 and len(set(index.tolist())) == 4 and (index < 6).all()


def test_hpl_on_the_smoke_preset(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "load_images", lambda cfg: make_imageset(size=32))
    overrides = {"split.val": "8", "split.test": "8", "stage1.epochs": "1"}
    outcome = execute(
        resolve("hpl", "tiny", "smoke", overrides, device="cpu"), tmp_path, show_progress=False
    )
    assert outcome.record.status == "ok" and outcome.record.method == "hpl"
    assert outcome.record.parent_run.startswith("baseline-tiny-smoke-s0-")
    (epoch,) = [json.loads(line) for line in (outcome.run_dir / "epochs.jsonl").open()]
    for key in ("mse", "unlabeled", "meta"):
        assert math.isfinite(epoch[f"loss_{key}"])
    assert np.isfinite(outcome.record.metrics["test"]["rmse"])


def test_the_speed_probe_measures_hpl():
    # the probe's context holds its batch as the training pool: the meta batch is drawn there
    trainer = Trainer(torch.device("cpu"), show_progress=False)
    batch = resident_batch(trainer, 8, (16, 16), 4)
    assert measure_limit(trainer, tiny_method(), batch, 1, 0).images_per_s > 0
