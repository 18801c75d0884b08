"""CLSS (bmdbench.methods.clss): ranks, the blackbox rank gradient, the seriation, the rank
loss and the ordinal entropy against numbers computed by hand; the total loss, what its
unlabeled terms train, and a smoke-preset run."""

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
from bmdbench.methods.clss import (
    CLSS,
    CLSSParams,
    TrueRanker,
    cosine_similarity,
    normalised_ranks,
    ordinal_entropy,
    rank_loss,
    seriation,
)
from bmdbench.runner import execute
from bmdbench.spec import resolve
from bmdbench.testing import make_imageset

NAN = float("nan")


def test_normalised_ranks_by_hand():
    # largest first, (k + 1)/N: 0.9 → 1/3, 0.3 → 2/3, 0.1 → 1; a tie by position
    assert normalised_ranks(torch.tensor([[0.3, 0.9, 0.1]]))[0].tolist() == pytest.approx(
        [2 / 3, 1 / 3, 1.0]
    )
    assert normalised_ranks(torch.tensor([[0.5, 0.5, 0.1]]))[0].tolist() == pytest.approx(
        [1 / 3, 2 / 3, 1.0]
    )


def test_blackbox_rank_gradient_by_hand():
    x = torch.tensor([[0.3, 0.9, 0.1]], requires_grad=True)
    TrueRanker.apply(x, 2.0).backward(torch.tensor([[0.4, 0.0, 0.0]]))
    # x + λg = [1.1, 0.9, 0.1]: ranks [1/3, 2/3, 1] against [2/3, 1/3, 1];
    # −(ranks − perturbed)/λ = −([1/3, −1/3, 0])/2
    assert x.grad[0].tolist() == pytest.approx([-1 / 6, 1 / 6, 0.0])
    x.grad = None
    TrueRanker.apply(x, 2.0).backward(torch.tensor([[0.1, 0.0, 0.0]]))  # 0.5 < 0.9: no swap
    assert x.grad.tolist() == [[0.0, 0.0, 0.0]]


def test_seriation_of_three_images_by_hand():
    # S = [[1, a, b], [a, 1, a], [b, a, 1]], a = 0.8 > b = 0.1; L = D − S restricted to 1⊥ has
    # eigenvectors [1, 0, −1] (eigenvalue a + 2b = 1.0) and [1, −2, 1] (3a = 2.4): the first
    # orders the images 2, 1, 0 (image 1 in the middle, as it is similar to both)
    a, b = 0.8, 0.1
    s = torch.tensor([[1.0, a, b], [a, 1.0, a], [b, a, 1.0]])
    assert seriation(s).tolist() in ([2, 1, 0], [0, 1, 2])
    assert seriation(torch.ones(1, 1)).tolist() == [0]


def test_seriation_recovers_points_on_a_line():
    # similarities exp(−|x_i − x_j|) of points x: the order of x, or its reverse
    x = torch.tensor([0.0, 3.0, 1.0, 2.0, 5.0, 4.0])
    positions = seriation(torch.exp(-(x[:, None] - x[None, :]).abs()))
    assert positions.tolist() in ([0, 3, 1, 2, 5, 4], [5, 2, 4, 3, 0, 1])


def test_rank_loss_by_hand():
    # positions [0, 1, 2]: the pseudo-ranks of −|pos_i − pos_j| per anchor are
    # [1/3, 2/3, 1], [2/3, 1/3, 1] (a tie by position), [1, 2/3, 1/3]
    s = torch.tensor([[1.0, 0.2, 0.5], [0.2, 1.0, 0.4], [0.5, 0.4, 1.0]])
    # rows' ranks: [1/3, 1, 2/3], [1, 1/3, 2/3], [2/3, 1, 1/3]; each row is off by ±1/3 twice:
    # mean (0 + 1/9 + 1/9)/3 = 2/27 per anchor, summed over 3 anchors: 2/9
    assert rank_loss(s, torch.tensor([0, 1, 2]), 2.0).item() == pytest.approx(2 / 9)
    # a similarity in the seriation's order has no loss
    assert rank_loss(-s.new_tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0]]), torch.arange(3), 2.0) == 0


def test_cosine_similarity_by_hand():
    s = cosine_similarity(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
    r = 1 / math.sqrt(2)
    assert s.flatten().tolist() == pytest.approx([1, r, 0, r, 1, r, 0, r, 1])


def test_ordinal_entropy_by_hand():
    # targets 0, 1, 3 (one image each) and a second image of target 1
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 1.0]])
    targets = torch.tensor([0.0, 1.0, 3.0, 1.0])
    # centres, normalised: [1, 0], mean([0, 2], [1, 1]) = [1, 3]/√10, [1, 0]
    # tightness over the images that are not their centre (the two of target 1):
    # |[0, 1] − [1, 3]/√10|² = 2 − 6/√10; |[1, 1]/√2 − [1, 3]/√10|² = 2 − 8/√20; mean
    tightness = (4 - 6 / math.sqrt(10) - 8 / math.sqrt(20)) / 2
    # diversity: pairs (0,1), (0,2), (1,2) at distances √(2 − 2/√10), 10⁻⁶ (equal centres,
    # clamped), √(2 − 2/√10); target distances 1, 3, 2 → (d − 1)/3 = 0, 2/3, 1/3
    far = math.sqrt(2 - 2 / math.sqrt(10))
    diversity = (2 / 3 * 1e-6 + far / 3) / 3
    assert ordinal_entropy(features, targets).item() == pytest.approx(tightness - diversity)
    # continuous targets: every image its own centre, no tightness; diversity alone
    one_each = ordinal_entropy(features[:3], targets[:3])
    assert one_each.item() == pytest.approx(-(2 / 3 * 1e-6 + math.sqrt(2) / 3) / 3)
    # a single target value: no pair, no tightness
    assert ordinal_entropy(features[:1], targets[:1]).item() == 0


def test_clss_loss_and_what_its_unlabeled_terms_train():
    torch.manual_seed(0)
    method = CLSS(Regressor(build_backbone("tiny")), CLSSParams(rank_lambda=1e3))
    targets = torch.tensor([0.5, 0.9, 0.7, NAN, NAN, NAN, NAN, NAN])
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    batch = Batch(images, targets, torch.isfinite(targets), torch.arange(8))
    ctx = FitContext(
        augment=lambda x: x,
        predict_pool=lambda predictor: torch.zeros(8),
        pool_size=8,
        n_labeled=3,
        pool_targets=targets,
        epochs=1,
        steps_per_epoch=1,
    )
    losses = method.training_step(batch, ctx)
    expected = (
        losses["mse"]
        + 1.0 * losses["ordinal_entropy"]
        + 0.05 * losses["feature_rank"]
        + 0.01 * losses["prediction_rank"]
    )
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the embeddings' rank loss trains the backbone, not the head (it sees the embedding only);
    # the predictions' reaches the head
    method.zero_grad(set_to_none=True)
    losses["feature_rank"].backward(retain_graph=True)
    assert any(p.grad is not None and p.grad.any() for p in method.regressor.backbone.parameters())
    assert method.regressor.head.weight.grad is None
    losses["prediction_rank"].backward()
    assert method.regressor.head.weight.grad.any()


def test_clss_on_the_smoke_preset(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "load_images", lambda cfg: make_imageset(size=32))
    overrides = {"split.val": "8", "split.test": "8", "stage1.epochs": "1"}
    outcome = execute(
        resolve("clss", "tiny", "smoke", overrides, device="cpu"), tmp_path, show_progress=False
    )
    assert outcome.record.status == "ok" and outcome.record.method == "clss"
    assert outcome.record.parent_run.startswith("baseline-tiny-smoke-s0-")
    (epoch,) = [json.loads(line) for line in (outcome.run_dir / "epochs.jsonl").open()]
    for key in ("mse", "ordinal_entropy", "feature_rank", "prediction_rank"):
        assert math.isfinite(epoch[f"loss_{key}"])
    assert np.isfinite(outcome.record.metrics["test"]["rmse"])
