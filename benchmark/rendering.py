"""How a report looks: numbers as text, Markdown, LaTeX, CSV, HTML and terminal tables, and
the files they are written to.

The reports (:mod:`bmdbench.tables`, :mod:`bmdbench.budgets`, the comparison of tuned
methods in :mod:`bmdbench.tune`) say what a table holds; this module alone says how it is
printed: one way to write a mean ± SD, a p-value, a bold ΔR (bold only where the
Holm-adjusted p is below :data:`bmdbench.statistics.ALPHA`), to escape LaTeX, and to name a
table's files, so that every report prints the same numbers the same way.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from bmdbench import store
from bmdbench.statistics import ALPHA

FORMATS = ("md", "latex", "csv")

EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv"}


def data_name(source: str) -> str:
    """A data source as published: a manifest by its file name, never its full path."""
    return source if source == "synthetic" else Path(source).name


def data_words(fingerprint: str, unit: str) -> str:
    """What a footer says of the data beside its name: fingerprint and the targets' unit."""
    return f"data {fingerprint[:12]}; targets in {unit or 'the unit the manifest does not name'}"


def file_stem(table: str, source: str) -> str:
    """A table's file name without extension: ``table`` on the embedded phantoms, and
    ``table-<data>`` on a manifest, <data> its file's stem (its folder's name for a file
    called ``manifest.csv``), so that one results folder holds the tables of several
    datasets side by side."""
    if source == "synthetic":
        return table
    path = Path(source)
    return f"{table}-{path.parent.name if path.stem == 'manifest' else path.stem}"


def format_number(value: float | None, spec: str) -> str:
    """A number in ``spec`` (``".4f"``); "—" for none."""
    return "—" if value is None or np.isnan(value) else format(value, spec)


# html: markers that html_table turns into <strong> after escaping the cell's text
BOLD = {"md": "**{}**", "latex": "\\textbf{{{}}}", "rich": "[bold]{}[/]", "html": "\x02{}\x03"}
DAGGER = {"md": "†", "latex": "\\dag{}", "rich": "†", "html": "†"}


def format_mean_sd(mean: float, sd: float, style: str, digits: int = 4) -> str:
    if np.isnan(mean):
        return "—"
    pm = "$\\pm$" if style == "latex" else "±"
    return f"{mean:.{digits}f}" if np.isnan(sd) else f"{mean:.{digits}f} {pm} {sd:.{digits}f}"


def format_ci(low: float, high: float) -> str:
    return "—" if np.isnan(low) else f"[{low:.3f}, {high:.3f}]"


def format_p(p: float) -> str:
    """A p-value to 4 decimals ("<0.0001" below); "—" for no test."""
    if np.isnan(p):
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def format_kept(stage2: bool, kept: int, seeds: int) -> str:
    """Seeds of a stage-2 cell that selected their stage-1 weights, as kept/seeds."""
    if seeds == 0:
        return "—"
    return f"{kept}/{seeds}" if stage2 else "n/a"


def _delta(row: pd.Series, kind: str, style: str) -> tuple[str, str, str]:
    """ΔR, its CI and its Holm p as strings; ΔR bold when the Holm p is below α."""
    delta = row[f"{kind}_delta"]
    if np.isnan(delta):
        return "—", "—", "—"
    text = f"{delta:+.4f}"
    significant = row[f"{kind}_p_holm"] < ALPHA
    return (
        BOLD[style].format(text) if significant else text,
        format_ci(row[f"{kind}_ci_low"], row[f"{kind}_ci_high"]),
        format_p(row[f"{kind}_p_holm"]),
    )


def format_cells(tidy: pd.DataFrame, reference: str, style: str) -> pd.DataFrame:
    """The measured columns of each cell as strings (rows: ``tidy``'s cells, same order).

    ``tidy`` has :data:`bmdbench.statistics.STAT_COLUMNS` and a ``control`` column (the label
    of each cell's control, "" for none); ``reference`` names the cell every ΔR vs the
    baseline is against; ``style`` (md | latex | rich) sets bold and symbols.
    """
    controls = bool(tidy["control"].astype(bool).any())
    refreshes = bool(tidy["refreshes"].notna().any())
    rows = []
    for _, row in tidy.iterrows():
        kept_all = bool(row["stage2"]) and row["n_selected_stage1"] == row["seeds"] > 0
        r = format_mean_sd(row["r_mean"], row["r_sd"], style)
        out = {
            "R": r + DAGGER[style] if kept_all else r,
            "RMSE": format_mean_sd(row["rmse_mean"], row["rmse_sd"], style),
            "bias": "—" if np.isnan(row["bias_mean"]) else f"{row['bias_mean']:+.4g}",
            "R 95% CI": format_ci(row["r_ci_low"], row["r_ci_high"]),
        }
        if controls:
            if row["control"]:
                d, ci, p = _delta(row, "control", style)
            else:
                d, ci, p = ("", "", "")
            out |= {"ΔR vs Control": d, "ΔR vs Control 95% CI": ci, "p vs Control (Holm)": p}
        if row["label"] == reference:
            d, ci, p = "reference", "", ""
        else:
            d, ci, p = _delta(row, "base", style)
        out |= {
            f"ΔR vs {reference}": d,
            f"ΔR vs {reference} 95% CI": ci,
            f"p vs {reference} (Holm)": p,
        }
        if refreshes:
            out["refreshes"] = "" if np.isnan(row["refreshes"]) else f"{row['refreshes']:.1f}"
        out["seeds"] = str(int(row["seeds"]))
        out["stage 1 kept"] = format_kept(
            bool(row["stage2"]), int(row["n_selected_stage1"]), int(row["seeds"])
        )
        rows.append(out)
    return pd.DataFrame(rows, index=tidy.index)


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


def html_table(frame: pd.DataFrame, title: str, footer: str) -> str:
    """A titled HTML table (cells formatted in the ``html`` style, escaped here; the index
    as the first column, column levels joined), then each footer line as a paragraph."""

    def cell(text: object, tag: str) -> str:
        escaped = html.escape(str(text)).replace("\x02", "<strong>").replace("\x03", "</strong>")
        return f"<{tag}>{escaped}</{tag}>"

    names = [" ".join(c) if isinstance(c, tuple) else str(c) for c in frame.columns]
    head = "".join(cell(n, "th") for n in [frame.index.name or "", *names])
    body = "".join(
        "<tr>" + cell(label, "th") + "".join(cell(v, "td") for v in row) + "</tr>"
        for label, row in frame.iterrows()
    )
    notes = "".join(f"<p class='footer'>{html.escape(line)}</p>" for line in footer.splitlines())
    return (
        f"<div class='scroll'><table><caption>{html.escape(title)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{notes}"
    )


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


def rich_table(frame: pd.DataFrame, title: str, caption: str) -> Table:
    """A terminal table: the frame's index as its first column, column levels joined."""
    shown = Table(title=title, caption=caption)
    shown.add_column(str(frame.index.name or ""))
    for column in frame.columns:
        shown.add_column(" ".join(column) if isinstance(column, tuple) else str(column))
    for label, row in frame.iterrows():
        shown.add_row(str(label), *(str(v) for v in row))
    return shown


def write_frame(
    frame: pd.DataFrame, title: str, footer: str, name: str, fmt: str, folder: Path
) -> Path:
    """Write any frame (its index a column) as ``folder/<name>.<ext>`` in one format."""
    text = {
        "md": lambda: markdown_table(frame, title, footer),
        "latex": lambda: latex_table(frame.astype(str), title, footer, name),
        "csv": lambda: csv_table(frame.reset_index(), footer),
    }[fmt]()
    return write_text(text, name, fmt, folder)


def write_text(text: str, name: str, fmt: str, folder: Path) -> Path:
    """Write ``text`` to ``folder/<name>.<ext>`` of its format (atomically)."""
    path = folder / f"{name}.{EXTENSIONS[fmt]}"
    store.write_text(path, text)
    return path
