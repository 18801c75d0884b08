"""What ``bmdbench list`` shows: the registered methods and backbones, the presets and the
finished runs, and how a listing is printed.

A listing is a rich table on a terminal. Piped, it is tab-separated lines, header first,
every cell in full: rich lays a table out for 80 columns when it does not write to a
terminal and cuts the names that do not fit ("temporal_…"), which ``grep`` and ``cut`` would
then miss. ``--format json`` gives one object per row.

The registries are imported by the listing that shows them, not with this module: they
import torch (and timm, for the backbones), which ``list presets`` and ``list runs`` do not
need.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bmdbench.config import PRESET_HELP, PRESETS, flatten
from bmdbench.errors import ConfigError

FORMATS = ("table", "tsv", "json")

Rows = tuple[list[str], list[list[str]]]  # headers, then one list of cells per row


def methods() -> Rows:
    """Each registered method: its stage, the stage-1 method it starts from, its
    hyperparameters' defaults, the values presets give them (``Method.presets``) and the
    first line of its docstring."""
    from bmdbench.methods import METHODS  # imports torch: only for this listing

    rows = []
    for name in METHODS:
        method = METHODS.get(name)
        params = method.Params()
        defaults = {k: v for k, v in flatten(asdict(params)).items() if k != "stage1"}
        rows.append(
            [
                name,
                str(method.stage),
                getattr(params, "stage1", None) or "—",
                ", ".join(f"{k}={v}" for k, v in defaults.items()) or "—",
                "; ".join(
                    f"{preset}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                    for preset, values in method.presets.items()
                )
                or "—",
                next(iter((method.__doc__ or "").strip().splitlines()), ""),
            ]
        )
    headers = [
        "method",
        "stage",
        "stage-1 parent",
        "hyperparameter defaults (--set METHOD.KEY=...)",
        "preset values",
        "description",
    ]
    return headers, rows


def backbones(sizes: bool = False) -> Rows:
    """Each registered backbone and the first line of its factory's docstring; with
    ``sizes``, also its embedding size and parameter count for single-channel images,
    measured by building it on the meta device (shapes without memory or initialisation).
    Building imports timm, with torchvision under it: about 2 s more on 2 cores, so a plain
    listing does not build."""
    from bmdbench.backbones import BACKBONES  # imports torch: only for this listing

    headers = ["backbone", "description"]
    rows = [
        [name, next(iter((BACKBONES.get(name).__doc__ or "").strip().splitlines()), "")]
        for name in BACKBONES
    ]
    if not sizes:
        return headers, rows
    import torch

    from bmdbench.backbones import build_backbone, count_parameters

    for row in rows:
        with torch.device("meta"):
            backbone = build_backbone(row[0])
        row[1:1] = [str(backbone.embed_dim), f"{count_parameters(backbone) / 1e6:.2f} M"]
    return ["backbone", "embedding", "parameters", "description"], rows


def presets() -> Rows:
    """Each preset, what it is for and every setting it makes."""
    rows = [
        [name, PRESET_HELP[name], ", ".join(f"{k}={v}" for k, v in flatten(values).items())]
        for name, values in PRESETS.items()
    ]
    return ["preset", "description", "settings"], rows


def show(listing: Callable[[], Rows], fmt: str | None, console: Console) -> None:
    """Print ``listing`` (:func:`methods`, :func:`backbones`, :func:`presets`) as ``fmt``
    (one of :data:`FORMATS`; None: a table on a terminal, else tab-separated). The format
    is checked before the rows are built."""
    fmt = fmt or ("table" if console.is_terminal else "tsv")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    headers, rows = listing()
    if fmt == "json":
        print(json.dumps([dict(zip(headers, row, strict=True)) for row in rows], indent=1))
    elif fmt == "tsv":
        print("\n".join("\t".join(line) for line in [headers, *rows]))
    else:
        table = Table(*headers)
        for row in rows:
            table.add_row(*row)
        console.print(table)


RUN_COLUMNS = {
    "method": "method",
    "backbone": "backbone",
    "preset": "preset",
    "seed": "seed",
    "status": "status",
    "test_pearson_r": "test R",
    "test_rmse": "test RMSE",
    "pseudo_rmse": "pseudo RMSE",
    "pseudo_r": "pseudo R",
    "pseudo_refreshes": "refreshes",
}
"""The run store's columns ``list runs`` shows, and their headers."""


def show_runs(out: Path, csv: bool, console: Console) -> None:
    """The finished runs under ``out``: every column of the store as CSV, or a table of
    :data:`RUN_COLUMNS`."""
    import pandas as pd  # pandas and the store: only for this listing

    from bmdbench.results import load_runs

    runs = load_runs(out)
    if csv:
        print(runs.to_csv(index=False), end="")
        return
    shown = [c for c in RUN_COLUMNS if c in runs.columns]
    table = Table(*(RUN_COLUMNS[c] for c in shown), title=f"{len(runs)} runs in {out / 'runs'}")
    for _, row in runs.iterrows():
        table.add_row(
            *(
                "—" if pd.isna(v) else f"{v:.4f}" if isinstance(v, float) else str(v)
                for v in row[shown]
            )
        )
    console.print(table)
