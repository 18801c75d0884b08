"""Each statistic of a table against numbers by hand, by enumeration, or by simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from bmdbench.results import Predictions
from bmdbench.statistics import (
    MIN_SEEDS_TEST,
    cell_stats,
    compare,
    estimate,
    holm,
    minimum_detectable_effect,
    patient_weights,
    power,
    seeds_needed,
    weighted_pearson,
    weighted_rmse,
)

# --- the patient bootstrap, enumerated ---------------------------------------------------

# 4 images of 3 patients: patient "a" has two images. A draw of 3 patients with replacement
# gives each image its patient's count.
PATIENTS = np.array(["a", "a", "b", "c"])
TARGET = np.array([1.0, 2.0, 4.0, 3.0])
PRED = np.array([[1.5, 1.0, 4.5, 2.0], [0.0, 2.5, 3.0, 3.5]])


def test_weighted_metrics_equal_the_metrics_of_the_duplicated_sample():
    for draw in itertools.product(range(3), repeat=3):  # every draw of 3 patients: 27
        counts = np.bincount(draw, minlength=3).astype(float)
        weights = counts[[0, 0, 1, 2]]
        sample = np.repeat(np.arange(4), weights.astype(int))
        for s in range(2):
            t, p = TARGET[sample], PRED[s][sample]
            r = weighted_pearson(TARGET, PRED, weights[None])[0, s]
            e = weighted_rmse(TARGET, PRED, weights[None])[0, s]
            assert e == pytest.approx(np.sqrt(np.mean((p - t) ** 2)))
            if np.ptp(t) > 0:
                assert r == pytest.approx(np.corrcoef(t, p)[0, 1])


def test_patient_weights_move_a_patients_images_together_with_the_right_frequencies():
    weights = patient_weights(PATIENTS, "t", 30_000)
    assert np.array_equal(weights[:, 0], weights[:, 1])  # one patient, one count
    assert np.all(weights[:, [0, 2, 3]].sum(1) == 3)  # three patients drawn per resample
    # P(patient drawn k times) is Binomial(3, 1/3): 8/27, 12/27, 6/27, 1/27
    shares = np.bincount(weights[:, 2].astype(int), minlength=4) / len(weights)
    assert shares == pytest.approx(np.array([8, 12, 6, 1]) / 27, abs=0.01)
    assert np.array_equal(weights, patient_weights(PATIENTS, "t", 30_000))  # its own stream


# --- the two-level estimate by hand ------------------------------------------------------


def test_estimate_by_hand_without_patient_variance_is_the_paired_t_test():
    values = np.array([0.01, 0.03, 0.05])
    est = estimate(values, np.tile(values, (10, 1)))  # every resample the same: V = 0
    s = 0.02  # SD of 0.01, 0.03, 0.05
    assert est.mean == pytest.approx(0.03) and est.sd == pytest.approx(s)
    assert est.se == pytest.approx(s / math.sqrt(3)) and est.se_patients == pytest.approx(
        0, abs=1e-12
    )
    t = 0.03 / (s / math.sqrt(3))  # 2.598
    assert est.p == pytest.approx(2 * stats.t.sf(t, 2))
    assert est.p == pytest.approx(stats.ttest_1samp(values, 0).pvalue)
    half = 4.302653 * s / math.sqrt(3)  # t_{0.975, 2}
    assert est.ci == pytest.approx((0.03 - half, 0.03 + half), rel=1e-6)


def test_patient_variance_adds_to_the_seed_variance():
    values = np.array([0.01, 0.03, 0.05])
    shifts = np.array([-0.02, 0.02] * 5)[:, None]  # the mean moves ±0.02 under resampling
    est = estimate(values, values + shifts)
    v = np.var(shifts[:, 0], ddof=1)  # every seed moves alike: all of it is shared
    assert est.se_patients**2 == pytest.approx(v)
    assert est.se**2 == pytest.approx(0.02**2 / 3 + v)
    assert est.p > stats.ttest_1samp(values, 0).pvalue


@pytest.mark.parametrize("n", [3, 4, 5, 10])
def test_never_less_conservative_than_a_paired_t_test(n):
    rng = np.random.default_rng(n)
    for _ in range(50):
        values = rng.normal(0.02, 0.02, n)
        est = estimate(values, values + rng.normal(0, 0.01, (200, 1)))
        t_test = stats.ttest_1samp(values, 0)
        low, high = t_test.confidence_interval()
        assert est.p >= t_test.pvalue
        assert est.ci[0] <= low and est.ci[1] >= high


def test_no_p_under_three_seeds_and_no_interval_for_one():
    two = estimate(np.array([0.01, 0.03]), np.zeros((5, 2)))
    assert MIN_SEEDS_TEST == 3 and math.isnan(two.p) and math.isfinite(two.ci[0])
    one = estimate(np.array([0.01]), np.zeros((5, 1)))
    assert math.isnan(one.sd) and math.isnan(one.ci[0]) and math.isnan(one.p)


# --- power by hand ---------------------------------------------------------------------------


def test_power_of_the_t_test_against_a_published_value():
    # one-sample two-sided t test, α = 0.05, effect of 1 SD, 10 observations: power 0.8031
    # (G*Power 3.1; Cohen's d = 1), 9 observations: 0.7480
    assert power(1.0, 1 / math.sqrt(10), 9) == pytest.approx(0.8031, abs=5e-4)
    assert power(1.0, 1 / math.sqrt(9), 8) == pytest.approx(0.7480, abs=5e-4)
    assert seeds_needed(1.0, 0.0, 1.0) == 10  # the first n with power ≥ 0.8


def test_minimum_detectable_effect_from_the_t_distribution():
    # many seeds: the normal approximation, z_{0.975} + z_{0.8} = 2.8016 standard errors
    assert minimum_detectable_effect(1.0, 100_000) == pytest.approx(2.8016, abs=1e-3)
    # 3 seeds: the noncentral t with 2 degrees of freedom needs 5.65 standard errors, twice
    # the normal approximation's (and more than t_{0.975,2} + t_{0.8,2} = 5.363)
    mde = minimum_detectable_effect(1.0, 2)
    assert mde == pytest.approx(5.6535, abs=1e-3)
    assert power(mde, 1.0, 2) == pytest.approx(0.8, abs=1e-9)
    assert minimum_detectable_effect(0.5, 2) == pytest.approx(mde / 2)


def test_seeds_needed_holds_the_patient_variance_fixed():
    assert seeds_needed(1.0, 0.3, 1.0) > 10  # the patient variance costs seeds
    assert seeds_needed(1.0, 0.5, 1.0) == math.inf  # 1 < 2.8 · 0.5: no n detects it
    assert seeds_needed(0.01, 0.0, 0.0) == math.inf
    assert math.isnan(seeds_needed(math.nan, 0.0, 0.1))
    assert seeds_needed(0.001, 0.0, 1.0) == MIN_SEEDS_TEST


def test_holm_on_a_known_vector():
    # sorted 0.01, 0.02, 0.04, 0.30 → 4·0.01, 3·0.02, max(0.06, 2·0.04), max(0.08, 0.30)
    adjusted = holm([0.04, 0.01, 0.30, 0.02])
    assert adjusted == pytest.approx([0.08, 0.04, 0.30, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


# --- calibration by simulation ----------------------------------------------------------------

N_PATIENTS = 60  # 80 test images: 20 patients have two
IMAGE_PATIENT = np.concatenate([np.arange(N_PATIENTS), np.arange(20)])
IDS = np.array([f"img{i:03d}" for i in range(len(IMAGE_PATIENT))])


def experiment(rng: np.random.Generator, seeds: int, noise_a: float, noise_b: float):
    """One benchmark, simulated: a fresh test set of patients (a patient's images share its
    truth), and per seed a stage-1 parent whose error both methods inherit, plus each
    method's own error; each seed's quality varies (its noise SD scaled by a log-normal)."""
    truth = rng.normal(0, 1, N_PATIENTS)[IMAGE_PATIENT] + rng.normal(0, 0.2, len(IDS))
    quality = np.exp(rng.normal(0, 0.25, (seeds, 1)))
    parent = rng.normal(0, 0.5, (seeds, len(IDS))) * quality
    a = truth + parent + rng.normal(0, noise_a, (seeds, len(IDS))) * quality
    b = truth + parent + rng.normal(0, noise_b, (seeds, len(IDS))) * quality
    order = tuple(range(seeds))
    cells = [Predictions(IDS, IMAGE_PATIENT, truth, p, order) for p in (a, b)]
    return cells, patient_weights(IMAGE_PATIENT, f"sim{rng.integers(1 << 30)}", 200)


def run(seeds: int, noise_b: float, repeats: int, salt: int) -> tuple[float, float]:
    """Share of experiments whose ΔR (b − a) test rejects at 0.05, and the median printed MDE."""
    rng = np.random.default_rng(salt)
    rejected, mdes = 0, []
    for _ in range(repeats):
        (a, b), weights = experiment(rng, seeds, 0.8, noise_b)
        result = compare(b, a, weights)
        assert result is not None
        rejected += result.p < 0.05
        mdes.append(result.mde)
    return rejected / repeats, float(np.median(mdes))


def expected_delta(seeds: int, noise_b: float) -> float:
    rng = np.random.default_rng(99)
    deltas = []
    for _ in range(400):
        (a, b), _ = experiment(rng, seeds, 0.8, noise_b)
        deltas.append(
            np.mean(weighted_pearson(a.target, b.pred, np.ones((1, len(IDS)))))
            - np.mean(weighted_pearson(a.target, a.pred, np.ones((1, len(IDS)))))
        )
    return float(np.mean(deltas))


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_false_positive_rate_at_most_alpha(seeds):
    repeats = 400
    rate, _ = run(seeds, 0.8, repeats, salt=seeds)  # the null: both methods alike
    assert rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / repeats)  # 0.072: Monte-Carlo error


@pytest.mark.parametrize("seeds", [5, 10])
def test_power_at_the_printed_minimum_detectable_effect_is_about_80_percent(seeds):
    _, mde = run(seeds, 0.8, 100, salt=100 + seeds)
    # the noise of method b at which its expected ΔR equals that MDE (ΔR falls with noise)
    low, high = 0.0, 0.8
    for _ in range(12):
        middle = (low + high) / 2
        low, high = (middle, high) if expected_delta(seeds, middle) > mde else (low, middle)
    rate, _ = run(seeds, (low + high) / 2, 300, salt=200 + seeds)
    assert 0.7 <= rate <= 0.93


def test_cell_stats_by_hand():
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 1, len(IDS))
    pred = truth + rng.normal(0, 0.5, (3, len(IDS)))
    cell = Predictions(IDS, IMAGE_PATIENT, truth, pred, (0, 1, 2))
    st = cell_stats(cell, patient_weights(IMAGE_PATIENT, "c", 500))
    r = [np.corrcoef(truth, p)[0, 1] for p in pred]
    assert st.r.mean == pytest.approx(np.mean(r)) and st.r.sd == pytest.approx(np.std(r, ddof=1))
    assert st.r.ci[0] < st.r.mean < st.r.ci[1]
    assert st.rmse.mean == pytest.approx(np.mean(np.sqrt(np.mean((pred - truth) ** 2, 1))))
    assert math.isnan(st.r.p)  # a cell's own R is not tested


def test_comparison_pairs_seeds_by_seed():
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 1, len(IDS))
    a = Predictions(
        IDS, IMAGE_PATIENT, truth, truth + rng.normal(0, 1, (4, len(IDS))), (0, 1, 2, 3)
    )
    b = Predictions(IDS, IMAGE_PATIENT, truth, truth + rng.normal(0, 1, (3, len(IDS))), (1, 2, 5))
    result = compare(b, a, patient_weights(IMAGE_PATIENT, "p", 100))
    assert result is not None and result.n == 2  # seeds 1 and 2
    r = lambda p: np.corrcoef(truth, p)[0, 1]  # noqa: E731
    assert result.mean == pytest.approx(
        np.mean([r(b.pred[0]) - r(a.pred[1]), r(b.pred[1]) - r(a.pred[2])])
    )
    assert math.isnan(result.p)  # under three paired seeds
