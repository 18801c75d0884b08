import warnings

import numpy as np
import pytest
from scipy import stats

from bmdbench.metrics import METRIC_KEYS, regression_metrics


def test_hand_computed_example() -> None:
    target = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 1.5, 3.5, 3.5])
    # diff = pred − target = [.5, −.5, .5, −.5]
    # rmse = sqrt(mean(.25 × 4)) = .5 ; mae = .5
    # SS_res = 4 × .25 = 1 ; SS_tot = 2.25 + .25 + .25 + 2.25 = 5 ; r2 = 1 − 1/5 = .8
    # means 2.5 and 2.5 ; var_t = 5/4 = 1.25 ; var_p = 4 × 1/4 = 1
    # cov = ((−1.5)(−1) + (−.5)(−1) + (.5)(1) + (1.5)(1)) / 4 = 4/4 = 1
    # pearson = 1 / sqrt(1.25 × 1) = .894427191
    # spearman: ranks [1, 2, 3, 4] vs [1.5, 1.5, 3.5, 3.5] → the same arithmetic = .894427191
    # ccc = 2 × 1 / (1.25 + 1 + 0²) = .888888889
    # bias = 0 ; SD(diff, ddof=1) = sqrt(1/3) = .577350269 ; LoA = ±1.96 × .577350269 = ±1.131607
    expected = {
        "pearson_r": 0.894427191,
        "rmse": 0.5,
        "mae": 0.5,
        "r2": 0.8,
        "spearman": 0.894427191,
        "ccc": 0.888888889,
        "ba_bias": 0.0,
        "ba_loa_low": -1.131606528,
        "ba_loa_high": 1.131606528,
    }
    got = regression_metrics(target, pred)
    assert tuple(got) == METRIC_KEYS
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-8), key


def test_hand_computed_shifted_example() -> None:
    target = np.array([1.0, 2.0, 3.0, 4.0])
    pred = target + 1.0
    # diff = [1, 1, 1, 1]: rmse = mae = bias = 1, SD = 0 → LoA = [1, 1]
    # r2 = 1 − 4/5 = .2 ; pearson = spearman = 1
    # ccc = 2 × 1.25 / (1.25 + 1.25 + (2.5 − 3.5)²) = 2.5 / 3.5 = .714285714
    got = regression_metrics(target, pred)
    assert got["pearson_r"] == pytest.approx(1.0)
    assert got["spearman"] == pytest.approx(1.0)
    assert got["rmse"] == pytest.approx(1.0)
    assert got["mae"] == pytest.approx(1.0)
    assert got["r2"] == pytest.approx(0.2)
    assert got["ccc"] == pytest.approx(0.714285714, abs=1e-8)
    assert got["ba_bias"] == pytest.approx(1.0)
    assert got["ba_loa_low"] == pytest.approx(1.0)
    assert got["ba_loa_high"] == pytest.approx(1.0)


def test_correlations_agree_with_scipy() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(0.75, 0.15, size=50)
    pred = target + rng.normal(0.0, 0.08, size=50)
    got = regression_metrics(target, pred)
    assert got["pearson_r"] == pytest.approx(stats.pearsonr(target, pred).statistic)
    assert got["spearman"] == pytest.approx(stats.spearmanr(target, pred).statistic)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)))


def test_constant_prediction_gives_nan_correlations_without_warnings() -> None:
    target = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.full(4, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = regression_metrics(target, pred)
    assert np.isnan(got["pearson_r"]) and np.isnan(got["spearman"])
    # cov = 0 → ccc = 0 ; SS_res = 1 + 0 + 1 + 4 = 6 → r2 = 1 − 6/5 = −.2
    assert got["ccc"] == 0.0
    assert got["r2"] == pytest.approx(-0.2)
    assert got["mae"] == pytest.approx(1.0)


def test_non_finite_prediction_gives_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, np.nan, 3.0]))
    assert all(np.isnan(v) for v in got.values())


@pytest.mark.parametrize(
    ("target", "pred"),
    [
        (np.zeros(3), np.zeros(4)),
        (np.zeros((3, 1)), np.zeros((3, 1))),
        (np.zeros(1), np.zeros(1)),
    ],
)
def test_rejects_bad_shapes(target: np.ndarray, pred: np.ndarray) -> None:
    with pytest.raises(AssertionError):
        regression_metrics(target, pred)
