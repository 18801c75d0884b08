"""The report of a label-budget curve (Oliver et al., 2018): each method at several numbers
of labels.

``bmdbench grid labels --methods ... --n-labeled 50,100,200 --seeds 3`` runs every method at
every budget (``split.train``) over the seeds, and one fully supervised ceiling: the baseline
with every labeled training image (the cells: :func:`bmdbench.experiments.budget_cells`).
``bmdbench table labels`` with the same options writes the table (budgets × methods: R and
RMSE mean ± SD over seeds, R's CI, ΔR against the baseline at the same budget,
Holm-adjusted within that budget) and the figure (R and RMSE against the number of labels, log scale, one line per method, 95 % CI
bands, the ceiling as a dashed line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bmdbench.errors import DataError
from bmdbench.experiments import (
    CEILING,
    REFERENCE,
    budget_cells,
    control_of,
    methods_with_reference,
)
from bmdbench.rendering import (
    csv_table,
    data_name,
    data_words,
    file_stem,
    format_cells,
    write_frame,
    write_text,
)
from bmdbench.results import cell_runs, load_runs
from bmdbench.spec import RunSpec
from bmdbench.statistics import N_RESAMPLES, table_stats


def budget_stats(
    runs: pd.DataFrame,
    methods: Sequence[str],
    budgets: Sequence[float],
    sets: dict[str, str],
    base: RunSpec,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """One row per (budget, method) and the ceiling's: ``budget`` (the count, or
    :data:`~bmdbench.experiments.CEILING`), ``n_labeled`` (labeled training images the runs saw), ``method``,
    ``control`` (the method its ΔR vs control is against, "" for none), then
    :data:`bmdbench.statistics.STAT_COLUMNS`; ΔR against the baseline and against the control
    of the same budget. The whole curve is one Holm family ("labels")."""
    order = methods_with_reference(methods, base)
    controls = {m: control_of(m, base) or "" for m in order}
    keys: list[tuple[str, str]] = []
    frames = []
    for budget in [*budgets, None]:
        group = order if budget is not None else [REFERENCE]
        extra = {} if budget is None else {"split.train": budget}
        label = CEILING if budget is None else f"{budget:g}"
        for method in group:
            spec = base.but(method=method, settings={**sets, **extra})
            keys.append((label, method))
            frames.append(cell_runs(runs, [spec.signature]))
    references: dict[str, list[int | None]] = {
        "base": [keys.index((label, REFERENCE)) for label, _ in keys],
        "control": [
            keys.index((label, controls[m])) if controls.get(m) else None for label, m in keys
        ],
    }
    tidy = table_stats("labels", frames, references, n_resamples=n_resamples)
    tidy.insert(0, "control", [controls.get(m, "") for _, m in keys])
    tidy.insert(0, "label", [m for _, m in keys])
    tidy.insert(0, "method", [m for _, m in keys])
    tidy.insert(0, "n_labeled", [_n_labeled(f) for f in frames])
    tidy.insert(0, "budget", [label for label, _ in keys])
    return tidy


def _n_labeled(frame: pd.DataFrame) -> float:
    if frame.empty:
        return np.nan
    sizes = frame["n_train"].dropna().unique()
    return float(sizes[0]) if len(sizes) == 1 else np.nan


@dataclass(frozen=True)
class BudgetTable:
    """A label-budget curve's table: ``frame`` (strings in ``style``), its ``title`` and
    ``footer``, the ``tidy`` statistics behind it and the targets' ``unit``."""

    frame: pd.DataFrame
    title: str
    footer: str
    tidy: pd.DataFrame
    unit: str


def budget_table(
    runs: pd.DataFrame,
    methods: Sequence[str],
    budgets: Sequence[float],
    sets: dict[str, str],
    base: RunSpec,
    style: str = "md",
) -> BudgetTable:
    """The table of a label-budget grid from ``runs``; a grid none of whose runs is there is
    a :class:`DataError`."""
    tidy = budget_stats(runs, methods, budgets, sets, base)
    if tidy["seeds"].sum() == 0:
        raise DataError(
            "no finished run of this label-budget grid is in the store",
            "run bmdbench grid labels with the same options first (and the same --out)",
        )
    frame = format_cells(tidy, REFERENCE, style)
    frame.index = pd.Index(
        [f"{b} · {m}" for b, m in zip(tidy["budget"], tidy["method"], strict=True)],
        name="labels · method",
    )
    used = runs[
        runs["cell"].isin([s.signature for s in budget_cells(methods, budgets, 1, sets, base)])
    ]
    unit = str(used["unit"].iloc[0]) if len(used) else ""
    fingerprint = str(used["data_fingerprint"].iloc[0]) if len(used) else ""
    footer = (
        f"Data {data_name(base.data)} ({data_words(fingerprint, unit)}), preset {base.preset}, "
        f"up to {int(tidy['seeds'].max())} "
        "seeds per cell; 'all': the baseline with every labeled training image. CIs and p: "
        "per-seed values with a two-level standard error (seeds, and test patients by a "
        f"bootstrap over patients, B = {N_RESAMPLES}), Student's t with n − 1 degrees of "
        "freedom. ΔR against the baseline and against the equal-compute supervised control "
        "of the method's parent, both at the same budget, paired by seed; Holm family "
        "'labels': every comparison of the curve, per kind. Bold ΔR: Holm p < 0.05. "
        "Measured with bmdbench grid labels."
    )
    title = "Test R by number of labeled training images (mean ± SD over seeds)"
    return BudgetTable(frame, title, footer, tidy, unit)


def publish(
    out: Path,
    methods: Sequence[str],
    budgets: Sequence[float],
    sets: dict[str, str],
    base: RunSpec,
    formats: Sequence[str],
    unit: str = "",
) -> list[Path]:
    """``bmdbench table labels``: the table in each of ``formats`` (``out/tables/labels.*``,
    ``labels-<data>.*`` on a manifest; the CSV is the tidy form) and the figure
    (``out/figures/`` under the same name, png and pdf); ``unit`` as in
    :func:`bmdbench.results.load_runs`."""
    table = budget_table(load_runs(out, unit), methods, budgets, sets, base)
    stem = file_stem("labels", base.data)
    tables = out / "tables"
    written = [
        write_frame(table.frame, table.title, table.footer, stem, f, tables)
        for f in formats
        if f != "csv"
    ]
    if "csv" in formats:  # the tidy form, for scripts
        written.append(write_text(csv_table(table.tidy, table.footer), stem, "csv", tables))
    figure = budget_figure(table.tidy, table.unit)
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        figure.savefig(folder / f"{stem}.{ext}", dpi=150)
        written.append(folder / f"{stem}.{ext}")
    plt.close(figure)
    return written


def budget_figure(tidy: pd.DataFrame, unit: str) -> Figure:
    """R and RMSE against the number of labels (log x), one line per method with its 95 % CI
    band; the ceiling (every label) as a dashed line with its band."""
    curves = tidy[tidy["budget"] != CEILING]
    ceiling = tidy[tidy["budget"] == CEILING].iloc[0]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "r", "test Pearson R"), (axes[1], "rmse", "test RMSE")):
        for method, rows in curves.groupby("method", sort=False):
            x = rows["n_labeled"].where(rows["n_labeled"].notna(), rows["budget"].astype(float))
            ax.plot(x, rows[f"{metric}_mean"], marker="o", label=method)
            ax.fill_between(x, rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"], alpha=0.2)
        if ceiling["seeds"] > 0:
            ax.axhline(ceiling[f"{metric}_mean"], color="k", ls="--", label="all labels")
            ax.axhspan(
                ceiling[f"{metric}_ci_low"], ceiling[f"{metric}_ci_high"], color="k", alpha=0.08
            )
        ax.set_xscale("log")
        ticks = sorted(curves["n_labeled"].dropna().unique()) or sorted(
            curves["budget"].astype(float).unique()
        )
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labeled training images")
        ax.set_ylabel(label + (f" ({unit})" if metric == "rmse" and unit else ""))
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure
