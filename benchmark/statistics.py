"""Inference over training seeds and test patients: the statistics behind every table.

Estimand: the expected test Pearson R of a method (or its difference ΔR from a reference)
over training seeds (and labeled-subset draws, when they vary) and over patients like the
test patients. Two sources of variance, two levels:

- **seeds**, the unit of replication: each run's R on the whole test set. With n runs,
  their mean is the point estimate and s²/n (s the SD of the per-seed values, ddof 1) its
  seed variance. For ΔR the runs are paired by seed and split draw, and the per-seed
  differences take the place of the values;
- **test patients**, the second level: a bootstrap resamples test patients (all images of
  a drawn patient come along; the same patient draw for every seed and for both sides of a
  difference). The test set is one sample of patients, shared by every seed, so s² cannot
  see how the values move with it: V is the part of their bootstrap variance that the seeds
  share (their mean covariance, :func:`shared_variance`; each seed's own scatter over the
  patients is already in s²).

The standard error is SE = √(s²/n + V). Interval and test use Student's t with n − 1
degrees of freedom: CI = estimate ± t_{0.975, n−1}·SE, p = 2·P(T_{n−1} > |estimate|/SE).
Since SE ≥ s/√n, they are never less conservative than a paired t-test on the per-seed
values (the simulation in tests/test_statistics.py checks the false-positive rate at
3, 5 and 10 seeds). Under :data:`MIN_SEEDS_TEST` paired seeds no p is given.

Power is that of the same test: the minimum detectable effect is the |Δ| that this test
rejects with probability :data:`POWER` at :data:`ALPHA` (the noncentral t distribution with
n − 1 degrees of freedom and noncentrality Δ/SE); "seeds needed" is the smallest n at which
it detects the observed ΔR so, the patient variance V held fixed (more seeds cannot shrink
it: ∞ when no number of seeds can).

A family of comparisons is Holm–Bonferroni adjusted (:func:`holm`).

A table's cells (:func:`table_stats`, from their runs in the store) are compared with up to
two references each: its control (the equal-compute supervised control of its stage-1
parent: the gain from unlabeled data) and the table's baseline; the Holm adjustment runs
over a whole family of comparisons, which a table may share with others.

Every random draw comes from a stream of its own, seeded by a stable hash of what it is
for (:func:`stream`), so the same predictions give the same numbers whatever else is
computed, and in whatever order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import optimize, stats

from bmdbench.config import stable_hash
from bmdbench.errors import DataError
from bmdbench.results import Predictions, read_predictions

N_RESAMPLES = 2000  # B, patient resamples of the second level
CONFIDENCE = 0.95
ALPHA = 0.05  # two-sided level of tests and of the power calculation
POWER = 0.8
MIN_SEEDS_TEST = 3  # paired seeds below which a comparison gets no p-value
MAX_SEEDS = 10_000  # "seeds needed" above this is reported as ∞
_CHUNK = 128  # resamples evaluated at once (bounds memory: chunk × seeds × images)


# --- metrics, plain and weighted -------------------------------------------------------


def pearson(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson R along the last axis (broadcasting); NaN where either side is constant."""
    t = target - target.mean(axis=-1, keepdims=True)
    p = pred - pred.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (t * p).sum(-1) / np.sqrt((t * t).sum(-1) * (p * p).sum(-1))


def rmse(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Root mean squared error along the last axis (broadcasting)."""
    return np.sqrt(np.mean((pred - target) ** 2, axis=-1))


def weighted_pearson(target: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson R of every seed under every weighting: target (n,), pred (S, n), weights
    (B, n) image multiplicities → (B, S). Integer weights give exactly the R of the sample
    in which image i appears weights[b, i] times."""
    w = weights[:, None, :] / weights.sum(-1)[:, None, None]  # (B, 1, n)
    t = target - (w * target).sum(-1, keepdims=True)
    p = pred[None] - (w * pred[None]).sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * t * p).sum(-1) / np.sqrt((w * t * t).sum(-1) * (w * p * p).sum(-1))


def weighted_rmse(target: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """RMSE of every seed under every weighting: (n,), (S, n), (B, n) → (B, S)."""
    w = weights[:, None, :] / weights.sum(-1)[:, None, None]
    return np.sqrt((w * (pred[None] - target) ** 2).sum(-1))


WEIGHTED = {"r": weighted_pearson, "rmse": weighted_rmse}
PLAIN = {"r": pearson, "rmse": rmse}


# --- random streams and the patient bootstrap ------------------------------------------


def stream(*parts: object) -> np.random.Generator:
    """A random stream of its own, seeded by a stable hash of ``parts`` (their str)."""
    return np.random.default_rng(int(stable_hash([str(p) for p in parts])[:16], 16))


def patient_weights(patients: np.ndarray, key: str, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """(B, n) image weights of a bootstrap over patients: resample b draws as many patients
    as the test set has, with replacement; an image's weight is how often its patient was
    drawn. One draw (seeded by ``key`` and the patients) serves every cell of a table."""
    ids, inverse = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    rng = stream("patients", key, stable_hash(ids.tolist()))
    counts = np.zeros((n_resamples, len(ids)))
    draws = rng.integers(0, len(ids), (n_resamples, len(ids)))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts[:, inverse]


def per_seed_resampled(
    target: np.ndarray, pred: np.ndarray, weights: np.ndarray, metric: str
) -> np.ndarray:
    """``metric`` ("r" or "rmse") of every seed under every patient resample: (B, seeds)."""
    out = np.empty((len(weights), len(pred)))
    for start in range(0, len(weights), _CHUNK):
        chunk = weights[start : start + _CHUNK]
        out[start : start + len(chunk)] = WEIGHTED[metric](target, pred, chunk)
    return out


# --- the two-level estimate ---------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its two-level standard error, t interval, test and power."""

    n: int  # seeds (paired seeds, for a difference)
    mean: float  # mean of the per-seed values on the whole test set
    sd: float  # SD (ddof 1) of the per-seed values; NaN for one seed
    se_seeds: float  # s/√n
    se_patients: float  # √V, V the patient-bootstrap variance the seeds share
    ci: tuple[float, float]  # mean ± t_{0.975, n−1}·SE; NaN under 2 seeds
    p: float  # two-sided t test of mean = 0; NaN under MIN_SEEDS_TEST seeds
    mde: float  # minimum detectable |mean| of this test at POWER, α = ALPHA
    seeds_needed: float  # seeds at which the observed mean is detected so (∞: none)

    @property
    def se(self) -> float:
        return math.hypot(self.se_seeds, self.se_patients)


def estimate(per_seed: np.ndarray, resampled: np.ndarray, test: bool = True) -> Estimate:
    """The two-level estimate from the per-seed values on the whole test set (n,) and the
    same values under the patient resamples (B, n). ``test``: also the p-value and power
    (for a difference; a cell's own R is not tested against 0)."""
    values = np.asarray(per_seed, float)
    n = len(values)
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if n > 1 else math.nan
    se_patients = math.sqrt(shared_variance(np.asarray(resampled, float)))
    se_seeds = sd / math.sqrt(n) if n > 1 else math.nan
    se = math.hypot(se_seeds, se_patients)
    df = n - 1
    ci = (math.nan, math.nan)
    if n > 1 and math.isfinite(se):
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
        ci = (mean - half, mean + half)
    p = mde = needed = math.nan
    if test and n >= MIN_SEEDS_TEST and math.isfinite(se):
        p = t_test_p(mean, se, df)
        mde = minimum_detectable_effect(se, df)
        needed = seeds_needed(sd, se_patients, mean)
    return Estimate(n, mean, sd, se_seeds, se_patients, ci, p, mde, needed)


def shared_variance(resampled: np.ndarray) -> float:
    """The part of the patient-bootstrap variance that every seed shares: the mean
    covariance between two seeds' values over the resamples (B, n), at least 0.

    A seed's value varies under patient resampling for two reasons: the test patients move
    every seed alike (shared: σ_b²), and each seed's own errors on them (σ_c², independent
    across seeds). The variance of the mean over n seeds is σ_b² + σ_c²/n, but the seeds'
    SD s already holds σ_c² (s² estimates σ_seed² + σ_c²): only σ_b², the covariance, is
    added, so nothing is counted twice. With one seed: that seed's whole variance.
    """
    finite = resampled[np.isfinite(resampled).all(axis=1)]
    if len(finite) < 2:
        return math.nan
    n = finite.shape[1]
    cov = np.atleast_2d(np.cov(finite, rowvar=False))
    if n == 1:
        return float(cov[0, 0])
    return max(0.0, float((cov.sum() - np.trace(cov)) / (n * (n - 1))))


def t_test_p(mean: float, se: float, df: int) -> float:
    """Two-sided p of mean = 0 for the statistic mean/SE ~ Student's t with ``df``."""
    if se == 0:
        return 0.0 if mean != 0 else 1.0
    return float(2 * stats.t.sf(abs(mean) / se, df))


def power(effect: float, se: float, df: int, alpha: float = ALPHA) -> float:
    """Probability that the two-sided t test at ``alpha`` rejects when the true value is
    ``effect``: P(|T'| > t_{1−α/2, df}), T' noncentral t with ``df`` and noncentrality
    effect/SE."""
    critical = stats.t.ppf(1 - alpha / 2, df)
    ncp = abs(effect) / se
    # the far tail can come back NaN from scipy where it is far below 1e-300
    upper, lower = np.nan_to_num(
        [stats.nct.sf(critical, df, ncp), stats.nct.cdf(-critical, df, ncp)]
    )
    return float(min(1.0, upper + lower))


def minimum_detectable_effect(se: float, df: int, alpha: float = ALPHA) -> float:
    """The |effect| the two-sided t test with ``df`` degrees of freedom detects with
    probability :data:`POWER` at ``alpha``, for a standard error ``se``: solved exactly on
    the noncentral t (not (z_{1−α/2} + z_{power})·SE, which understates it at few seeds)."""
    if not (se > 0 and df >= 1):
        return math.nan
    ncp = optimize.brentq(lambda d: power(d, 1.0, df, alpha) - POWER, 0.0, 200.0)
    return float(ncp * se)


def seeds_needed(sd: float, se_patients: float, effect: float) -> float:
    """The smallest number of seeds n (≥ :data:`MIN_SEEDS_TEST`) at which the test detects
    ``effect`` with probability :data:`POWER`: SE_n = √(sd²/n + se_patients²). ∞ when no n
    up to :data:`MAX_SEEDS` does (the patient variance alone can forbid it); NaN without an
    SD."""
    if not (math.isfinite(sd) and math.isfinite(se_patients)):
        return math.nan
    if effect == 0:
        return math.inf

    def detects(n: int) -> bool:
        se = math.sqrt(sd**2 / n + se_patients**2)
        return se == 0 or power(effect, se, n - 1) >= POWER

    if not detects(MAX_SEEDS):
        return math.inf
    low, high = MIN_SEEDS_TEST, MAX_SEEDS  # power rises with n: bisect for the first n
    if detects(low):
        return float(low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if detects(middle) else (middle, high)
    return float(high)


# --- a cell, a comparison -------------------------------------------------------------------


@dataclass(frozen=True)
class CellStats:
    """A cell's test R and RMSE: mean over seeds with its two-level interval."""

    r: Estimate
    rmse: Estimate


def cell_stats(cell: Predictions, weights: np.ndarray) -> CellStats:
    """R and RMSE of a cell, ``weights`` the table's shared patient resamples (B, n)."""
    return CellStats(
        *(
            estimate(
                PLAIN[m](cell.target, cell.pred),
                per_seed_resampled(cell.target, cell.pred, weights, m),
                test=False,
            )
            for m in ("r", "rmse")
        )
    )


def pair(cell: Predictions, reference: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the runs the two cells share, by seed and split draw, in seed order."""
    ref_rows = {draw: i for i, draw in enumerate(reference.draws())}
    shared = sorted((draw, i) for i, draw in enumerate(cell.draws()) if draw in ref_rows)
    rows = np.array([i for _, i in shared], dtype=np.int64)
    return rows, np.array([ref_rows[draw] for draw, _ in shared], dtype=np.int64)


def compare(cell: Predictions, reference: Predictions, weights: np.ndarray) -> Estimate | None:
    """ΔR of ``cell`` against ``reference`` over their paired runs (None: none paired);
    both on the same image order (as the store's loader gives)."""
    if not np.array_equal(cell.ids, reference.ids):
        raise DataError(
            "a cell and its reference were tested on different images",
            "compare runs of one split only (use a fresh --out per dataset)",
        )
    rows, ref_rows = pair(cell, reference)
    if len(rows) == 0:
        return None
    pred, ref = cell.pred[rows], reference.pred[ref_rows]
    per_seed = pearson(cell.target, pred) - pearson(cell.target, ref)
    resampled = per_seed_resampled(cell.target, pred, weights, "r") - per_seed_resampled(
        cell.target, ref, weights, "r"
    )
    return estimate(per_seed, resampled)


def holm(p: npt.ArrayLike) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values of one family of tests, in the input's order.

    With the m p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of p_(i) is
    max over j ≤ i of min(1, (m − j + 1)·p_(j)).
    """
    values = np.asarray(p, float)
    m = len(values)
    adjusted = np.empty(m)
    best = 0.0
    for rank, i in enumerate(np.argsort(values, kind="stable")):
        best = max(best, min(1.0, (m - rank) * values[i]))
        adjusted[i] = best
    return adjusted


# --- a family of cells, from their runs ---------------------------------------------------

KINDS = ("control", "base")  # the references a cell is compared with: its control, the baseline

STAT_COLUMNS = (
    "seeds",  # ok runs in the cell
    "r_mean",
    "r_sd",
    "r_ci_low",  # 95 %, two-level (seeds, then test patients)
    "r_ci_high",
    "rmse_mean",
    "rmse_sd",
    "rmse_ci_low",
    "rmse_ci_high",
    "bias_mean",  # test Bland–Altman bias (mean prediction − target), mean over seeds
    "refreshes",  # pseudo-label refreshes per run, mean over seeds (NaN: the method has none)
    "stage2",  # the cell's runs fine-tune a stage-1 parent
    "n_selected_stage1",  # of those, runs that selected their stage-1 weights (epoch 0)
    *(
        f"{kind}_{column}"
        for kind in KINDS
        for column in (
            "paired",  # seeds paired with the reference's (by seed and split draw)
            "delta",  # ΔR: mean over paired seeds of R(cell) − R(reference)
            "ci_low",
            "ci_high",
            "p",  # two-sided t test on the two-level standard error, raw
            "p_holm",  # Holm-adjusted over the family's comparisons of this kind
            "sd",  # SD of the per-seed ΔR
            "mde",  # minimum detectable |ΔR| (80 % power, α = 0.05) with these seeds
            "seeds_needed",  # seeds to detect the observed ΔR so
        )
    ),
)


def table_stats(
    scope: str,
    frames: Sequence[pd.DataFrame],
    references: Mapping[str, Sequence[int | None]],
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """The statistics of a family of cells: one row per frame of runs, :data:`STAT_COLUMNS`.

    ``frames[i]``: the ok runs of cell i (rows of :func:`bmdbench.results.load_runs`; may be
    empty).
    ``references[kind][i]``: the position of the cell that cell i is compared with for each
    kind of :data:`KINDS` (None: no such comparison). The p-values of each kind are
    Holm-adjusted over all of the family's comparisons of that kind. ``scope`` (the family's
    name) and the test patients seed the random streams, so a family gives the same numbers
    in every table that shows it. All runs must have been tested on the same images.
    """
    predictions = [read_predictions(f) if len(f) else None for f in frames]
    present = [p for p in predictions if p is not None]
    weights = np.ones((n_resamples, 0))
    if present:
        first = present[0]
        if any(not np.array_equal(p.ids, first.ids) for p in present):
            raise DataError(
                f"the cells of {scope} were tested on different images",
                "compare runs of one split only (use a fresh --out per dataset)",
            )
        weights = patient_weights(
            first.patients, f"{scope}|{stable_hash(first.ids.tolist())}", n_resamples
        )
    rows = []
    for i, (frame, cell) in enumerate(zip(frames, predictions, strict=True)):
        row: dict[str, Any] = dict.fromkeys(STAT_COLUMNS, np.nan)
        row.update(seeds=len(frame), **_run_summary(frame))
        if cell is not None:
            st = cell_stats(cell, weights)
            for name, est in (("r", st.r), ("rmse", st.rmse)):
                row.update(
                    {
                        f"{name}_mean": est.mean,
                        f"{name}_sd": est.sd,
                        f"{name}_ci_low": est.ci[0],
                        f"{name}_ci_high": est.ci[1],
                    }
                )
        for kind in KINDS:
            j = references.get(kind, [None] * len(frames))[i]
            if j is None or j == i or cell is None:
                continue
            reference = predictions[j]
            cmp = compare(cell, reference, weights) if reference is not None else None
            row[f"{kind}_paired"] = cmp.n if cmp is not None else 0
            if cmp is not None:
                row.update(
                    {
                        f"{kind}_delta": cmp.mean,
                        f"{kind}_ci_low": cmp.ci[0],
                        f"{kind}_ci_high": cmp.ci[1],
                        f"{kind}_p": cmp.p,
                        f"{kind}_sd": cmp.sd,
                        f"{kind}_mde": cmp.mde,
                        f"{kind}_seeds_needed": cmp.seeds_needed,
                    }
                )
        rows.append(row)
    tidy = pd.DataFrame(rows, columns=list(STAT_COLUMNS))
    for kind in KINDS:
        tested = tidy[f"{kind}_p"].notna()
        tidy.loc[tested, f"{kind}_p_holm"] = holm(tidy.loc[tested, f"{kind}_p"])
    return tidy.astype({"stage2": bool})


def _run_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """What a cell's records say besides its predictions: whether it is stage 2, how many of
    its runs selected their stage-1 weights, its mean test bias and pseudo-label refreshes."""
    if frame.empty:
        return {"stage2": False, "n_selected_stage1": 0}
    stage2 = frame["parent_run"].notna()
    refreshes = [c for c in frame.columns if c.endswith("_refreshes") and frame[c].notna().any()]
    return {
        "stage2": bool(stage2.any()),
        "n_selected_stage1": int((stage2 & (frame["selected_epoch"] == 0)).sum()),
        "bias_mean": float(frame["test_ba_bias"].mean()),
        "refreshes": float(frame[refreshes].sum(axis=1).mean()) if refreshes else math.nan,
    }
