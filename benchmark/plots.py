"""Figures of one run: predicted vs true (the paper's Figure 2), Bland–Altman, learning curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bmdbench import store
from bmdbench.metrics import regression_metrics
from bmdbench.results import read_run


def plot_run(run_dir: Path, out: Path) -> list[Path]:
    """Write ``scatter``, ``bland_altman`` and ``learning_curve`` as PNG and PDF into ``out``.

    What is plotted is read and checked first (a finished run, test predictions, a
    non-empty epoch log): a run that cannot be plotted is a :class:`DataError` and nothing
    is written; a write that fails removes the figures written so far (:class:`OutputError`).
    """
    record, test, epochs = read_run(run_dir)
    unit = record.data.unit
    title = f"{record.method} · {record.backbone} · {record.preset} · seed {record.seed}"
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, draw in (
            ("scatter", _scatter),
            ("bland_altman", _bland_altman),
            ("learning_curve", _learning_curve),
        ):
            fig, ax = plt.subplots(figsize=(4.2, 4.0), layout="constrained")
            draw(ax, test, epochs, unit)
            ax.set_title(title, fontsize=8)
            try:
                for ext in ("png", "pdf"):
                    path = out / f"{name}.{ext}"
                    written.append(path)
                    fig.savefig(path, dpi=150)
            finally:
                plt.close(fig)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise store.write_failed(exc, written[-1] if written else out) from exc
    return written


def _scatter(ax: plt.Axes, test: pd.DataFrame, epochs: list[dict], unit: str) -> None:
    target, pred = test["target"].to_numpy(float), test["prediction"].to_numpy(float)
    m = regression_metrics(target, pred)
    lo, hi = min(target.min(), pred.min()), max(target.max(), pred.max())
    ax.scatter(target, pred, s=8, alpha=0.6)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set_xlabel(f"true ({unit})" if unit else "true")
    ax.set_ylabel(f"predicted ({unit})" if unit else "predicted")
    ax.text(
        0.04,
        0.96,
        f"R = {m['pearson_r']:.4f}\nRMSE = {m['rmse']:.4f}",
        transform=ax.transAxes,
        va="top",
    )
    ax.legend(loc="lower right", fontsize=8)


def _bland_altman(ax: plt.Axes, test: pd.DataFrame, epochs: list[dict], unit: str) -> None:
    target, pred = test["target"].to_numpy(float), test["prediction"].to_numpy(float)
    m = regression_metrics(target, pred)
    ax.scatter((target + pred) / 2, pred - target, s=8, alpha=0.6)
    for value, style in ((m["ba_bias"], "-"), (m["ba_loa_low"], "--"), (m["ba_loa_high"], "--")):
        ax.axhline(value, color="k", ls=style, lw=1)
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel("mean of predicted and true" + suffix)
    ax.set_ylabel("predicted − true" + suffix)


def _learning_curve(ax: plt.Axes, test: pd.DataFrame, epochs: list[dict], unit: str) -> None:
    x = [e["epoch"] for e in epochs]
    (loss,) = ax.plot(x, [e["loss_loss"] for e in epochs], marker=".", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    twin = ax.twinx()
    (val,) = twin.plot(
        x, [e["val_pearson_r"] for e in epochs], color="C1", marker=".", label="validation R"
    )
    twin.set_ylabel("validation R")
    best = max(
        epochs, key=lambda e: e["val_pearson_r"] if np.isfinite(e["val_pearson_r"]) else -np.inf
    )
    twin.axvline(best["epoch"], color="C1", ls=":", lw=1)
    ax.legend(handles=[loss, val], loc="center right", fontsize=8)
