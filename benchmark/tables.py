"""The paper's tables from the results store: measured cells beside the paper's values.

Markdown and LaTeX keep the paper's layout (Tables 1–2: cells as columns;
Table 3: margins as rows, one column group per loss; Table 4 and sota: cells as rows).
Per cell: R and RMSE as mean ± SD over seeds, the mean test bias, R's 95 % CI; for a
stage-2 cell its ΔR against its control (the equal-compute supervised control of its
parent: the gain from the unlabeled images) and, for every cell, its ΔR against the table's
reference, each with its CI and Holm-adjusted p (bold only where that p is below α); the
pseudo-label refreshes where a method refreshes; the seed count, how many seeds of a
stage-2 cell kept their stage-1 weights (``†`` when all did); the paper's values beside
data of the paper's kind (BMD in g/cm²); Table 3 on z-scored targets adds the raw-scale λ
and m. Statistics: :mod:`bmdbench.statistics`, over the table's Holm family
(:func:`bmdbench.experiments.family`). The footer lines name the data (file name and
fingerprint), preset, seeds, device and git sha, the statistics and family, the power, and
the footnotes. The CSV is the tidy form: one row per cell with plain numbers, for scripts.
How each is printed: :mod:`bmdbench.rendering`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from bmdbench.errors import BmdWarning, ConfigError, DataError
from bmdbench.experiments import (
    METHOD_TABLES,
    TABLES,
    PaperTable,
    TableCell,
    cells_for,
    family,
    select,
)
from bmdbench.rendering import (
    FORMATS,
    csv_table,
    data_name,
    data_words,
    file_stem,
    format_cells,
    format_number,
    latex_table,
    markdown_table,
    rich_table,
    write_text,
)
from bmdbench.results import cell_runs, load_runs
from bmdbench.spec import RunSpec
from bmdbench.statistics import ALPHA, MIN_SEEDS_TEST, N_RESAMPLES, POWER, table_stats

PAPER_UNIT = "g/cm²"  # the paper's values are BMD: shown only beside targets in this unit


@dataclass(frozen=True)
class TableData:
    table: PaperTable
    tidy: pd.DataFrame  # one row per table cell (numbers; NaN where no run is finished)
    footer: str  # lines separated by "\n"
    family: str  # the Holm family the table's comparisons belong to
    unit: str  # the targets' unit ("" when the data does not say)


def build(
    table: PaperTable,
    runs: pd.DataFrame,
    signatures: Mapping[TableCell, str],
    n_resamples: int = N_RESAMPLES,
) -> TableData:
    """Statistics for every cell of ``table``, computed over its whole Holm family
    (:func:`bmdbench.experiments.family`); ``signatures`` names the runs of every cell of
    that family."""
    name, cells = family(table)
    selected = [cell_runs(runs, [signatures[tc]]) for tc in cells]
    for tc, frame in zip(cells, selected, strict=True):
        if len(frame) and frame["data_fingerprint"].nunique() > 1:
            raise DataError(
                f"the runs of {table.name} cell {tc.label!r} saw different data",
                "keep one dataset per --out folder",
            )
    labels = [tc.label for tc in cells]
    reference = next(i for i, tc in enumerate(cells) if tc.label == table.reference)
    references: dict[str, list[int | None]] = {
        "base": [reference] * len(cells),
        "control": [labels.index(tc.control) if tc.control else None for tc in cells],
    }
    family_tidy = table_stats(name, selected, references, n_resamples)
    rows = [cells.index(tc) for tc in table.cells]
    head = pd.DataFrame(
        {
            "label": [tc.label for tc in table.cells],
            "group": [tc.group for tc in table.cells],
            "method": [tc.method for tc in table.cells],
            "control": [tc.control or "" for tc in table.cells],
        }
    )
    statistics = family_tidy.iloc[rows].reset_index(drop=True)
    table_frames = [selected[i] for i in rows]
    scale = pd.DataFrame(
        [_raw_scale(f, tc.method) for tc, f in zip(table.cells, table_frames, strict=True)],
        columns=["target_sd", "lambda_raw", "margin_raw"],
    )
    shown = (
        pd.concat([f for f in table_frames if len(f)])
        if any(map(len, table_frames))
        else runs.head(0)
    )
    unit = _unit(shown)
    paper = pd.DataFrame(
        {
            "paper_r": [tc.paper_r if unit == PAPER_UNIT else None for tc in table.cells],
            "paper_rmse": [tc.paper_rmse if unit == PAPER_UNIT else None for tc in table.cells],
        },
        dtype=float,
    )
    tidy = pd.concat([head, statistics, scale, paper], axis=1)
    family_size = {
        kind: int(family_tidy[f"{kind}_p"].notna().sum()) for kind in ("control", "base")
    }
    footer = _footer(shown, table, tidy, name, family_size, unit)
    return TableData(table, tidy, footer, name, unit)


def _unit(runs: pd.DataFrame) -> str:
    units = {str(u) for u in runs.get("unit", pd.Series(dtype=str)).dropna() if str(u)}
    return units.pop() if len(units) == 1 else ""


def _raw_scale(frame: pd.DataFrame, method: str) -> tuple[float, float, float]:
    """(σ, λ_raw, m_raw) of a cell, means over its runs; NaN λ/m unless its runs trained
    a triplet term on z-scored targets (as the method converts it: ``Method.raw_scale``)."""
    if frame.empty or "target_sd" not in frame:
        return (np.nan, np.nan, np.nan)
    sd = float(frame["target_sd"].mean())
    if not (frame["target_norm"] == "zscore").all():
        return (sd, np.nan, np.nan)
    from bmdbench.methods import METHODS  # torch: only for a table of z-scored runs

    convert = METHODS.get(method).raw_scale
    raw = [
        convert({str(k)[3:]: v for k, v in run.items() if str(k).startswith("hp.")}, sd_run)
        for run, sd_run in zip(frame.to_dict("records"), frame["target_sd"], strict=True)
    ]
    scaled = [r for r in raw if r is not None]
    if len(scaled) < len(raw):
        return (sd, np.nan, np.nan)
    return (sd, float(np.mean([r[0] for r in scaled])), float(np.mean([r[1] for r in scaled])))


def _cell_name(row: pd.Series, table: PaperTable) -> str:
    grouped = table.layout == "groups" and row["group"] != "Baseline"
    return f"{row['group']} {row['label']}" if grouped else str(row["label"])


def _footer(
    runs: pd.DataFrame,
    table: PaperTable,
    tidy: pd.DataFrame,
    family_name: str,
    family_size: Mapping[str, int],
    unit: str,
) -> str:
    if runs.empty:
        return "Measured: no finished runs yet. Paper: Zheng et al., MICCAI 2021 (in-house hip X-rays)."

    def join(column: str) -> str:
        return ", ".join(sorted({str(v) for v in runs[column]}))

    seeds = sorted({int(s) for s in runs["seed"]})
    redraw = bool(runs["split_redraw"].any()) if "split_redraw" in runs else False
    draw = (
        "labeled subset redrawn per seed (and the validation split; test set fixed)"
        if redraw
        else "labeled subset fixed across seeds"
    )
    sources = ", ".join(sorted({data_name(str(v)) for v in runs["data_source"]}))
    paper = (
        "Paper: Zheng et al., MICCAI 2021 (in-house hip X-rays, not this data)."
        if unit == PAPER_UNIT
        else "The paper's values (hip BMD) are not shown beside data of another kind."
    )
    lines = [
        f"Measured on {sources} ({data_words(join('data_fingerprint'), unit)}), preset "
        f"{join('preset')}, seeds "
        f"{', '.join(map(str, seeds))}, device {join('device')}, git "
        f"{', '.join(_short_sha(s) for s in sorted(set(runs['git_sha'])))}; {draw}. {paper}",
        _statistics_line(table, family_name, family_size, redraw),
        _power_line(tidy, table),
        *_pairing_lines(tidy, table),
    ]
    if table.name in METHOD_TABLES and (line := _hyperparameters_line(runs, table)):
        lines.append(line)
    kept = tidy["stage2"] & (tidy["n_selected_stage1"] == tidy["seeds"]) & (tidy["seeds"] > 0)
    if kept.any():
        lines.append(
            "† every seed kept its stage-1 weights (selected epoch 0): stage 2 changed nothing."
        )
    if table.raw_scale and tidy["lambda_raw"].notna().any():
        sd = tidy["target_sd"][tidy["lambda_raw"].notna()].mean()
        lines.append(
            "Margins are on the z-scored target scale, not the paper's: λ raw = λσ² and "
            "m raw = m/σ² (ATL; the plain triplet margin has no target units, m raw = m) give "
            f"the same loss on raw targets, σ = {sd:.4g} the SD of the labeled training targets."
        )
    return "\n".join(lines)


def _hyperparameters_line(runs: pd.DataFrame, table: PaperTable) -> str:
    """Each method's hyperparameters as its runs in the table had them (``hp.*``; the stage-1
    parent left out), so that a reader sees which of a method's published values ran, e.g.
    UCVME's unlabeled weight, 10 (its authors') or 0.05 (pm25's port)."""
    parts = []
    for method in dict.fromkeys(tc.method for tc in table.cells):
        mine = runs[runs["method"] == method]
        values = []
        for column in sorted(c for c in mine.columns if str(c).startswith("hp.")):
            if column == "hp.stage1" or mine[column].isna().all():
                continue
            seen = {f"{v:g}" if isinstance(v, float) else str(v) for v in mine[column].dropna()}
            values.append(f"{column[3:]}={seen.pop() if len(seen) == 1 else 'varied'}")
        if values:
            label = next(tc.label for tc in table.cells if tc.method == method)
            parts.append(f"{label}: {', '.join(values)}")
    return "Hyperparameters as run: " + "; ".join(parts) + "." if parts else ""


def _short_sha(sha: str) -> str:
    """A commit's first 10 characters, keeping the ``-dirty`` mark of uncommitted source."""
    return sha[:10] + ("-dirty" if sha.endswith("-dirty") else "")


def _statistics_line(
    table: PaperTable, family_name: str, family_size: Mapping[str, int], redraw: bool
) -> str:
    scope = (
        "the methods tables (table2, table4, sota) on these data"
        if family_name == "methods"
        else f"{table.name}"
    )
    sizes = "; ".join(
        f"{family_size[kind]} {what}"
        for kind, what in (("control", "against controls"), ("base", f"against {table.reference}"))
        if family_size[kind]
    )
    return (
        "Mean ± SD over seeds; bias: mean test prediction − target. 95 % CIs and p: the "
        "per-seed values (ΔR paired by seed"
        f"{' and labeled-subset draw' if redraw else ''}) with a standard error of two levels, "
        "seeds and test patients (a bootstrap over patients, B = "
        f"{N_RESAMPLES}, adds the variance the seeds share), Student's t with n − 1 degrees "
        f"of freedom: never less conservative than a paired t test; no p under {MIN_SEEDS_TEST} "
        f"paired seeds. ΔR vs Control: against the equal-compute supervised control of the "
        f"cell's own stage-1 parent (the gain from unlabeled images). Holm family "
        f"'{family_name}': every comparison of {scope} of each kind ({sizes or 'none yet'}), "
        f"adjusted per kind. Bold ΔR: Holm p < {ALPHA}; nothing else is bold."
    )


def _power_line(tidy: pd.DataFrame, table: PaperTable) -> str:
    head = (
        f"Power ({POWER * 100:.0f} %, α = {ALPHA}, noncentral t with n − 1 degrees of "
        "freedom, from the same standard error): minimum detectable ΔR"
    )
    parts = []
    for _, row in tidy.iterrows():
        kind = "control" if row["control"] else "base"
        if not np.isfinite(row[f"{kind}_mde"]):
            continue
        needed = row[f"{kind}_seeds_needed"]
        seeds = "∞" if math.isinf(needed) else f"{int(needed)}"
        against = row["control"] or table.reference
        parts.append(
            f"{_cell_name(row, table)} vs {against} {row[f'{kind}_mde']:.4f} with "
            f"{int(row[f'{kind}_paired'])} seeds (≈ {seeds} seeds to detect its observed ΔR)"
        )
    if not parts:
        return f"{head}: needs {MIN_SEEDS_TEST} or more paired seeds per comparison."
    return f"{head}: {'; '.join(parts)}."


def _pairing_lines(tidy: pd.DataFrame, table: PaperTable) -> list[str]:
    lines = []
    for _, row in tidy.iterrows():
        for kind, against in (("control", row["control"]), ("base", table.reference)):
            paired = row[f"{kind}_paired"]
            if not against or np.isnan(paired):
                continue
            if paired == 0:
                lines.append(f"{_cell_name(row, table)}: no seed in common with {against}.")
            elif paired < row["seeds"]:
                lines.append(
                    f"{_cell_name(row, table)}: ΔR paired on the {int(paired)} seeds "
                    f"it shares with {against}."
                )
    return lines


def display_frame(data: TableData, style: str) -> pd.DataFrame:
    """The table in the paper's layout, as strings; ``style`` (md | latex | rich | html) sets
    the bold."""
    tidy = data.tidy
    groups = tidy["group"]
    ref = data.table.reference
    cells = format_cells(tidy, ref, style)
    if tidy["paper_r"].notna().any():
        cells["R (paper)"] = [format_number(v, ".4f") for v in tidy["paper_r"]]
        cells["RMSE (paper)"] = [format_number(v, ".4f") for v in tidy["paper_rmse"]]
    if data.table.raw_scale and tidy["lambda_raw"].notna().any():
        cells.insert(0, "λ raw", [format_number(v, ".4g") for v in tidy["lambda_raw"]])
        cells.insert(1, "m raw", [format_number(v, ".4g") for v in tidy["margin_raw"]])
    cells.index = pd.Index(tidy["label"], name="")
    layout = data.table.layout
    if layout == "columns":
        return cells.T
    if layout == "rows":
        return cells
    # groups: margins as rows, one column group per loss; the reference row spans both
    parts = []
    for group in [g for g in groups.unique() if g != "Baseline"]:
        part = cells[(groups == group).to_numpy()]
        part.columns = pd.MultiIndex.from_product([[group], part.columns])
        parts.append(part)
    frame = pd.concat(parts, axis=1)
    reference_row = cells[(groups == "Baseline").to_numpy()]
    if len(reference_row):
        row = pd.concat([reference_row] * len(parts), axis=1)
        row.columns = frame.columns
        row.index = pd.Index([f"{ref} (no triplet term)"])
        frame = pd.concat([frame, row])
    frame.index.name = "margin"
    return frame


def to_markdown(data: TableData) -> str:
    frame = display_frame(data, "md")
    return markdown_table(frame, data.table.title, data.footer, verbatim=True)


def to_latex(data: TableData) -> str:
    return latex_table(display_frame(data, "latex"), data.table.title, data.footer, data.table.name)


def to_csv(data: TableData) -> str:
    return csv_table(data.tidy, data.footer)


def write(data: TableData, fmt: str, folder: Path, source: str = "synthetic") -> Path:
    """Write one format of the table to ``folder/<stem>.<ext>`` (atomically); the stem names
    the data beside the table (:func:`bmdbench.rendering.file_stem`)."""
    text = {"md": to_markdown, "latex": to_latex, "csv": to_csv}[fmt](data)
    return write_text(text, file_stem(data.table.name, source), fmt, folder)


def table_data(
    names: str,
    runs: pd.DataFrame,
    base: RunSpec,
    backbones: Sequence[str],
    sets: dict[str, str],
) -> list[TableData]:
    """Each paper table of ``names`` (table1..table4, all, sota) from ``runs``, its cells
    named as ``bmdbench grid`` names them (:func:`bmdbench.experiments.cells_for` from
    ``base``, ``backbones`` and ``sets``). A table none of whose cells has a run warns."""
    tables = []
    for paper_table in select(names):
        signatures = {}
        members = METHOD_TABLES if paper_table.name in METHOD_TABLES else (paper_table.name,)
        for member in members:
            specs = cells_for(member, [], backbones, 1, sets, base)
            signatures.update(
                {tc: spec.signature for tc, spec in zip(TABLES[member].cells, specs, strict=True)}
            )
        mine = [signatures[tc] for tc in paper_table.cells]
        if len(runs) and cell_runs(runs, mine).empty:
            warnings.warn(
                f"none of the {len(runs)} runs in the store is in a cell of "
                f"{paper_table.name}: give `bmdbench table` the --preset, --data (spelled as "
                "the grid got it), --set and --backbones the grid ran with",
                BmdWarning,
                stacklevel=2,
            )
        tables.append(build(paper_table, runs, signatures))
    return tables


def publish(
    names: str,
    out: Path,
    base: RunSpec,
    backbones: Sequence[str],
    sets: dict[str, str],
    formats: Sequence[str],
    console: Console,
    unit: str = "",
) -> list[Path]:
    """``bmdbench table``: each paper table of ``names`` from the runs under ``out``
    (:func:`table_data`), printed and written to ``out/tables`` in each of ``formats``;
    ``unit`` as in :func:`bmdbench.results.load_runs`."""
    if unknown := [f for f in formats if f not in FORMATS]:
        raise ConfigError(f"unknown format {unknown[0]!r}", f"use one of: {', '.join(FORMATS)}")
    written = []
    for data in table_data(names, load_runs(out, unit), base, backbones, sets):
        console.print(rich_table(display_frame(data, "rich"), data.table.title, data.footer))
        written += [write(data, f, out / "tables", base.data) for f in formats]
    return written
