"""The results store as a DataFrame, and the statistics of a table: inference over seeds.

Estimand: ΔR is the difference in expected test Pearson R between a method and
the table's reference over training seeds (and labeled-subset draws when they
vary) and over patients like the test patients. The training seed is the unit of
replication; the test images are a second level.

- A cell: mean ± SD over its seeds of test R and RMSE (SD ddof=1; NaN for one seed).
- A cell's 95 % CI: a two-level (hierarchical) percentile bootstrap. Resample b
  draws the cell's seeds with replacement, then the test images with
  replacement; the statistic is the mean over the drawn seeds of R (RMSE) on the
  drawn images. The image draw of resample b is shared by every cell of a table
  (:func:`image_resamples`), so comparisons stay paired.
- ΔR against the reference: runs paired by seed and split draw (:func:`pair`);
  point estimate = the mean of the per-seed differences in test R; resample b draws
  the paired seeds (the same draw for both sides) and uses the shared image draw.
  Two-sided p = 2·min(share of Δ_b ≤ 0, share of Δ_b ≥ 0), at most 1; when no
  resample reaches 0 it is reported as an upper bound, p < 1/B. No p under
  :data:`MIN_SEEDS_TEST` paired seeds.
- With :data:`MIN_SEEDS_SIGN_FLIP` or more paired seeds, also an exact sign-flip
  permutation test of the per-seed differences (:func:`sign_flip_p`).
- A table's comparisons are Holm–Bonferroni adjusted (:func:`holm`).
- Power, normal approximation (:func:`minimum_detectable_effect`, :func:`seeds_needed`).

Every random draw comes from a stream of its own, seeded by a stable hash of what
it is for (:func:`stream`), never from one shared sequence: the same predictions
give the same intervals whatever else is computed, and in whatever order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from bmdbench import store
from bmdbench.config import stable_hash
from bmdbench.errors import DataError
from bmdbench.identity import signature
from bmdbench.metrics import METRIC_KEYS

N_RESAMPLES = 2000  # B, resamples of the hierarchical bootstrap
CONFIDENCE = 0.95
ALPHA = 0.05  # two-sided level of the power calculation
POWER = 0.8
MIN_SEEDS_TEST = 3  # paired seeds below which a comparison gets no p-value
MIN_SEEDS_SIGN_FLIP = 5  # paired seeds from which the sign-flip test is given
EXACT_SIGN_FLIP = 16  # up to 2**16 sign patterns are enumerated; beyond, 2**16 random ones
_CHUNK = 256  # resamples evaluated at once (bounds memory: chunk × seeds × images)

Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def load_runs(out: str | Path) -> pd.DataFrame:
    """One row per complete run under ``out/runs``: identity, config, metrics, status, timings.

    Columns: name, run_dir, method, backbone, preset, seed, status, error,
    config_hash, cell (:func:`bmdbench.identity.signature`), data_source, data_fingerprint,
    split_fingerprint, split_redraw, target_norm, target_mean, target_sd (of the
    labeled training targets; NaN in records older than these fields), unit, n_train
    (labeled training images), parent_run,
    selected_epoch, device, git_sha, created, ``hp.<field>`` for the method's
    hyperparameters, ``val_<metric>`` and ``test_<metric>`` for every metric key,
    the diagnostics (pseudo_rmse, pseudo_r, refreshes, ...) and the timings
    (total_s, train_s, images_per_s).
    """
    out = Path(out)
    rows = []
    for record in store.iter_records(out):
        config, data = record.config, record.data
        row: dict[str, Any] = {
            "name": record.name,
            "run_dir": str(store.runs_dir(out) / record.name),
            "method": record.method,
            "backbone": record.backbone,
            "preset": record.preset,
            "seed": record.seed,
            "status": record.status,
            "error": record.error,
            "config_hash": record.config_hash,
            "cell": signature(config),
            "data_source": data.source,
            "data_fingerprint": data.fingerprint,
            "split_fingerprint": data.split_fingerprint,
            "split_redraw": bool(config.get("split", {}).get("redraw", False)),
            "target_norm": config.get("target_norm", "none"),
            "target_mean": data.target_mean,
            "target_sd": data.target_sd,
            "unit": data.unit,
            "n_train": data.sizes.get("train", np.nan),
            "parent_run": record.parent_run,
            "selected_epoch": record.selected_epoch,
            "device": record.device,
            "git_sha": record.git_sha,
            "created": record.created,
        }
        row.update({f"hp.{k}": v for k, v in config["hparams"].items()})
        for part in ("val", "test"):
            for key in METRIC_KEYS:
                row[f"{part}_{key}"] = record.metrics.get(part, {}).get(key, np.nan)
        row.update(record.diagnostics)
        row.update(record.timings)
        rows.append(row)
    return pd.DataFrame(rows)


def cell_runs(runs: pd.DataFrame, signatures: Sequence[str]) -> pd.DataFrame:
    """The ok runs of cells with these signatures."""
    if runs.empty:
        return runs
    return runs[runs["cell"].isin(list(signatures)) & (runs["status"] == "ok")].sort_values("seed")


@dataclass(frozen=True)
class Predictions:
    """Test predictions of one cell's runs on the same images (sorted by image id)."""

    ids: np.ndarray  # (n,)
    target: np.ndarray  # (n,)
    pred: np.ndarray  # (seeds, n)
    seeds: tuple[int, ...]
    splits: tuple[str, ...] = ()  # split fingerprint per seed (empty: one shared split)

    def draws(self) -> list[tuple[int, str]]:
        """What pairs a run with another cell's: its seed and its split draw."""
        return [(s, self.splits[i] if self.splits else "") for i, s in enumerate(self.seeds)]


def read_predictions(runs: pd.DataFrame) -> Predictions:
    """The test predictions of ``runs`` (rows of :func:`load_runs`), aligned by sorted image id.

    Raises DataError when the runs were tested on different images or two runs
    share a seed and split draw (they could not be paired).
    """
    frames = [pd.read_csv(Path(d) / "predictions_test.csv") for d in runs["run_dir"]]
    ids = np.sort(frames[0]["id"].astype(str).to_numpy())
    for frame, name in zip(frames, runs["name"], strict=True):
        if not np.array_equal(np.sort(frame["id"].astype(str).to_numpy()), ids):
            raise DataError(
                f"run {name} was tested on other images than the rest of its cell",
                "compare runs of one split only (use a fresh --out per dataset)",
            )
    aligned = [f.set_index(f["id"].astype(str)).loc[list(ids)] for f in frames]
    predictions = Predictions(
        ids=ids,
        target=aligned[0]["target"].to_numpy(float),
        pred=np.stack([f["prediction"].to_numpy(float) for f in aligned]),
        seeds=tuple(int(s) for s in runs["seed"]),
        splits=tuple(str(s) for s in runs["split_fingerprint"]),
    )
    if len(set(predictions.draws())) < len(runs):
        raise DataError(
            f"two runs of one cell share a seed and split ({', '.join(runs['name'])})",
            "keep one run per seed and configuration under --out",
        )
    return predictions


# --- metrics on batches of resamples ------------------------------------------------


def pearson(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson R along the last axis (broadcasting); NaN where either side is constant."""
    t = target - target.mean(axis=-1, keepdims=True)
    p = pred - pred.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (t * p).sum(-1) / np.sqrt((t * t).sum(-1) * (p * p).sum(-1))


def rmse(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Root mean squared error along the last axis (broadcasting)."""
    return np.sqrt(np.mean((pred - target) ** 2, axis=-1))


# --- random streams and the hierarchical bootstrap ----------------------------------


def stream(*parts: object) -> np.random.Generator:
    """A random stream of its own, seeded by a stable hash of ``parts`` (their str)."""
    return np.random.default_rng(int(stable_hash([str(p) for p in parts])[:16], 16))


def image_resamples(n_images: int, key: str, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """(B, n_images) image indices drawn with replacement; one draw serves a whole table."""
    return stream("images", key, n_images).integers(0, n_images, (n_resamples, n_images))


def seed_resamples(n_seeds: int, key: str, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """(B, n_seeds) seed positions drawn with replacement."""
    return stream("seeds", key, n_seeds).integers(0, n_seeds, (n_resamples, n_seeds))


def per_seed_resampled(
    target: np.ndarray, pred: np.ndarray, image_idx: np.ndarray, metric: Metric
) -> np.ndarray:
    """``metric`` of every seed on every image resample: target (n,), pred (seeds, n),
    image_idx (B, n) → (B, seeds)."""
    out = np.empty((len(image_idx), len(pred)))
    for start in range(0, len(image_idx), _CHUNK):
        idx = image_idx[start : start + _CHUNK]
        out[start : start + len(idx)] = metric(target[idx], pred[:, idx]).T
    return out


def hierarchical_bootstrap(
    target: np.ndarray,
    pred: np.ndarray,
    seed_idx: np.ndarray,
    image_idx: np.ndarray,
    metric: Metric = pearson,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """The bootstrap distribution (B,) for explicit draws.

    Resample b is the mean over seeds ``seed_idx[b]`` (positions into ``pred``'s
    rows) of ``metric`` on images ``image_idx[b]``. With ``reference`` (seeds, n),
    row-paired with ``pred``, the statistic is the mean of the per-seed
    differences pred − reference instead. NaN where a resample is degenerate (a
    constant side, possible only with very few images).
    """
    values = per_seed_resampled(target, pred, image_idx, metric)
    if reference is not None:
        values = values - per_seed_resampled(target, reference, image_idx, metric)
    return np.take_along_axis(values, seed_idx, axis=1).mean(axis=1)


def percentile_ci(dist: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the finite resamples (NaN, NaN when there are none)."""
    finite = dist[np.isfinite(dist)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_p(dist: np.ndarray) -> tuple[float, bool]:
    """Two-sided p of "no difference" from a bootstrap distribution of a difference.

    p = 2·min(share ≤ 0, share ≥ 0) over the B finite resamples, at most 1.
    Returns (p, bound): when no resample reaches 0 the share is 0 and the p-value is
    only known to be below the bootstrap's resolution: returns (1/B, True).
    """
    finite = dist[np.isfinite(dist)]
    if finite.size == 0:
        return float("nan"), False
    p = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0)))
    if p == 0:
        return 1.0 / finite.size, True
    return float(p), False


def sign_flip_p(differences: np.ndarray) -> float:
    """Exact two-sided sign-flip permutation test of mean(differences) = 0.

    Under the null each paired difference is as likely to have either sign; p is
    the share of all 2**n sign patterns (the observed one included) whose mean is
    at least as far from 0 as the observed mean. Enumerated exactly up to
    :data:`EXACT_SIGN_FLIP` differences; beyond, from 2**EXACT_SIGN_FLIP random patterns.
    """
    d = np.asarray(differences, float)
    res = stats.permutation_test(
        (d,),
        lambda x, axis=-1: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=2**EXACT_SIGN_FLIP,
        alternative="two-sided",
        rng=stream("sign-flip", d.tobytes().hex()),
    )
    return float(res.pvalue)


def holm(p: npt.ArrayLike, bound: npt.ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Holm–Bonferroni adjusted p-values of one family of tests.

    With the m p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of
    p_(i) is max over j ≤ i of min(1, (m − j + 1)·p_(j)); each is returned in the
    input's order. ``bound`` marks p-values that are upper bounds (p < value); an
    adjusted value is an upper bound when the p that sets it is one. Returns
    (adjusted, adjusted_is_bound).
    """
    values = np.asarray(p, float)
    bounds = np.zeros(len(values), bool) if bound is None else np.asarray(bound, bool)
    m = len(values)
    adjusted, adjusted_bound = np.empty(m), np.zeros(m, bool)
    best, best_bound = 0.0, False
    for rank, i in enumerate(np.argsort(values, kind="stable")):
        value = min(1.0, (m - rank) * values[i])
        if value > best:
            best, best_bound = value, bool(bounds[i]) and value < 1.0
        elif value == best:
            best_bound = best_bound and bool(bounds[i])
        adjusted[i], adjusted_bound[i] = best, best_bound
    return adjusted, adjusted_bound


# --- power ---------------------------------------------------------------------------


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_{1−α/2} + z_{power}: 1.95996 + 0.84162 = 2.80158 at α = 0.05 and 80 % power."""
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def minimum_detectable_effect(sd_diff: float, n_seeds: int) -> float:
    """Smallest |ΔR| a two-sided paired test over ``n_seeds`` seeds detects with 80 % power
    at α = 0.05 (normal approximation): (z_{1−α/2} + z_{0.8})·SD_diff/√n."""
    return z_sum() * sd_diff / math.sqrt(n_seeds)


def seeds_needed(sd_diff: float, delta: float) -> float:
    """Seeds for 80 % power at α = 0.05 to detect ``delta``: ⌈((z_{1−α/2} + z_{0.8})·SD_diff
    / ΔR)²⌉, at least :data:`MIN_SEEDS_TEST` (no test is made below); inf for ΔR = 0,
    NaN without an SD."""
    if not np.isfinite(sd_diff):
        return float("nan")
    if delta == 0:
        return float("inf")
    return float(max(MIN_SEEDS_TEST, math.ceil((z_sum() * sd_diff / delta) ** 2)))


# --- a cell, a comparison, a table ----------------------------------------------------


@dataclass(frozen=True)
class CellStats:
    seeds: tuple[int, ...]
    r_mean: float
    r_sd: float  # NaN for a single seed
    rmse_mean: float
    rmse_sd: float
    r_ci: tuple[float, float]  # 95 %, hierarchical bootstrap
    rmse_ci: tuple[float, float]


def cell_stats(cell: Predictions, image_idx: np.ndarray, key: str) -> CellStats:
    """Mean ± SD over seeds and hierarchical-bootstrap CIs.

    ``image_idx`` (B, n): the table's shared image draws; ``key`` (the table) and the seed
    count seed the stream of seed draws, so cells with identical predictions get identical
    intervals.
    """
    per_seed_r = pearson(cell.target, cell.pred)
    per_seed_rmse = rmse(cell.target, cell.pred)
    several = len(cell.seeds) > 1
    seed_idx = seed_resamples(len(cell.seeds), key, len(image_idx))
    return CellStats(
        seeds=cell.seeds,
        r_mean=float(np.mean(per_seed_r)),
        r_sd=float(np.std(per_seed_r, ddof=1)) if several else float("nan"),
        rmse_mean=float(np.mean(per_seed_rmse)),
        rmse_sd=float(np.std(per_seed_rmse, ddof=1)) if several else float("nan"),
        r_ci=percentile_ci(
            hierarchical_bootstrap(cell.target, cell.pred, seed_idx, image_idx, pearson)
        ),
        rmse_ci=percentile_ci(
            hierarchical_bootstrap(cell.target, cell.pred, seed_idx, image_idx, rmse)
        ),
    )


def pair(cell: Predictions, reference: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the runs the two cells share, by seed and split draw, in seed order."""
    ref_rows = {draw: i for i, draw in enumerate(reference.draws())}
    # sorted by draw, that is by seed
    shared = sorted((draw, i) for i, draw in enumerate(cell.draws()) if draw in ref_rows)
    rows = np.array([i for _, i in shared], dtype=np.int64)
    return rows, np.array([ref_rows[draw] for draw, _ in shared], dtype=np.int64)


@dataclass(frozen=True)
class Comparison:
    seeds: tuple[int, ...]  # the paired seeds
    delta_r: float  # mean over paired seeds of R(cell) − R(reference), whole test set
    ci: tuple[float, float]  # 95 %, hierarchical bootstrap
    p_value: float  # two-sided, bootstrap; NaN under MIN_SEEDS_TEST paired seeds
    p_bound: bool  # True: no resample reached 0, the true p is below p_value = 1/B
    p_sign_flip: float  # exact sign-flip test; NaN under MIN_SEEDS_SIGN_FLIP paired seeds
    sd_diff: float  # SD (ddof 1) of the per-seed differences; NaN under 2 seeds
    mde: float  # minimum detectable |ΔR| at 80 % power, α = 0.05, with these seeds
    seeds_needed: float  # seeds to detect the observed ΔR so (inf when ΔR = 0)


def compare(
    cell: Predictions, reference: Predictions, image_idx: np.ndarray, key: str
) -> Comparison | None:
    """ΔR of ``cell`` against ``reference`` over their paired runs (None: none paired).

    Both must be on the same image order (as :func:`read_predictions` gives).
    """
    if not np.array_equal(cell.ids, reference.ids):
        raise DataError(
            "a cell and its reference were tested on different images",
            "compare runs of one split only (use a fresh --out per dataset)",
        )
    rows, ref_rows = pair(cell, reference)
    n = len(rows)
    if n == 0:
        return None
    pred, ref = cell.pred[rows], reference.pred[ref_rows]
    differences = pearson(cell.target, pred) - pearson(cell.target, ref)
    dist = hierarchical_bootstrap(
        cell.target,
        pred,
        seed_resamples(n, key, len(image_idx)),
        image_idx,
        pearson,
        reference=ref,
    )
    p, bound = bootstrap_p(dist) if n >= MIN_SEEDS_TEST else (float("nan"), False)
    sd = float(np.std(differences, ddof=1)) if n > 1 else float("nan")
    delta = float(np.mean(differences))
    return Comparison(
        seeds=tuple(cell.seeds[i] for i in rows),
        delta_r=delta,
        ci=percentile_ci(dist),
        p_value=p,
        p_bound=bound,
        p_sign_flip=sign_flip_p(differences) if n >= MIN_SEEDS_SIGN_FLIP else float("nan"),
        sd_diff=sd,
        mde=minimum_detectable_effect(sd, n),
        seeds_needed=seeds_needed(sd, delta),
    )


STAT_COLUMNS = (
    "seeds",  # ok runs in the cell
    "r_mean",
    "r_sd",
    "rmse_mean",
    "rmse_sd",
    "r_ci_low",
    "r_ci_high",
    "rmse_ci_low",
    "rmse_ci_high",
    "paired_seeds",  # runs paired with the reference's (by seed and split draw)
    "delta_r",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",  # bootstrap, raw
    "p_bound",  # p_value is an upper bound (1/B): no resample reached 0
    "p_holm",  # Holm-adjusted over the table's comparisons that have a p
    "p_holm_bound",
    "p_sign_flip",  # exact sign-flip test (>= 5 paired seeds), raw
    "p_sign_flip_holm",
    "sd_diff",
    "mde",
    "seeds_needed",
    "stage2",  # the cell's runs fine-tune a stage-1 parent
    "n_selected_stage1",  # of those, runs that selected their stage-1 weights (epoch 0)
)


def table_stats(
    scope: str,
    frames: Sequence[pd.DataFrame],
    reference: int,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """The statistics of a table's cells: one row per frame of runs, :data:`STAT_COLUMNS`.

    ``frames[i]``: the ok runs of cell i (rows of :func:`load_runs`; may be empty);
    ``frames[reference]`` is the cell every other is compared with. ``scope`` (the
    table's name), the test image ids and the seed count seed the random streams. All runs must have
    been tested on the same images.
    """
    predictions = [read_predictions(f) if len(f) else None for f in frames]
    present = [p for p in predictions if p is not None]
    image_idx = np.empty((n_resamples, 0), dtype=np.int64)
    if present:
        ids = present[0].ids
        if any(not np.array_equal(p.ids, ids) for p in present):
            raise DataError(
                f"the cells of {scope} were tested on different images",
                "compare runs of one split only (use a fresh --out per dataset)",
            )
        image_idx = image_resamples(len(ids), f"{scope}|{stable_hash(ids.tolist())}", n_resamples)
    ref = predictions[reference]
    rows = []
    for i, (frame, cell) in enumerate(zip(frames, predictions, strict=True)):
        row: dict[str, Any] = dict.fromkeys(STAT_COLUMNS, np.nan)
        row.update(seeds=len(frame), p_bound=False, **_stage1_kept(frame))
        if cell is not None:
            st = cell_stats(cell, image_idx, scope)
            row.update(
                r_mean=st.r_mean,
                r_sd=st.r_sd,
                rmse_mean=st.rmse_mean,
                rmse_sd=st.rmse_sd,
                r_ci_low=st.r_ci[0],
                r_ci_high=st.r_ci[1],
                rmse_ci_low=st.rmse_ci[0],
                rmse_ci_high=st.rmse_ci[1],
            )
        if i != reference and cell is not None and ref is not None:
            cmp = compare(cell, ref, image_idx, scope)
            row["paired_seeds"] = len(cmp.seeds) if cmp else 0
            if cmp is not None:
                row.update(
                    delta_r=cmp.delta_r,
                    delta_ci_low=cmp.ci[0],
                    delta_ci_high=cmp.ci[1],
                    p_value=cmp.p_value,
                    p_bound=cmp.p_bound,
                    p_sign_flip=cmp.p_sign_flip,
                    sd_diff=cmp.sd_diff,
                    mde=cmp.mde,
                    seeds_needed=cmp.seeds_needed,
                )
        rows.append(row)
    tidy = pd.DataFrame(rows, columns=list(STAT_COLUMNS))
    tidy["p_holm_bound"] = False
    tested = tidy["p_value"].notna()
    adjusted, adjusted_bound = holm(tidy.loc[tested, "p_value"], tidy.loc[tested, "p_bound"])
    tidy.loc[tested, "p_holm"] = adjusted
    tidy.loc[tested, "p_holm_bound"] = adjusted_bound
    flipped = tidy["p_sign_flip"].notna()
    tidy.loc[flipped, "p_sign_flip_holm"] = holm(tidy.loc[flipped, "p_sign_flip"])[0]
    return tidy.astype({"p_bound": bool, "p_holm_bound": bool, "stage2": bool})


def _stage1_kept(frame: pd.DataFrame) -> dict[str, Any]:
    """Whether the cell is stage 2, and how many of its runs selected the stage-1 weights."""
    if frame.empty:
        return {"stage2": False, "n_selected_stage1": 0}
    stage2 = frame["parent_run"].notna()
    kept = stage2 & (frame["selected_epoch"] == 0)
    return {"stage2": bool(stage2.any()), "n_selected_stage1": int(kept.sum())}


def raw_triplet_scale(
    weight: float, margin: float, target_sd: float, adaptive: bool
) -> tuple[float, float]:
    """The raw-target-scale (λ, m) equivalent to a triplet term trained on z-scored targets.

    With z = (y − μ)/σ (σ the SD of the labeled training targets), the loss is
    MSE_z + λ·T_z with T_z = mean[‖Fa−Fn‖² − ‖Fa−Ff‖² + α_z·m]₊ (methods/losses.py
    ``triplet_loss``). Squared errors scale with σ²: MSE_z = MSE_raw/σ². The
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
