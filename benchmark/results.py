"""The results store as a DataFrame, and the statistics of a table cell over seeds.

Statistics of a cell (the runs of one config over several seeds, scored on the
same test images):

- mean ± SD over seeds of test R and RMSE (SD with ddof=1; "—" for one seed);
- a 95 % percentile bootstrap CI (``scipy.stats.bootstrap``, 2,000 resamples)
  over *test images*: each resample draws images with replacement, the same
  images for every seed, and the statistic is the seed-mean R (or RMSE) on
  them — the CI says how much the number depends on which patients were tested;
- against the table's reference cell, a paired bootstrap of the difference in
  seed-mean R on the same resampled images; the two-sided p-value is twice the
  smaller share of resampled differences on either side of zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bmdbench import store
from bmdbench.config import stable_hash
from bmdbench.errors import DataError
from bmdbench.metrics import METRIC_KEYS

N_RESAMPLES = 2000
CONFIDENCE = 0.95


def signature(config: dict[str, Any]) -> str:
    """What the runs of one cell share: the resolved config without seed and device."""
    stripped = {k: v for k, v in config.items() if k not in ("seed", "device")}
    if stripped.get("parent") is not None:
        stripped["parent"] = {
            k: v for k, v in stripped["parent"].items() if k not in ("seed", "device")
        }
    return stable_hash(stripped)[:16]


def load_runs(out: str | Path) -> pd.DataFrame:
    """One row per complete run under ``out/runs``: identity, config, metrics, status, timings.

    Columns: name, run_dir, method, backbone, preset, seed, status, error,
    config_hash, cell (see :func:`signature`), data_source, data_fingerprint,
    split_fingerprint, parent_run, selected_epoch, device, git_sha, created,
    ``hp.<field>`` for the method's hyperparameters, ``val_<metric>`` and
    ``test_<metric>`` for every metric key, the diagnostics (pseudo_rmse,
    pseudo_r, refreshes, ...) and the timings (total_s, train_s, images_per_s).
    """
    out = Path(out)
    rows = []
    for record in store.iter_records(out):
        row: dict[str, Any] = {
            "name": record["name"],
            "run_dir": str(store.runs_dir(out) / record["name"]),
            "method": record["method"],
            "backbone": record["backbone"],
            "preset": record["preset"],
            "seed": record["seed"],
            "status": record["status"],
            "error": record.get("error"),
            "config_hash": record["config_hash"],
            "cell": signature(record["config"]),
            "data_source": record["data"]["source"],
            "data_fingerprint": record["data"]["fingerprint"],
            "split_fingerprint": record["data"]["split_fingerprint"],
            "parent_run": record.get("parent_run"),
            "selected_epoch": record.get("selected_epoch"),
            "device": record["device"],
            "git_sha": record["git_sha"],
            "created": record["created"],
        }
        row.update({f"hp.{k}": v for k, v in record["config"]["hparams"].items()})
        metrics = record.get("metrics") or {}
        for part in ("val", "test"):
            for key in METRIC_KEYS:
                row[f"{part}_{key}"] = (metrics.get(part) or {}).get(key, np.nan)
        row.update(record.get("diagnostics") or {})
        row.update(record.get("timings") or {})
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Predictions:
    """Test predictions of one cell's runs on the same images."""

    ids: np.ndarray  # (n,)
    target: np.ndarray  # (n,)
    pred: np.ndarray  # (seeds, n)
    seeds: tuple[int, ...]


def read_predictions(runs: pd.DataFrame) -> Predictions:
    """The test predictions of ``runs`` (rows of :func:`load_runs`), aligned by image id."""
    frames = [pd.read_csv(Path(d) / "predictions_test.csv") for d in runs["run_dir"]]
    ids = frames[0]["id"].astype(str).to_numpy()
    for frame, name in zip(frames, runs["name"], strict=True):
        if sorted(frame["id"].astype(str)) != sorted(ids):
            raise DataError(
                f"run {name} was tested on other images than the rest of its cell",
                "compare runs of one split only (use a fresh --out per dataset)",
            )
    aligned = [f.set_index(f["id"].astype(str)).loc[list(ids)] for f in frames]
    return Predictions(
        ids=ids,
        target=aligned[0]["target"].to_numpy(float),
        pred=np.stack([f["prediction"].to_numpy(float) for f in aligned]),
        seeds=tuple(int(s) for s in runs["seed"]),
    )


def _pearson(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson R along the last axis (broadcasting), for bootstrap batches."""
    t = target - target.mean(axis=-1, keepdims=True)
    p = pred - pred.mean(axis=-1, keepdims=True)
    return (t * p).sum(-1) / np.sqrt((t * t).sum(-1) * (p * p).sum(-1))


def _mean_r(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Seed-mean R: ``target`` (..., n), ``pred`` (seeds, ..., n) → (...)."""
    return _pearson(target, pred).mean(axis=0)


def _mean_rmse(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((pred - target) ** 2, axis=-1)).mean(axis=0)


@dataclass(frozen=True)
class CellStats:
    seeds: tuple[int, ...]
    r_mean: float
    r_sd: float  # NaN for a single seed
    rmse_mean: float
    rmse_sd: float
    r_ci: tuple[float, float]
    rmse_ci: tuple[float, float]
    delta_r: float | None = None  # seed-mean R minus the reference's (None for the reference)
    p_value: float | None = None


def cell_stats(cell: Predictions, reference: Predictions | None = None) -> CellStats:
    """Mean ± SD over seeds, bootstrap CIs over test images, and the paired test."""
    rng = np.random.default_rng(0)
    index = (np.arange(cell.target.size),)
    per_seed_r = _pearson(cell.target, cell.pred)
    per_seed_rmse = np.sqrt(np.mean((cell.pred - cell.target) ** 2, axis=1))
    ddof = 1 if len(per_seed_r) > 1 else 0
    sd_r = float(np.std(per_seed_r, ddof=ddof)) if ddof else float("nan")
    sd_rmse = float(np.std(per_seed_rmse, ddof=ddof)) if ddof else float("nan")

    def ci(statistic: Any) -> tuple[float, float]:
        res = stats.bootstrap(
            index,
            lambda i, axis=-1: statistic(cell.target[i], cell.pred[:, i]),
            n_resamples=N_RESAMPLES,
            confidence_level=CONFIDENCE,
            method="percentile",
            vectorized=True,
            rng=rng,
        )
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    delta = p = None
    if reference is not None:
        if not np.array_equal(np.sort(reference.ids), np.sort(cell.ids)):
            raise DataError(
                "a cell and its reference were tested on different images",
                "compare runs of one split only (use a fresh --out per dataset)",
            )
        ref = reference.pred[:, pd.Index(reference.ids).get_indexer(cell.ids)]

        def difference(i: np.ndarray, axis: int = -1) -> np.ndarray:
            t = cell.target[i]
            return _mean_r(t, cell.pred[:, i]) - _mean_r(t, ref[:, i])

        res = stats.bootstrap(
            index,
            difference,
            n_resamples=N_RESAMPLES,
            method="percentile",
            vectorized=True,
            rng=rng,
        )
        dist = res.bootstrap_distribution
        delta = float(difference(index[0]))
        p = float(min(1.0, 2 * min(np.mean(dist <= 0), np.mean(dist >= 0))))
    return CellStats(
        seeds=cell.seeds,
        r_mean=float(np.mean(per_seed_r)),
        r_sd=sd_r,
        rmse_mean=float(np.mean(per_seed_rmse)),
        rmse_sd=sd_rmse,
        r_ci=ci(_mean_r),
        rmse_ci=ci(_mean_rmse),
        delta_r=delta,
        p_value=p,
    )


def cell_runs(runs: pd.DataFrame, signatures: Sequence[str]) -> pd.DataFrame:
    """The ok runs of cells with these signatures."""
    if runs.empty:
        return runs
    return runs[runs["cell"].isin(list(signatures)) & (runs["status"] == "ok")].sort_values("seed")
