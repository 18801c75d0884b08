"""Each statistic of a table against numbers by hand or by brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from bmdbench.methods.losses import masked_mse, triplet_loss
from bmdbench.results import (
    MIN_SEEDS_TEST,
    Predictions,
    bootstrap_p,
    cell_stats,
    compare,
    hierarchical_bootstrap,
    holm,
    image_resamples,
    minimum_detectable_effect,
    raw_triplet_scale,
    seed_resamples,
    seeds_needed,
    sign_flip_p,
    z_sum,
)

# 2 seeds × 3 images. Seed 0 predicts the target exactly: R = 1 on any resample with
# two distinct images. Seed 1 predicts [1, 3, 2]: R = 0.5 on a permutation of the
# three images (6 of 27 draws); on two distinct images R = ±1: {0, 1} → +1, {0, 2} → +1,
# {1, 2} → −1 (6 draws each); one image repeated (3 draws): undefined (NaN).
TARGET = np.array([1.0, 2.0, 3.0])
PRED = np.array([[1.0, 2.0, 3.0], [1.0, 3.0, 2.0]])
R1 = (6 * 0.5 + 6 * 1 + 6 * 1 - 6 * 1) / 24  # seed 1 over the 24 defined draws: 0.375
# seed draws (0,0), (1,1), (0,1), (1,0), each 1/4: mean R = ¼·1 + ¼·r1 + ½·(1 + r1)/2
EXPECTED = 0.5 + R1 / 2  # 0.6875


def all_draws(n_seeds: int, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (seed draw, image draw) pair, once: (n_seeds**n_seeds · n_images**n_images) rows."""
    seeds = np.array(list(itertools.product(range(n_seeds), repeat=n_seeds)))
    images = np.array(list(itertools.product(range(n_images), repeat=n_images)))
    return np.repeat(seeds, len(images), axis=0), np.tile(images, (len(seeds), 1))


def brute_force(seed_draw: np.ndarray, image_draw: np.ndarray, pred: np.ndarray) -> float:
    t = TARGET[image_draw]
    if np.ptp(t) == 0:
        return float("nan")
    return float(np.mean([np.corrcoef(t, pred[s][image_draw])[0, 1] for s in seed_draw]))


def test_hierarchical_bootstrap_enumerated_exactly():
    seed_idx, image_idx = all_draws(2, 3)
    dist = hierarchical_bootstrap(TARGET, PRED, seed_idx, image_idx)
    assert dist.shape == (4 * 27,)
    expected = [brute_force(s, i, PRED) for s, i in zip(seed_idx, image_idx, strict=True)]
    np.testing.assert_allclose(dist, expected, atol=1e-12, equal_nan=True)
    assert np.isnan(dist).mean() == pytest.approx(3 / 27)
    assert np.nanmean(dist) == pytest.approx(EXPECTED)
    assert EXPECTED == 0.6875


def test_random_draws_follow_the_enumerated_distribution():
    exact = hierarchical_bootstrap(TARGET, PRED, *all_draws(2, 3))
    b = 40_000
    drawn = hierarchical_bootstrap(
        TARGET, PRED, seed_resamples(2, "test", b), image_resamples(3, "test", b)
    )
    assert np.nanmean(drawn) == pytest.approx(EXPECTED, abs=0.01)
    for value in np.unique(exact[np.isfinite(exact)]):
        share = np.mean(np.isclose(exact, value))
        assert np.mean(np.isclose(drawn, value)) == pytest.approx(share, abs=0.01), value


def test_paired_difference_enumerated_exactly():
    # the reference predicts [1, 3, 2] with both seeds: R = r1 on every defined draw
    reference = np.array([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    seed_idx, image_idx = all_draws(2, 3)
    dist = hierarchical_bootstrap(TARGET, PRED, seed_idx, image_idx, reference=reference)
    expected = [
        brute_force(s, i, PRED) - brute_force(s, i, reference)
        for s, i in zip(seed_idx, image_idx, strict=True)
    ]
    np.testing.assert_allclose(dist, expected, atol=1e-12, equal_nan=True)
    assert np.nanmean(dist) == pytest.approx(EXPECTED - R1)  # 0.3125
    # seed 1 and the reference agree: Δ = 0 on the ¼ of draws with seed 1 twice. Seed 0
    # beats the reference by 0.5 on a permutation, by 2 on {1, 2} and ties (+1 = +1) on
    # {0, 1} and {0, 2}, half of the defined image draws: Δ = 0 on ¾·½ more draws.
    # Δ ≤ 0 on ¼ + 3/8 = 5/8 of them, Δ ≥ 0 on all: p = min(1, 2·5/8) = 1
    finite = dist[np.isfinite(dist)]
    assert np.mean(finite <= 0) == pytest.approx(5 / 8) and (finite >= 0).all()
    assert bootstrap_p(dist) == (1.0, False)


def test_bootstrap_p_by_hand_and_at_its_resolution():
    # 1 of 4 resamples ≤ 0, 3 of 4 ≥ 0 → 2·¼
    assert bootstrap_p(np.array([-1.0, 0.5, 1.0, 2.0])) == (0.5, False)
    assert bootstrap_p(np.zeros(10)) == (1.0, False)
    # no resample reaches 0: p is below 1/B
    assert bootstrap_p(np.linspace(0.1, 1, 2000)) == (1 / 2000, True)
    assert bootstrap_p(-np.linspace(0.1, 1, 2000)) == (1 / 2000, True)


def test_sign_flip_exact_p_by_hand():
    # mean 1.9; |sum| ≥ 9.5 only if the flipped values sum to ≤ 0.5 or ≥ 10:
    # flip nothing, −0.5, {1, 2, 3, 4}, or everything → 4 of 2⁵ patterns
    assert sign_flip_p(np.array([1.0, 2.0, 3.0, 4.0, -0.5])) == pytest.approx(4 / 32)
    assert sign_flip_p(np.zeros(5)) == 1.0


@pytest.mark.parametrize("n", [5, 6, 8])
def test_sign_flip_matches_brute_force_enumeration(n):
    d = np.random.default_rng(n).normal(0.01, 0.02, n)
    patterns = np.array(list(itertools.product((1, -1), repeat=n)))
    brute = np.mean(np.abs((patterns * d).mean(axis=1)) >= abs(d.mean()) - 1e-12)
    assert sign_flip_p(d) == pytest.approx(brute)


def test_holm_on_a_known_vector():
    # sorted: .005·4 = .02; .01·3 = .03; .03·2 = .06; .04·1 = .04 → max so far .06
    adjusted, bound = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert not bound.any()
    np.testing.assert_allclose(holm([0.5, 0.9])[0], [1.0, 1.0])
    assert holm([])[0].size == 0


def test_holm_keeps_upper_bounds():
    # p < 1/2000 stays a bound after scaling (< 2/2000); .3·1 = .3 is exact
    adjusted, bound = holm([1 / 2000, 0.3], [True, False])
    np.testing.assert_allclose(adjusted, [2 / 2000, 0.3])
    assert bound.tolist() == [True, False]
    # the exact .002 sets the second value: exact, not a bound
    adjusted, bound = holm([1 / 2000, 0.001, 0.002], [True, False, False])
    np.testing.assert_allclose(adjusted, [3 / 2000, 0.002, 0.002])
    assert bound.tolist() == [True, False, False]


def test_minimum_detectable_effect_and_seeds_needed_by_formula():
    z = 1.959963985 + 0.841621234  # z_0.975 + z_0.8
    assert z_sum() == pytest.approx(z)
    assert minimum_detectable_effect(0.01, 4) == pytest.approx(z * 0.01 / 2)  # 0.0140079
    # (z · 0.01 / 0.005)² = 31.40 → 32 seeds
    assert seeds_needed(0.01, 0.005) == 32 == math.ceil((z * 0.01 / 0.005) ** 2)
    assert seeds_needed(0.01, -0.005) == 32
    assert seeds_needed(0.0001, 0.5) == MIN_SEEDS_TEST
    assert seeds_needed(0.01, 0.0) == math.inf and math.isnan(seeds_needed(math.nan, 0.1))


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


IDS = np.array([f"img{i:02d}" for i in range(40)])
TRUTH = np.linspace(0.5, 1.0, 40)


def cell(noise: float, seeds: tuple[int, ...], salt: int = 0) -> Predictions:
    rng = np.random.default_rng(salt)
    return Predictions(IDS, TRUTH, TRUTH + rng.normal(0, noise, (len(seeds), 40)), seeds)


def test_cell_mean_sd_by_hand_and_ci():
    noise = np.array([np.sin(np.arange(40)), np.cos(np.arange(40))]) * 0.05
    pred = TRUTH + noise
    st = cell_stats(Predictions(IDS, TRUTH, pred, (0, 1)), image_resamples(40, "t"), "c")
    r = [np.corrcoef(TRUTH, p)[0, 1] for p in pred]
    rmse = [np.sqrt(np.mean((p - TRUTH) ** 2)) for p in pred]
    assert st.r_mean == pytest.approx(np.mean(r)) and st.r_sd == pytest.approx(np.std(r, ddof=1))
    assert st.rmse_mean == pytest.approx(np.mean(rmse))
    assert st.rmse_sd == pytest.approx(abs(rmse[0] - rmse[1]) / np.sqrt(2))
    assert st.r_ci[0] < st.r_mean < st.r_ci[1] <= 1
    assert st.rmse_ci[0] < st.rmse_mean < st.rmse_ci[1]
    single = cell_stats(Predictions(IDS, TRUTH, pred[:1], (0,)), image_resamples(40, "t"), "c")
    assert np.isnan(single.r_sd)


def test_intervals_come_from_streams_of_their_own():
    images = image_resamples(40, "table")
    a, b = cell(0.05, (0, 1, 2), 1), cell(0.2, (0, 1, 2), 2)
    first = cell_stats(a, images, "a")
    cell_stats(b, images, "b")  # another cell in between changes nothing
    assert cell_stats(a, images, "a") == first
    np.testing.assert_array_equal(image_resamples(40, "table"), images)


def test_comparison_sees_a_real_difference_and_no_difference():
    images = image_resamples(40, "table")
    good, bad = cell(0.02, (0, 1, 2), 1), cell(0.3, (0, 1, 2), 2)
    better = compare(good, bad, images, "k")
    assert better is not None and better.delta_r > 0.3
    assert better.p_value == 1 / 2000 and better.p_bound  # no resample reached 0
    assert better.ci[0] > 0.2 and math.isnan(better.p_sign_flip)
    same = compare(good, good, images, "k")
    assert same is not None and same.delta_r == 0 and same.p_value == 1.0
    assert same.ci == (0.0, 0.0) and same.seeds_needed == math.inf


def test_comparison_pairs_seeds_and_withholds_p_under_three():
    images = image_resamples(40, "table")
    two = compare(cell(0.02, (0, 1), 1), cell(0.3, (0, 1, 2), 2), images, "k")
    assert two is not None and two.seeds == (0, 1) and math.isnan(two.p_value)
    assert np.isfinite(two.sd_diff) and np.isfinite(two.mde)
    none = compare(cell(0.02, (5,), 1), cell(0.3, (0, 1), 2), images, "k")
    assert none is None
    # with a split draw per seed, runs pair only when seed and draw agree
    a = Predictions(IDS, TRUTH, cell(0.02, (0, 1, 2), 1).pred, (0, 1, 2), ("x", "y", "z"))
    b = Predictions(IDS, TRUTH, cell(0.3, (0, 1, 2), 2).pred, (0, 1, 2), ("x", "y", "other"))
    paired = compare(a, b, images, "k")
    assert paired is not None and paired.seeds == (0, 1)


def test_sign_flip_from_five_seeds_with_the_per_seed_differences():
    images = image_resamples(40, "table")
    a, b = cell(0.02, (0, 1, 2, 3, 4), 1), cell(0.3, (0, 1, 2, 3, 4), 2)
    result = compare(a, b, images, "k")
    assert result is not None
    # every per-seed difference is positive: only the identity and the all-flipped
    # pattern reach the observed |mean| → 2/32
    assert result.p_sign_flip == pytest.approx(2 / 32)
    differences = [
        np.corrcoef(TRUTH, p)[0, 1] - np.corrcoef(TRUTH, q)[0, 1]
        for p, q in zip(a.pred, b.pred, strict=True)
    ]
    assert result.delta_r == pytest.approx(np.mean(differences))
    assert result.sd_diff == pytest.approx(np.std(differences, ddof=1))
    assert result.mde == pytest.approx(z_sum() * result.sd_diff / np.sqrt(5))
