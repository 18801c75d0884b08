"""The paper's tables from the results store: measured cells beside the paper's values.

Markdown and LaTeX keep the paper's layout (Tables 1–2: cells as columns;
Table 3: margins as rows, one column group per loss; Table 4: cells as rows).
Per cell: R and RMSE as mean ± SD over seeds (the best in bold, only among the
cells with the table's largest seed count), R's 95 % CI, ΔR against the
reference with its CI, the Holm-adjusted bootstrap p and sign-flip p, the seed
count, how many seeds of a stage-2 cell kept their stage-1 weights (``†`` when all
did), the paper's values; Table 3 on z-scored targets adds the raw-scale λ and m.
Statistics: :mod:`bmdbench.results`. The footer lines name the data, preset,
seeds, device and git sha, the statistics, the power, and the footnotes. The CSV
is the tidy form: one row per cell with plain numbers (raw and adjusted p, seed
counts, CI bounds, MDE, seeds needed, stage-1 counts), for scripts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from bmdbench import store
from bmdbench.errors import ConfigError, DataError
from bmdbench.paper_tables import PaperTable, select
from bmdbench.results import (
    ALPHA,
    MIN_SEEDS_SIGN_FLIP,
    MIN_SEEDS_TEST,
    N_RESAMPLES,
    POWER,
    cell_runs,
    load_runs,
    raw_triplet_scale,
    table_stats,
)
from bmdbench.spec import RunSpec

FORMATS = ("md", "latex", "csv")


@dataclass(frozen=True)
class TableData:
    table: PaperTable
    tidy: pd.DataFrame  # one row per table cell (numbers; NaN where no run is finished)
    footer: str  # lines separated by "\n"
    resamples: int = N_RESAMPLES  # B of the bootstrap: the resolution of its p-values


def build(
    table: PaperTable,
    runs: pd.DataFrame,
    signatures: Sequence[str],
    n_resamples: int = N_RESAMPLES,
) -> TableData:
    """Statistics for every cell of ``table``; ``signatures[i]`` identifies the runs of cell i."""
    # one frame per cell, in table order (labels repeat across Table 3's column groups)
    selected = [cell_runs(runs, [sig]) for sig in signatures]
    for tc, frame in zip(table.cells, selected, strict=True):
        if len(frame) and frame["data_fingerprint"].nunique() > 1:
            raise DataError(
                f"the runs of {table.name} cell {tc.label!r} saw different data",
                "keep one dataset per --out folder",
            )
    reference = [tc.label for tc in table.cells].index(table.reference)
    head = pd.DataFrame(
        {
            "label": [tc.label for tc in table.cells],
            "group": [tc.group for tc in table.cells],
            "method": [tc.method for tc in table.cells],
        }
    )
    statistics = table_stats(table.name, selected, reference, n_resamples)
    scale = pd.DataFrame(
        [_raw_scale(f, tc.method) for tc, f in zip(table.cells, selected, strict=True)],
        columns=["target_sd", "lambda_raw", "margin_raw"],
    )
    paper = pd.DataFrame(
        {
            "paper_r": [tc.paper_r for tc in table.cells],
            "paper_rmse": [tc.paper_rmse for tc in table.cells],
        }
    )
    tidy = pd.concat([head, statistics, scale, paper], axis=1)
    shown = (
        pd.concat([f for f in selected if len(f)])
        if any(len(f) for f in selected)
        else runs.head(0)
    )
    return TableData(table, tidy, _footer(shown, table, tidy, n_resamples), n_resamples)


def _raw_scale(frame: pd.DataFrame, method: str) -> tuple[float, float, float]:
    """(σ, λ_raw, m_raw) of a cell, means over its runs; NaN λ/m unless its runs trained
    a triplet term on z-scored targets (see :func:`bmdbench.results.raw_triplet_scale`)."""
    if frame.empty or "target_sd" not in frame:
        return (np.nan, np.nan, np.nan)
    sd = float(frame["target_sd"].mean())
    triplet = {"hp.weight", "hp.margin"} <= set(frame.columns)
    if not triplet or not (frame["target_norm"] == "zscore").all():
        return (sd, np.nan, np.nan)
    from bmdbench.methods import METHODS

    adaptive = bool(getattr(METHODS.get(method), "adaptive", True))
    raw = [
        raw_triplet_scale(w, m, s, adaptive)
        for w, m, s in zip(frame["hp.weight"], frame["hp.margin"], frame["target_sd"], strict=True)
    ]
    return (sd, float(np.mean([r[0] for r in raw])), float(np.mean([r[1] for r in raw])))


def _cell_name(row: pd.Series, table: PaperTable) -> str:
    grouped = table.layout == "groups" and row["group"] != "Baseline"
    return f"{row['group']} {row['label']}" if grouped else str(row["label"])


def _footer(runs: pd.DataFrame, table: PaperTable, tidy: pd.DataFrame, resamples: int) -> str:
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
    lines = [
        f"Measured on {join('data_source')} (data {join('data_fingerprint')[:12]}), "
        f"preset {join('preset')}, seeds {', '.join(map(str, seeds))}, device {join('device')}, "
        f"git {', '.join(_short_sha(s) for s in sorted(set(runs['git_sha'])))}; {draw}; "
        f"reference for ΔR: {table.reference}. Paper: Zheng et al., MICCAI 2021 (in-house hip X-rays, not this data).",
        _statistics_line(tidy, resamples, redraw),
        f"— in p (Holm): fewer than {MIN_SEEDS_TEST} paired seeds, no test; "
        f"in sign-flip p: fewer than {MIN_SEEDS_SIGN_FLIP}.",
        _power_line(tidy, table),
        *_pairing_lines(tidy, table),
    ]
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


def _short_sha(sha: str) -> str:
    """A commit's first 10 characters, keeping the ``-dirty`` mark of uncommitted source."""
    return sha[:10] + ("-dirty" if sha.endswith("-dirty") else "")


def _statistics_line(tidy: pd.DataFrame, resamples: int, redraw: bool) -> str:
    tests = int(tidy["p_value"].notna().sum())
    family = f"{tests} test{'s' if tests != 1 else ''}" if tests else "tests (none yet)"
    top = int(tidy["seeds"].max())
    return (
        f"Mean ± SD over seeds. 95 % CIs and p: two-level bootstrap (B = {resamples}): seeds, "
        "then test images, one image draw shared by all cells; ΔR paired by seed"
        f"{' and labeled-subset draw' if redraw else ''}; p two-sided, Holm-adjusted over "
        f"the table's {family}; sign-flip p: exact permutation "
        f"test of the per-seed ΔR ({MIN_SEEDS_SIGN_FLIP}+ paired seeds), Holm-adjusted. "
        f"Bold: best among the cells with {top} seed{'s' if top != 1 else ''}."
    )


def _power_line(tidy: pd.DataFrame, table: PaperTable) -> str:
    head = (
        f"Power ({POWER * 100:.0f} %, α = {ALPHA}, normal approximation, from the SD of the paired "
        "per-seed ΔR): minimum detectable ΔR"
    )
    parts = []
    for _, row in tidy[tidy["sd_diff"].notna()].iterrows():
        needed = row["seeds_needed"]
        seeds = "∞" if math.isinf(needed) else f"{int(needed)}"
        parts.append(
            f"{_cell_name(row, table)} {row['mde']:.4f} with {int(row['paired_seeds'])} seeds "
            f"(≈ {seeds} seeds to detect its observed ΔR)"
        )
    if not parts:
        return f"{head}: needs 2 or more paired seeds per comparison."
    return f"{head}: {'; '.join(parts)}."


def _pairing_lines(tidy: pd.DataFrame, table: PaperTable) -> list[str]:
    lines = []
    for _, row in tidy[tidy["paired_seeds"].notna()].iterrows():
        if row["paired_seeds"] == 0:
            lines.append(f"{_cell_name(row, table)}: no seed in common with {table.reference}.")
        elif row["paired_seeds"] < row["seeds"]:
            lines.append(
                f"{_cell_name(row, table)}: ΔR paired on the {int(row['paired_seeds'])} seeds "
                f"it shares with {table.reference}."
            )
    return lines


def _best(values: pd.Series, higher: bool) -> pd.Series:
    """Mask of the best finite value (ties all bold); nothing is best among fewer than two."""
    if values.notna().sum() < 2:
        return pd.Series(False, index=values.index)
    target = values.max() if higher else values.min()
    return values == target


BOLD = {"md": "**{}**", "latex": "\\textbf{{{}}}", "rich": "[bold]{}[/]"}
DAGGER = {"md": "†", "latex": "\\dag{}", "rich": "†"}
LESS = {"md": "<", "latex": "$<$", "rich": "<"}


def format_mean_sd(mean: float, sd: float, bold: bool, style: str) -> str:
    if np.isnan(mean):
        return "—"
    pm = "$\\pm$" if style == "latex" else "±"
    text = f"{mean:.4f}" if np.isnan(sd) else f"{mean:.4f} {pm} {sd:.4f}"
    return BOLD[style].format(text) if bold else text


def format_ci(low: float, high: float) -> str:
    return "—" if np.isnan(low) else f"[{low:.3f}, {high:.3f}]"


def p_decimals(resamples: int) -> int:
    """Decimals that show a p-value at the bootstrap's resolution 1/B (4 for B = 2000)."""
    return max(1, math.ceil(math.log10(resamples)))


def format_p(p: float, bound: bool, resamples: int, style: str) -> str:
    """A p-value at the bootstrap's resolution; an upper bound as ``<value`` (p<0.0005 at
    B = 2000); "—" for no test."""
    if np.isnan(p):
        return "—"
    text = f"{p:.{p_decimals(resamples)}f}"
    return LESS[style] + text if bound else text


def format_kept(stage2: bool, kept: int, seeds: int) -> str:
    """Seeds of a stage-2 cell that selected their stage-1 weights, as kept/seeds."""
    if seeds == 0:
        return "—"
    return f"{kept}/{seeds}" if stage2 else "n/a"


def _paper(value: float | None) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.4f}"


def format_cells(
    tidy: pd.DataFrame,
    reference: int,
    style: str,
    resamples: int,
    best_r: Sequence[bool] | None = None,
    best_rmse: Sequence[bool] | None = None,
) -> pd.DataFrame:
    """The measured columns of each cell as strings (rows: ``tidy``'s cells, same order).

    ``tidy`` has :data:`bmdbench.results.STAT_COLUMNS`; ``reference`` is the
    reference cell's position; ``style`` (md | latex | rich) sets bold and symbols.
    """
    n = len(tidy)
    best_r = [False] * n if best_r is None else best_r
    best_rmse = [False] * n if best_rmse is None else best_rmse
    kept_all = (tidy["stage2"] & (tidy["n_selected_stage1"] == tidy["seeds"])).tolist()
    rows = []
    for i, (_, row) in enumerate(tidy.iterrows()):
        is_ref = i == reference
        r = format_mean_sd(row["r_mean"], row["r_sd"], bool(best_r[i]), style)
        rows.append(
            {
                "R": r + DAGGER[style] if kept_all[i] and row["seeds"] > 0 else r,
                "RMSE": format_mean_sd(row["rmse_mean"], row["rmse_sd"], bool(best_rmse[i]), style),
                "R 95% CI": format_ci(row["r_ci_low"], row["r_ci_high"]),
                "ΔR": "reference" if is_ref else _format_delta(row["delta_r"]),
                "ΔR 95% CI": "" if is_ref else format_ci(row["delta_ci_low"], row["delta_ci_high"]),
                "p (Holm)": ""
                if is_ref
                else format_p(row["p_holm"], bool(row["p_holm_bound"]), resamples, style),
                "sign-flip p (Holm)": ""
                if is_ref
                else format_p(row["p_sign_flip_holm"], False, resamples, style),
                "seeds": str(int(row["seeds"])),
                "stage 1 kept": format_kept(
                    bool(row["stage2"]), int(row["n_selected_stage1"]), int(row["seeds"])
                ),
            }
        )
    return pd.DataFrame(rows, index=tidy.index)


def _format_delta(delta: float) -> str:
    return "—" if np.isnan(delta) else f"{delta:+.4f}"


def display_frame(data: TableData, style: str) -> pd.DataFrame:
    """The table in the paper's layout, as strings; ``style`` (md | latex | rich) sets the bold."""
    tidy = data.tidy
    groups = tidy["group"]
    top = (tidy["seeds"] == tidy["seeds"].max()) & (tidy["seeds"] > 0)
    best_r = pd.concat(
        [_best(tidy["r_mean"].where(top)[groups == g], True) for g in groups.unique()]
    )
    best_rmse = pd.concat(
        [_best(tidy["rmse_mean"].where(top)[groups == g], False) for g in groups.unique()]
    )
    ref = data.table.reference
    reference = tidy["label"].tolist().index(ref)
    cells = format_cells(
        tidy,
        reference,
        style,
        data.resamples,
        best_r.sort_index().tolist(),
        best_rmse.sort_index().tolist(),
    )
    cells = cells.rename(columns={"ΔR": f"ΔR vs {ref}"})
    cells["R (paper)"] = [_paper(v) for v in tidy["paper_r"]]
    cells["RMSE (paper)"] = [_paper(v) for v in tidy["paper_rmse"]]
    if data.table.raw_scale and tidy["lambda_raw"].notna().any():
        cells.insert(0, "λ raw", [_raw(v) for v in tidy["lambda_raw"]])
        cells.insert(1, "m raw", [_raw(v) for v in tidy["margin_raw"]])
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


def _raw(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.4g}"


def to_markdown(data: TableData) -> str:
    frame = display_frame(data, "md")
    return markdown_table(frame, data.table.title, data.footer, verbatim=True)


def to_latex(data: TableData) -> str:
    return latex_table(display_frame(data, "latex"), data.table.title, data.footer, data.table.name)


def to_csv(data: TableData) -> str:
    return csv_table(data.tidy, data.footer)


def markdown_table(frame: pd.DataFrame, title: str, footer: str, verbatim: bool = False) -> str:
    """A titled Markdown table, then each footer line as a paragraph. ``verbatim``: cells are
    formatted strings, printed as they are (not re-parsed as numbers: "1.0000" stays)."""
    if isinstance(frame.columns, pd.MultiIndex):
        frame = frame.set_axis([" ".join(c) for c in frame.columns], axis=1)
    notes = "\n\n".join(footer.splitlines())
    return f"**{title}**\n\n{frame.to_markdown(disable_numparse=verbatim)}\n\n{notes}\n"


def latex_table(frame: pd.DataFrame, title: str, footer: str, label: str) -> str:
    """A booktabs table float (cells already LaTeX; labels escaped here) with the footer
    lines as small notes under the tabular."""
    frame = frame.rename(index=_latex_escape, columns=_latex_escape)
    frame.index.name = _latex_escape(frame.index.name) if frame.index.name else None
    body = frame.style.to_latex(
        hrules=True,
        multicol_align="c",
        column_format="l" + "r" * frame.shape[1],
        caption=_latex_escape(title),
        label=f"tab:{label}",
        position_float="centering",
    )
    notes = "".join(
        f"\\par\\smallskip{{\\footnotesize {_latex_escape(line)}}}\n"
        for line in footer.splitlines()
    )
    end = "\\end{table}"
    assert body.count(end) == 1
    return body.replace(end, notes + end)


def csv_table(frame: pd.DataFrame, footer: str) -> str:
    """Plain numbers, each footer line as a last ``#`` line (``pd.read_csv(..., comment="#")``)."""
    notes = "".join(f"# {line}\n" for line in footer.splitlines())
    return frame.to_csv(index=False, float_format="%.6g") + notes


_LATEX = (
    ("%", "\\%"),
    ("&", "\\&"),
    ("_", "\\_"),
    ("#", "\\#"),
    ("<", "$<$"),
    (">", "$>$"),
    ("Δ", "$\\Delta$"),
    ("Π", "$\\Pi$"),
    ("σ²", "$\\sigma^2$"),
    ("σ", "$\\sigma$"),
    ("λ", "$\\lambda$"),
    ("α", "$\\alpha$"),
    ("±", "$\\pm$"),
    ("≥", "$\\geq$"),
    ("≈", "$\\approx$"),
    ("∞", "$\\infty$"),
    ("·", "$\\cdot$"),
    ("†", "\\dag{}"),
)


def _latex_escape(text: object) -> str:
    out = str(text)
    for char, repl in _LATEX:
        out = out.replace(char, repl)
    return out


EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv"}


def write(data: TableData, fmt: str, folder: Path) -> Path:
    """Write one format of the table to ``folder/<table>.<ext>`` (atomically)."""
    text = {"md": to_markdown, "latex": to_latex, "csv": to_csv}[fmt](data)
    return _write_text(text, data.table.name, fmt, folder)


def write_frame(
    frame: pd.DataFrame, title: str, footer: str, name: str, fmt: str, folder: Path
) -> Path:
    """Write any frame (its index a column) as ``folder/<name>.<ext>`` in one format."""
    text = {
        "md": lambda: markdown_table(frame, title, footer),
        "latex": lambda: latex_table(frame.astype(str), title, footer, name),
        "csv": lambda: csv_table(frame.reset_index(), footer),
    }[fmt]()
    return _write_text(text, name, fmt, folder)


def _write_text(text: str, name: str, fmt: str, folder: Path) -> Path:
    path = folder / f"{name}.{EXTENSIONS[fmt]}"
    store.write_text(path, text)
    return path


def publish(
    names: str,
    out: Path,
    base: RunSpec,
    backbones: Sequence[str],
    sets: dict[str, str],
    formats: Sequence[str],
    console: Console,
) -> list[Path]:
    """``bmdbench table``: each paper table of ``names`` (table1..table4, all) from the runs
    under ``out``, its cells named as ``bmdbench grid`` names them (:func:`bmdbench.grid.cells_for`
    from ``base``, ``backbones`` and ``sets``), printed and written to ``out/tables`` in each
    of ``formats``."""
    from bmdbench.grid import cells_for

    if unknown := [f for f in formats if f not in FORMATS]:
        raise ConfigError(f"unknown format {unknown[0]!r}", f"use one of: {', '.join(FORMATS)}")
    runs = load_runs(out)
    written = []
    for paper_table in select(names):
        cells = cells_for(paper_table.name, [], backbones, 1, sets, base)
        signatures = [c.signature for c in cells]
        if len(runs) and cell_runs(runs, signatures).empty:
            warnings.warn(
                f"none of the {len(runs)} runs under {out / 'runs'} is in a cell of "
                f"{paper_table.name}: give `bmdbench table` the --preset, --data (spelled as "
                "the grid got it), --set and --backbones the grid ran with",
                stacklevel=2,
            )
        data = build(paper_table, runs, signatures)
        frame = display_frame(data, "rich")
        shown = Table(title=paper_table.title, caption=data.footer)
        shown.add_column(str(frame.index.name or ""))
        for column in frame.columns:
            shown.add_column(" ".join(column) if isinstance(column, tuple) else str(column))
        for label, row in frame.iterrows():
            shown.add_row(str(label), *(str(v) for v in row))
        console.print(shown)
        written += [write(data, f, out / "tables") for f in formats]
    return written
