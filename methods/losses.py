"""Losses shared by several methods: MSE, (adaptive) triplet, consistency, ramp-up."""

from __future__ import annotations

import math

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (target − pred)² over ``mask`` (equation 1); 0 (with a graph) if the mask is empty."""
    diff = torch.where(mask, target - pred, torch.zeros_like(pred))
    return diff.pow(2).sum() / mask.sum().clamp(min=1)


def sample_triplets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every anchor i of a batch, two distinct other samples at random, ordered so that
    ``near[i]`` has the target closer to ``targets[i]`` and ``far[i]`` the other.

    Needs a batch of at least 3. Uses the global torch RNG (seeded by the Trainer).
    """
    b = targets.shape[0]
    assert b >= 3, "a triplet needs three samples"
    anchor = torch.arange(b, device=targets.device)
    first = torch.randint(1, b, (b,), device=targets.device)
    second = torch.randint(1, b - 1, (b,), device=targets.device)
    second = second + (second >= first).long()  # distinct offsets in [1, b-1]
    j, k = (anchor + first) % b, (anchor + second) % b
    j_is_near = (targets - targets[j]).abs() <= (targets - targets[k]).abs()
    return torch.where(j_is_near, j, k), torch.where(j_is_near, k, j)


def triplet_loss(
    embedding: torch.Tensor,
    targets: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    margin: float,
    adaptive: bool,
) -> torch.Tensor:
    """Mean over anchors of [‖Fa−Fn‖² − ‖Fa−Ff‖² + α·m]₊ (equation 3).

    Adaptive: α = (ya−yf)² − (ya−yn)² (equation 4); plain triplet loss: α = 1.
    """
    d_near = (embedding - embedding[near]).pow(2).sum(dim=1)
    d_far = (embedding - embedding[far]).pow(2).sum(dim=1)
    if adaptive:
        alpha = (targets - targets[far]).pow(2) - (targets - targets[near]).pow(2)
    else:
        alpha = torch.ones_like(targets)
    return torch.relu(d_near - d_far + alpha * margin).mean()


def batch_triplet_loss(
    embedding: torch.Tensor, targets: torch.Tensor, margin: float, adaptive: bool
) -> torch.Tensor:
    """Triplet loss with triplets drawn inside the batch, every sample an anchor.

    A batch of fewer than three samples has no triplet: the loss is 0 (with a graph).
    """
    if len(targets) < 3:
        return embedding.sum() * 0.0
    near, far = sample_triplets(targets)
    return triplet_loss(embedding.float(), targets, near, far, margin, adaptive)


def raw_triplet_scale(
    weight: float, margin: float, target_sd: float, adaptive: bool
) -> tuple[float, float]:
    """The raw-target-scale (λ, m) equivalent to a triplet term trained on z-scored targets.

    With z = (y − μ)/σ (σ the SD of the labeled training targets), the loss is
    MSE_z + λ·T_z with T_z = mean[‖Fa−Fn‖² − ‖Fa−Ff‖² + α_z·m]₊ (:func:`triplet_loss`).
    Squared errors scale with σ²: MSE_z = MSE_raw/σ². The
    adaptive α is a difference of squared target gaps, α_z = α_raw/σ², so
    α_z·m = α_raw·(m/σ²): T_z is the raw-scale term with margin m_raw = m/σ² (the
    embedding distances are unchanged). Hence

        MSE_z + λ·T_z = (MSE_raw + λσ²·T_raw(m/σ²)) / σ²,

    the raw-scale loss with λ_raw = λσ² and m_raw = m/σ², up to the overall
    factor 1/σ² (a learning-rate scale, which Adam largely ignores). The plain
    triplet loss has α = 1, no target units: its margin is unchanged, m_raw = m,
    and still λ_raw = λσ². Returns (λ_raw, m_raw).
    """
    variance = target_sd**2
    return weight * variance, margin / variance if adaptive else margin


def consistency(
    f1: torch.Tensor, f2: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of ‖F1−F2‖² + (y1−y2)² between two views (equation 6)."""
    return ((f1 - f2).pow(2).sum(dim=1) + (y1 - y2).pow(2)).mean()


def gaussian_rampup(t: float) -> float:
    """exp(−5(1−t)²) for t in [0, 1], 1 after (Laine & Aila 2017); t is the ramp's progress."""
    t = min(max(t, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
