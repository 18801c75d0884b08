"""Each loss against numbers computed by hand."""

import math

import pytest
import torch

from bmdbench.methods.losses import (
    batch_triplet_loss,
    consistency,
    gaussian_rampup,
    masked_mse,
    raw_triplet_scale,
    sample_triplets,
    triplet_loss,
)


def test_masked_mse():
    pred = torch.tensor([1.0, 2.0, 5.0])
    target = torch.tensor([0.0, 4.0, float("nan")])
    mask = torch.tensor([True, True, False])
    # ((0-1)² + (4-2)²) / 2 = (1 + 4) / 2
    assert masked_mse(pred, target, mask).item() == pytest.approx(2.5)
    assert masked_mse(pred, target, torch.zeros(3, dtype=torch.bool)).item() == 0.0


# Three samples: embeddings F and targets y. For anchor 0 with near = 1, far = 2:
# ‖F0−F1‖² = 4, ‖F0−F2‖² = 1, α = (0 − 0.5)² − (0 − 0.1)² = 0.25 − 0.01 = 0.24.
F = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
Y = torch.tensor([0.0, 0.1, 0.5])
NEAR = torch.tensor([1, 0, 1])
FAR = torch.tensor([2, 2, 0])


def test_adaptive_triplet_by_hand():
    # anchor 0: 4 − 1 + 0.24·0.5 = 3.12
    # anchor 1 (y=0.1; near 0, far 2): ‖F1−F0‖² = 4, ‖F1−F2‖² = 5,
    #   α = (0.1−0.5)² − (0.1−0)² = 0.16 − 0.01 = 0.15 → 4 − 5 + 0.075 = −0.925 → hinge 0
    # anchor 2 (y=0.5; near 1, far 0): ‖F2−F1‖² = 5, ‖F2−F0‖² = 1,
    #   α = (0.5−0)² − (0.5−0.1)² = 0.25 − 0.16 = 0.09 → 5 − 1 + 0.045 = 4.045
    # mean = (3.12 + 0 + 4.045) / 3
    loss = triplet_loss(F, Y, NEAR, FAR, margin=0.5, adaptive=True)
    assert loss.item() == pytest.approx((3.12 + 0.0 + 4.045) / 3, abs=1e-6)


def test_plain_triplet_by_hand():
    # α = 1: anchor 0: 4 − 1 + 0.5 = 3.5; anchor 1: 4 − 5 + 0.5 = −0.5 → 0; anchor 2: 5 − 1 + 0.5 = 4.5
    loss = triplet_loss(F, Y, NEAR, FAR, margin=0.5, adaptive=False)
    assert loss.item() == pytest.approx((3.5 + 0.0 + 4.5) / 3, abs=1e-6)


def test_hinge_is_zero_when_satisfied():
    f = torch.tensor([[0.0], [0.1], [5.0]])
    # anchor 0: 0.01 − 25 + 0.12 < 0; anchor 1: 0.01 − 24.01 + 0.075 < 0;
    # anchor 2: 24.01 − 25 + 0.045 = −0.945 < 0 → every hinge is 0
    assert triplet_loss(f, Y, NEAR, FAR, margin=0.5, adaptive=True).item() == 0.0


def test_sampled_triplets_are_valid():
    torch.manual_seed(0)
    y = torch.rand(16)
    for _ in range(20):
        near, far = sample_triplets(y)
        anchor = torch.arange(16)
        assert (near != anchor).all() and (far != anchor).all() and (near != far).all()
        assert ((y - y[near]).abs() <= (y - y[far]).abs()).all()


def test_batch_triplet_needs_three():
    f = torch.randn(2, 4, requires_grad=True)
    loss = batch_triplet_loss(f, torch.tensor([0.1, 0.2]), 0.5, True)
    assert loss.item() == 0.0
    loss.backward()


def test_consistency_equation_6():
    f1, f2 = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    y1, y2 = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0])
    # sample 0: 1 + 4 + 0.25 = 5.25; sample 1: 9 + 0 = 9; mean 7.125
    assert consistency(f1, f2, y1, y2).item() == pytest.approx(7.125)


def test_gaussian_rampup():
    assert gaussian_rampup(0.0) == pytest.approx(math.exp(-5))  # 0.006738
    assert gaussian_rampup(0.5) == pytest.approx(math.exp(-1.25))  # 0.286505
    assert gaussian_rampup(1.0) == 1.0 and gaussian_rampup(3.0) == 1.0


def test_raw_scale_gives_the_same_loss_on_raw_targets():
    """MSE_z + λ·T_z(m) equals (MSE_raw + λ_raw·T_raw(m_raw)) / σ² (docstring's derivation)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(8, generator=gen, dtype=torch.float64) * 0.6 + 0.6
    pred = y + 0.05 * torch.randn(8, generator=gen, dtype=torch.float64)
    embedding = torch.randn(8, 4, generator=gen, dtype=torch.float64) * 0.01
    near, far = torch.arange(1, 9) % 8, torch.arange(2, 10) % 8
    mu, sigma = float(y.mean()), float(y.std(unbiased=False))
    z, pz = (y - mu) / sigma, (pred - mu) / sigma
    mask = torch.ones(8, dtype=torch.bool)
    weight, margin = 0.5, 0.3
    for adaptive in (True, False):
        lam_raw, m_raw = raw_triplet_scale(weight, margin, sigma, adaptive)
        assert lam_raw == pytest.approx(weight * sigma**2)
        assert m_raw == pytest.approx(margin / sigma**2 if adaptive else margin)
        loss_z = masked_mse(pz, z, mask) + weight * triplet_loss(
            embedding, z, near, far, margin, adaptive
        )
        loss_raw = masked_mse(pred, y, mask) + lam_raw * triplet_loss(
            embedding, y, near, far, m_raw, adaptive
        )
        assert float(loss_raw) / sigma**2 == pytest.approx(float(loss_z), rel=1e-10)
        assert float(triplet_loss(embedding, z, near, far, margin, adaptive)) > 0  # active
