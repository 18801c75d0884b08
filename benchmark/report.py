"""One HTML page per results store: what a researcher opens, prints or sends to a co-author.

``bmdbench report --out DIR`` writes ``DIR/report.html``: a single self-contained file
(inline CSS, figures as inline PNG, no script, nothing fetched), so it opens from a mail
attachment and prints to PDF. It shows what the grids of the store were asked for (each
``bmdbench grid`` leaves its request, :class:`bmdbench.experiments.Request`):

- every table those grids fill, as ``bmdbench table`` builds it, statistics and footers
  included, one per dataset;
- a forest plot of the methods' family: each stage-2 method's ΔR against the control of its
  own parent with its 95 % interval, one row per method and a colour per dataset, the way a
  meta-analysis shows one effect across studies;
- the label-budget curves;
- per dataset and method, validation R over the epochs, one line per seed, and the
  pseudo-label error over the epochs for the methods that record it;
- the runs that failed or diverged, each with its one-line error;
- where the numbers come from: devices, library versions, git revisions, data and grid times.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from bmdbench import store
from bmdbench.budgets import budget_figure, budget_table
from bmdbench.errors import ConfigError
from bmdbench.experiments import METHOD_TABLES, Request, read_requests
from bmdbench.rendering import data_name, html_table
from bmdbench.results import load_runs
from bmdbench.tables import TableData, display_frame, table_data

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
  max-width: 1180px; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; }
h3 { margin-top: 1.4rem; }
.lead { color: #555; margin-top: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 0.6rem 0; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 7px; text-align: right;
  white-space: nowrap; }
th:first-child { text-align: left; }
thead th { border-bottom: 2px solid #333; }
td.text { text-align: left; white-space: normal; }
.footer { font-size: 12px; color: #444; max-width: 60rem; margin: 0.3rem 0; }
figure { margin: 0.8rem 0; }
figcaption { font-size: 12.5px; color: #444; }
img { max-width: 100%; height: auto; }
nav ul { columns: 2; font-size: 14px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h2 { break-before: page; } nav { display: none; }
  .scroll { overflow: visible; } table { font-size: 8px; }
  figure, table { break-inside: avoid; }
}
"""

PSEUDO_KEY = "pseudo_rmse"  # the epoch log's pseudo-label error (methods that make labels)


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    body: str  # HTML


def dataset_label(source: str, fingerprint: str) -> str:
    """A dataset as the report names it: its published name and the start of its
    fingerprint (two manifests of the same file name stay apart)."""
    name = "phantoms" if source == "synthetic" else data_name(source)
    return f"{name} ({fingerprint[:8]})"


def figure_html(fig: Figure, caption: str) -> str:
    """The figure as an inline PNG of at most 256 colours (the figure is closed): plots
    need no more, and the page stays a few hundred KiB."""
    rendered, buffer = io.BytesIO(), io.BytesIO()
    try:
        fig.savefig(rendered, format="png", dpi=110)
    finally:
        plt.close(fig)
    rendered.seek(0)
    with Image.open(rendered) as image:
        image.convert("RGB").quantize(256).save(buffer, format="png", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    text = html.escape(caption)
    return (
        f'<figure><img alt="{text}" src="data:image/png;base64,{data}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def forest_rows(tables: Iterable[tuple[str, TableData]]) -> pd.DataFrame:
    """One row per (dataset, method row) with a ΔR against a control: from the tidy
    statistics of each dataset's method tables, a row shown in several tables once."""
    rows = []
    for dataset, data in tables:
        tidy = data.tidy[data.tidy["control_delta"].notna()]
        for _, row in tidy.iterrows():
            rows.append(
                {
                    "dataset": dataset,
                    "label": row["label"],
                    "delta": row["control_delta"],
                    "low": row["control_ci_low"],
                    "high": row["control_ci_high"],
                    "p_holm": row["control_p_holm"],
                }
            )
    columns = ["dataset", "label", "delta", "low", "high", "p_holm"]
    return pd.DataFrame(rows, columns=columns).drop_duplicates(["dataset", "label"])


def forest_plot(rows: pd.DataFrame) -> Figure:
    """ΔR against the control with its 95 % CI: methods down the page, datasets in colour."""
    labels = list(dict.fromkeys(rows["label"]))
    datasets = list(dict.fromkeys(rows["dataset"]))
    offset = {d: (i - (len(datasets) - 1) / 2) * 0.25 for i, d in enumerate(datasets)}
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(labels) + 1.5), layout="constrained")
    for i, dataset in enumerate(datasets):
        mine = rows[rows["dataset"] == dataset]
        y = [labels.index(label) + offset[dataset] for label in mine["label"]]
        ax.errorbar(
            mine["delta"],
            y,
            xerr=[mine["delta"] - mine["low"], mine["high"] - mine["delta"]],
            fmt="s",
            color=f"C{i}",
            capsize=3,
            label=dataset,
        )
    ax.axvline(0, color="#555", lw=1, ls="--")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ΔR against the control of the method's own parent (test R, 95 % CI)")
    ax.legend(loc="best", fontsize=8, title="data")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _epochs(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "epochs.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_plot(runs: pd.DataFrame, key: str, ylabel: str) -> Figure | None:
    """Small multiples, one panel per method: ``key`` of the epoch log over the epochs, a
    line per seed. None when no run logged ``key``."""
    by_method: dict[str, list[tuple[int, list[dict]]]] = defaultdict(list)
    for _, run in runs.iterrows():
        epochs = [e for e in _epochs(run["run_dir"]) if e.get(key) is not None]
        if epochs:
            by_method[run["method"]].append((int(run["seed"]), epochs))
    if not by_method:
        return None
    methods = list(by_method)
    columns = min(4, len(methods))
    rows = -(-len(methods) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.0 * columns, 2.3 * rows), squeeze=False, layout="constrained"
    )
    for ax, method in zip(axes.flat, methods, strict=False):
        for seed, epochs in sorted(by_method[method], key=lambda pair: pair[0]):
            x = [e["epoch"] for e in epochs]
            ax.plot(x, [e[key] for e in epochs], lw=1, label=f"seed {seed}")
        ax.set_title(method, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    return fig


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain table of text cells (escaped here), the last column wrapping."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td class='text'>{html.escape(str(cell))}</td>" for cell in row)
        + "</tr>"
        for row in rows
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def failed_html(runs: pd.DataFrame) -> str:
    bad = runs[runs["status"] != "ok"]
    if bad.empty:
        return "<p>Every run finished.</p>"
    return text_table(
        ["run", "status", "error"],
        ([r["name"], r["status"], r["error"] or ""] for _, r in bad.iterrows()),
    )


def grid_times(out: Path) -> list[tuple[str, str, float]]:
    """(grid, first start → last end in UTC, minutes) from each grid's event log."""
    times = []
    for path in sorted((out / "grids").glob("*.events.jsonl")):
        stamps = [json.loads(line)["time"] for line in path.read_text().splitlines() if line]
        if stamps:
            first, last = min(stamps), max(stamps)
            iso = [
                datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")
                for t in (first, last)
            ]
            times.append((path.name.split(".")[0], f"{iso[0]} → {iso[1]}", (last - first) / 60))
    return times


def provenance_html(out: Path, runs: pd.DataFrame) -> str:
    def counted(values: Iterable[str]) -> str:
        return "; ".join(f"{k} ({n} runs)" for k, n in sorted(Counter(values).items()))

    records = list(store.iter_records(out))
    libraries = counted(
        ", ".join(f"{k} {v}" for k, v in sorted(r.versions.items()) if k != "bmdbench")
        for r in records
    )
    rows = [
        ("runs", str(len(runs))),
        ("devices", counted(runs["device"].astype(str))),
        ("git revisions", counted(str(s)[:10] for s in runs["git_sha"])),
        ("libraries", libraries),
        (
            "data",
            counted(
                dataset_label(s, f)
                for s, f in zip(runs["data_source"], runs["data_fingerprint"], strict=True)
            ),
        ),
    ]
    rows += [
        (f"grid {grid}", f"{span} UTC: {minutes:.1f} min from its first start to its last end")
        for grid, span, minutes in grid_times(out)
    ]
    return text_table(["what", "values"], rows)


def page(title: str, lead: str, sections: Sequence[Section]) -> str:
    nav = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{s.body}</section>'
        for s in sections
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{' '.join(CSS.split())}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='lead'>{html.escape(lead)}</p>"
        f"<nav><ul>{nav}</ul></nav>{body}</body></html>"
    )


def _dataset(runs: pd.DataFrame, request: Request) -> str:
    """The label of the data a request's runs saw (its source when none has run)."""
    mine = runs[runs["data_source"] == request.data]
    fingerprint = str(mine["data_fingerprint"].iloc[0]) if len(mine) else ""
    return dataset_label(request.data, fingerprint)


def build(out: Path, unit: str = "") -> str:
    """The report's HTML for the store under ``out`` (``unit`` as in
    :func:`bmdbench.results.load_runs`)."""
    runs = load_runs(out, unit)
    requests = read_requests(out)
    if runs.empty or not requests:
        raise ConfigError(
            f"no grid has finished runs under {out}",
            "run bmdbench grid with this --out first, or give the --out it used",
        )
    tables: list[Section] = []
    method_tables: list[tuple[str, TableData]] = []
    cells: dict[str, set[str]] = defaultdict(set)  # dataset → cell signatures of its tables
    for request in requests:
        dataset = _dataset(runs, request)
        cells[dataset] |= {spec.signature for spec in request.cells()}
        if request.table is None:  # a custom grid: its runs appear in the curves
            continue
        if request.table == "labels":
            base = replace(request.base, backbone=request.cells()[0].backbone)
            table = budget_table(
                runs, request.methods, request.budgets, request.sets, base, style="html"
            )
            body = html_table(table.frame, table.title, table.footer) + figure_html(
                budget_figure(table.tidy, table.unit),
                f"R and RMSE by number of labels on {dataset}: mean over seeds, 95 % CI bands",
            )
            tables.append(Section(f"labels-{len(tables)}", f"Label budgets · {dataset}", body))
            continue
        for data in table_data(request.table, runs, request.base, request.backbones, request.sets):
            frame = display_frame(data, "html")
            body = html_table(frame, data.table.title, data.footer)
            anchor = f"{data.table.name}-{len(tables)}"
            tables.append(Section(anchor, f"{data.table.name} · {dataset}", body))
            if data.table.name in METHOD_TABLES:
                method_tables.append((dataset, data))
    sections = list(tables)
    forest = forest_rows(method_tables)
    if len(forest):
        caption = (
            "Gain from the unlabeled images: each stage-2 method's test-R difference from the "
            "equal-compute supervised control of its own parent, 95 % CI over seeds and test "
            "patients, one colour per dataset: "
            + ", ".join(dict.fromkeys(forest["dataset"]))
            + " (Holm family: "
            + ", ".join(METHOD_TABLES)
            + ")"
        )
        sections.append(Section("forest", "Forest plot", figure_html(forest_plot(forest), caption)))
    for dataset, signatures in cells.items():
        mine = runs[runs["cell"].isin(signatures) & (runs["status"] == "ok")]
        for key, ylabel, title in (
            ("val_pearson_r", "validation R", "Validation R over the epochs"),
            (PSEUDO_KEY, "pseudo-label RMSE", "Pseudo-label error over the epochs"),
        ):
            fig = curves_plot(mine, key, ylabel)
            if fig is not None:
                caption = f"{title} on {dataset}: one panel per method, one line per seed"
                anchor = f"{key}-{len(sections)}"
                sections.append(Section(anchor, f"{title} · {dataset}", figure_html(fig, caption)))
    sections.append(Section("failed", "Failed or diverged runs", failed_html(runs)))
    sections.append(
        Section("provenance", "Where the numbers come from", provenance_html(out, runs))
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lead = f"{len(runs)} runs under {out.name}/runs, {len(requests)} grid requests; made {stamp}"
    return page(f"bmdbench report: {out.name}", lead, sections)


def write_report(out: Path, unit: str = "") -> Path:
    """``bmdbench report``: ``out/report.html`` (written atomically)."""
    path = out / "report.html"
    store.write_text(path, build(out, unit))
    return path
