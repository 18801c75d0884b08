"""The paper's tables from the results store: measured cells beside the paper's values.

Markdown and LaTeX keep the paper's layout (Tables 1–2: cells as columns;
Table 3: margins as rows, one column group per loss; Table 4: cells as rows),
with the best measured R and RMSE in bold. The CSV is the tidy form: one row
per cell with plain numbers, for scripts. Every format ends with a footer
naming the dataset, preset, seeds, device and git sha of the runs it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bmdbench import store
from bmdbench.errors import DataError
from bmdbench.paper_tables import PaperTable
from bmdbench.results import CellStats, cell_runs, cell_stats, read_predictions

FORMATS = ("md", "latex", "csv")


@dataclass(frozen=True)
class TableData:
    table: PaperTable
    tidy: pd.DataFrame  # one row per table cell (numbers; NaN where no run is finished)
    footer: str


def build(table: PaperTable, runs: pd.DataFrame, signatures: Sequence[str]) -> TableData:
    """Statistics for every cell of ``table``; ``signatures[i]`` identifies the runs of cell i."""
    # one frame per cell, in table order (labels repeat across Table 3's column groups)
    selected = [cell_runs(runs, [sig]) for sig in signatures]
    for tc, frame in zip(table.cells, selected, strict=True):
        if len(frame) and frame["data_fingerprint"].nunique() > 1:
            raise DataError(
                f"the runs of {table.name} cell {tc.label!r} saw different data",
                "keep one dataset per --out folder",
            )
    reference = selected[[tc.label for tc in table.cells].index(table.reference)]
    ref_pred = read_predictions(reference) if len(reference) else None
    rows = []
    for tc, frame in zip(table.cells, selected, strict=True):
        st: CellStats | None = None
        if len(frame):
            is_ref = tc.label == table.reference
            st = cell_stats(read_predictions(frame), None if is_ref else ref_pred)
        rows.append(
            {
                "label": tc.label,
                "group": tc.group,
                "method": tc.method,
                "seeds": len(frame),
                "r_mean": st.r_mean if st else np.nan,
                "r_sd": st.r_sd if st else np.nan,
                "rmse_mean": st.rmse_mean if st else np.nan,
                "rmse_sd": st.rmse_sd if st else np.nan,
                "r_ci_low": st.r_ci[0] if st else np.nan,
                "r_ci_high": st.r_ci[1] if st else np.nan,
                "rmse_ci_low": st.rmse_ci[0] if st else np.nan,
                "rmse_ci_high": st.rmse_ci[1] if st else np.nan,
                "delta_r": st.delta_r if st and st.delta_r is not None else np.nan,
                "p_value": st.p_value if st and st.p_value is not None else np.nan,
                "paper_r": tc.paper_r,
                "paper_rmse": tc.paper_rmse,
            }
        )
    shown = (
        pd.concat([f for f in selected if len(f)])
        if any(len(f) for f in selected)
        else runs.head(0)
    )
    return TableData(table, pd.DataFrame(rows), _footer(shown, table))


def _footer(runs: pd.DataFrame, table: PaperTable) -> str:
    if runs.empty:
        return "Measured: no finished runs yet. Paper: Zheng et al., MICCAI 2021 (in-house hip X-rays)."

    def join(column: str) -> str:
        return ", ".join(sorted({str(v) for v in runs[column]}))

    seeds = sorted({int(s) for s in runs["seed"]})
    return (
        f"Measured on {join('data_source')} (data {join('data_fingerprint')[:12]}), "
        f"preset {join('preset')}, seeds {', '.join(map(str, seeds))}, device {join('device')}, "
        f"git {', '.join(s[:10] for s in sorted(set(runs['git_sha'])))}; reference for ΔR: "
        f"{table.reference}. Paper: Zheng et al., MICCAI 2021 (in-house hip X-rays, not this data)."
    )


def _best(values: pd.Series, higher: bool) -> pd.Series:
    """Mask of the best finite value (ties all bold); nothing is best among fewer than two."""
    if values.notna().sum() < 2:
        return pd.Series(False, index=values.index)
    target = values.max() if higher else values.min()
    return values == target


BOLD = {"md": "**{}**", "latex": "\\textbf{{{}}}", "rich": "[bold]{}[/]"}


def format_mean_sd(mean: float, sd: float, bold: bool, style: str) -> str:
    if np.isnan(mean):
        return "—"
    pm = "$\\pm$" if style == "latex" else "±"
    text = f"{mean:.4f}" if np.isnan(sd) else f"{mean:.4f} {pm} {sd:.4f}"
    return BOLD[style].format(text) if bold else text


def format_ci(low: float, high: float) -> str:
    return "—" if np.isnan(low) else f"[{low:.3f}, {high:.3f}]"


def format_delta(delta: float, p: float) -> str:
    """ΔR with its p-value; below the bootstrap's resolution p is shown as an upper bound."""
    if np.isnan(delta):
        return "—"
    return f"{delta:+.4f} (p<0.001)" if p < 0.001 else f"{delta:+.4f} (p={p:.3f})"


def _paper(value: float | None) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.4f}"


def display_frame(data: TableData, style: str) -> pd.DataFrame:
    """The table in the paper's layout, as strings; ``style`` (md | latex | rich) sets the bold."""
    tidy = data.tidy
    groups = tidy["group"]
    best_r = pd.concat([_best(tidy["r_mean"][groups == g], True) for g in groups.unique()])
    best_rmse = pd.concat([_best(tidy["rmse_mean"][groups == g], False) for g in groups.unique()])
    ref = data.table.reference
    cells = pd.DataFrame(
        {
            "R": [
                format_mean_sd(m, s, b, style)
                for m, s, b in zip(tidy["r_mean"], tidy["r_sd"], best_r, strict=True)
            ],
            "RMSE": [
                format_mean_sd(m, s, b, style)
                for m, s, b in zip(tidy["rmse_mean"], tidy["rmse_sd"], best_rmse, strict=True)
            ],
            "R 95% CI": [
                format_ci(lo, hi)
                for lo, hi in zip(tidy["r_ci_low"], tidy["r_ci_high"], strict=True)
            ],
            f"ΔR vs {ref}": [
                format_delta(d, p) for d, p in zip(tidy["delta_r"], tidy["p_value"], strict=True)
            ],
            "seeds": tidy["seeds"].astype(str),
            "R (paper)": [_paper(v) for v in tidy["paper_r"]],
            "RMSE (paper)": [_paper(v) for v in tidy["paper_rmse"]],
        }
    )
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
    reference = cells[(groups == "Baseline").to_numpy()]
    if len(reference):
        row = pd.concat([reference] * len(parts), axis=1)
        row.columns = frame.columns
        row.index = pd.Index([f"{ref} (no triplet term)"])
        frame = pd.concat([frame, row])
    frame.index.name = "margin"
    return frame


def to_markdown(data: TableData) -> str:
    return markdown_table(display_frame(data, "md"), data.table.title, data.footer)


def to_latex(data: TableData) -> str:
    return latex_table(display_frame(data, "latex"), data.table.title, data.footer, data.table.name)


def to_csv(data: TableData) -> str:
    return csv_table(data.tidy, data.footer)


def markdown_table(frame: pd.DataFrame, title: str, footer: str) -> str:
    """A titled Markdown table with its footer line."""
    if isinstance(frame.columns, pd.MultiIndex):
        frame = frame.set_axis([" ".join(c) for c in frame.columns], axis=1)
    return f"**{title}**\n\n{frame.to_markdown()}\n\n{footer}\n"


def latex_table(frame: pd.DataFrame, title: str, footer: str, label: str) -> str:
    """A booktabs table float (cells already LaTeX; labels escaped here), footer as a comment."""
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
    return body + f"% {footer}\n"


def csv_table(frame: pd.DataFrame, footer: str) -> str:
    """Plain numbers, the footer as a last ``#`` line (``pd.read_csv(..., comment="#")``)."""
    return frame.to_csv(index=False, float_format="%.6g") + f"# {footer}\n"


def _latex_escape(text: object) -> str:
    out = str(text)
    for char, repl in (
        ("%", "\\%"),
        ("&", "\\&"),
        ("_", "\\_"),
        ("#", "\\#"),
        ("Δ", "$\\Delta$"),
        ("Π", "$\\Pi$"),
    ):
        out = out.replace(char, repl)
    return out


EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv"}


def write(data: TableData, fmt: str, folder: Path) -> Path:
    """Write one format of the table to ``folder/<table>.<ext>`` (atomically)."""
    text = {"md": to_markdown, "latex": to_latex, "csv": to_csv}[fmt](data)
    path = folder / f"{data.table.name}.{EXTENSIONS[fmt]}"
    store.write_text(path, text)
    return path
