"""Regression metrics of predicted against measured BMD.

:func:`regression_metrics` returns every key of :data:`METRIC_KEYS`. A metric
that is undefined for the inputs (a correlation when predictions or targets are
constant, R² for constant targets) is NaN, without warnings.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

METRIC_KEYS = (
    "pearson_r",  # Pearson correlation coefficient (the paper's R; model selection uses it)
    "rmse",  # root mean squared error, in target units (g/cm² for BMD)
    "mae",  # mean absolute error, in target units
    "r2",  # coefficient of determination 1 − SS_res / SS_tot
    "spearman",  # Spearman rank correlation
    "ccc",  # Lin's concordance correlation coefficient
    "ba_bias",  # Bland–Altman bias: mean(pred − target)
    "ba_loa_low",  # Bland–Altman lower limit of agreement: bias − 1.96·SD(pred − target)
    "ba_loa_high",  # Bland–Altman upper limit of agreement: bias + 1.96·SD(pred − target)
)

BLAND_ALTMAN_Z = 1.96  # limits of agreement cover ≈ 95 % of differences


def regression_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All :data:`METRIC_KEYS` for 1-D arrays ``target`` and ``pred`` of equal length ≥ 2.

    Population (ddof=0) moments in CCC; sample (ddof=1) SD in the Bland–Altman
    limits. Non-finite predictions make every metric that depends on them NaN.
    """
    target = np.asarray(target, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    assert target.ndim == 1 and pred.ndim == 1, (
        f"expected 1-D arrays, got {target.shape} and {pred.shape}"
    )
    assert target.shape == pred.shape, f"length mismatch: {target.shape} vs {pred.shape}"
    assert target.size >= 2, f"need at least 2 samples, got {target.size}"

    diff = pred - target
    nan = float("nan")
    finite = bool(np.isfinite(target).all() and np.isfinite(pred).all())
    # correlations are undefined for constant (or non-finite) inputs
    varying = finite and np.ptp(target) > 0 and np.ptp(pred) > 0

    ss_res = float(np.sum(diff**2))
    ss_tot = float(np.sum((target - target.mean()) ** 2))
    mean_t, mean_p = float(target.mean()), float(pred.mean())
    var_t, var_p = float(target.var()), float(pred.var())
    cov = float(np.mean((target - mean_t) * (pred - mean_p)))
    ccc_den = var_t + var_p + (mean_t - mean_p) ** 2
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1))

    return {
        "pearson_r": float(stats.pearsonr(target, pred).statistic) if varying else nan,
        "rmse": float(np.sqrt(ss_res / target.size)),
        "mae": float(np.mean(np.abs(diff))),
        "r2": 1.0 - ss_res / ss_tot if finite and ss_tot > 0 else nan,
        "spearman": float(stats.spearmanr(target, pred).statistic) if varying else nan,
        "ccc": 2.0 * cov / ccc_den if finite and ccc_den > 0 else nan,
        "ba_bias": bias,
        "ba_loa_low": bias - BLAND_ALTMAN_Z * sd,
        "ba_loa_high": bias + BLAND_ALTMAN_Z * sd,
    }
