"""The results store read for reports: its runs as one DataFrame, a cell's runs, their test
predictions, the preset they share, one run's figure data.

Torch-free and statistics-free: what the store holds, as the records and prediction files
say it (:mod:`bmdbench.store` reads and writes the files themselves);
:mod:`bmdbench.statistics` computes on it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bmdbench import store
from bmdbench.errors import ConfigError, DataError
from bmdbench.identity import signature
from bmdbench.metrics import METRIC_KEYS
from bmdbench.record import RunRecord


def load_runs(out: str | Path, unit: str = "") -> pd.DataFrame:
    """One row per complete run under ``out/runs``: identity, config, metrics, status, timings.

    ``unit`` names the targets' unit of the runs whose records name none (their manifest
    had no ``unit`` column: ``bmdbench table --unit months``); a record's own unit stays.

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
            "unit": data.unit or unit,
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

    ids: np.ndarray  # (n,) image ids
    patients: np.ndarray  # (n,) patient id of each image (resampled together)
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


def read_run(run_dir: Path) -> tuple[RunRecord, pd.DataFrame, list[dict]]:
    """The record, test predictions and epoch log of one finished run (a figure's data),
    checked: a run without them is a :class:`DataError`."""
    record = store.read_record(run_dir)
    if record is None or not record.ok:
        raise DataError(
            f"{run_dir} is not a finished run (no record.json with status ok)",
            "give the directory of a finished run, as printed by bmdbench run",
        )
    fix = "plot another run, or run this one again (its files are incomplete)"
    try:
        test = pd.read_csv(run_dir / "predictions_test.csv")
        lines = (run_dir / "epochs.jsonl").read_text().splitlines()
        epochs = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:  # missing, unreadable or not CSV / JSON lines
        what = f"cannot read the predictions and epoch log of {run_dir} ({exc})"
        raise DataError(what, fix) from None
    if not {"target", "prediction"} <= set(test.columns) or len(test) < 2:
        raise DataError(f"{run_dir / 'predictions_test.csv'} holds no test predictions", fix)
    if not epochs or not all({"epoch", "loss_loss", "val_pearson_r"} <= set(e) for e in epochs):
        raise DataError(f"{run_dir / 'epochs.jsonl'} holds no epochs to plot", fix)
    return record, test, epochs


def store_preset(out: Path) -> str:
    """The preset of the runs under ``out`` (``bmdbench table`` without ``--preset``); a
    :class:`ConfigError` when the store has no run, or runs of several presets."""
    presets = sorted({record.preset for record in store.iter_records(out)})
    if not presets:
        raise ConfigError(
            f"no finished runs under {out / 'runs'}",
            "run bmdbench grid (or run) with this --out first, or give the --out it used",
        )
    if len(presets) > 1:
        raise ConfigError(
            f"the runs under {out / 'runs'} are of several presets ({', '.join(presets)})",
            f"give --preset, one of: {', '.join(presets)}",
        )
    return presets[0]
