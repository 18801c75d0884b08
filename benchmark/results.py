"""The results store as a DataFrame, and the statistics of a table's cells.

A table's cells are compared with up to two references each (:func:`table_stats`): its
control (the equal-compute supervised control of its stage-1 parent: the gain from
unlabeled data) and the table's baseline. The inference is :mod:`bmdbench.statistics`;
the Holm adjustment runs over a whole family of comparisons (:func:`adjust`), which a
table may share with others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bmdbench import store
from bmdbench.config import stable_hash
from bmdbench.errors import DataError
from bmdbench.identity import signature
from bmdbench.metrics import METRIC_KEYS
from bmdbench.statistics import (
    N_RESAMPLES,
    Predictions,
    cell_stats,
    compare,
    holm,
    patient_weights,
)

KINDS = ("control", "base")  # the references a cell is compared with: its control, the baseline


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
    first = aligned[0]
    predictions = Predictions(
        ids=ids,
        # records written before predictions named patients: each image its own patient
        patients=(first["patient"] if "patient" in first else first.index).astype(str).to_numpy(),
        target=first["target"].to_numpy(float),
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


STAT_COLUMNS = (
    "seeds",  # ok runs in the cell
    "r_mean",
    "r_sd",
    "r_ci_low",  # 95 %, two-level (seeds, then test patients): bmdbench.statistics
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

    ``frames[i]``: the ok runs of cell i (rows of :func:`load_runs`; may be empty).
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
