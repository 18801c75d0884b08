"""Statistics by hand, the store query, and the Markdown / LaTeX / CSV tables."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from bmdbench import store
from bmdbench.config import to_dict
from bmdbench.grid import Cell, table_cells
from bmdbench.paper_tables import TABLES
from bmdbench.results import Predictions, cell_stats, load_runs, signature
from bmdbench.tables import build, to_csv, to_latex, to_markdown

BASE = Cell("", "", 0, "smoke", device="cpu")
TRUTH = np.linspace(0.5, 1.0, 40)


def fake_run(out, cell: Cell, pred: np.ndarray) -> None:
    """A finished run record as the runner writes it (no training)."""
    cfg = cell.config()
    name = f"{cell.method}-{cell.backbone}-s{cell.seed}-{cell.key[:6]}"
    run_dir = store.runs_dir(out) / name
    run_dir.mkdir(parents=True)
    ids = [f"img{i}" for i in range(TRUTH.size)]
    pd.DataFrame({"id": ids, "target": TRUTH, "prediction": pred}).to_csv(
        run_dir / "predictions_test.csv", index=False
    )
    epochs = [{"epoch": e, "loss_loss": 1.0 / e, "val_pearson_r": 0.1 * e} for e in (1, 2, 3)]
    (run_dir / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    metrics = {"pearson_r": float(np.corrcoef(TRUTH, pred)[0, 1]), "rmse": 0.1}
    record = {
        "name": name,
        "method": cell.method,
        "backbone": cell.backbone,
        "preset": cell.preset,
        "seed": cell.seed,
        "status": "ok",
        "error": None,
        "config": to_dict(cfg),
        "config_hash": cell.key,
        "parent_run": None,
        "selected_epoch": 3,
        "data": {
            "source": "synthetic",
            "fingerprint": "fp",
            "split_fingerprint": "sp",
            "sizes": {},
            "unit": "g/cm²",
        },
        "metrics": {"val": metrics, "test": metrics},
        "diagnostics": {},
        "timings": {"total_s": 1.0},
        "device": "cpu",
        "git_sha": "abc",
        "created": "now",
    }
    store.write_json(run_dir / store.RECORD, record)


def test_mean_sd_and_ci_by_hand():
    noise = np.array([np.sin(np.arange(40)), np.cos(np.arange(40))]) * 0.05
    pred = TRUTH + noise
    st = cell_stats(Predictions(np.arange(40).astype(str), TRUTH, pred, (0, 1)))
    r = [np.corrcoef(TRUTH, p)[0, 1] for p in pred]
    rmse = [np.sqrt(np.mean((p - TRUTH) ** 2)) for p in pred]
    assert st.r_mean == pytest.approx(np.mean(r)) and st.r_sd == pytest.approx(np.std(r, ddof=1))
    assert st.rmse_mean == pytest.approx(np.mean(rmse))
    assert st.rmse_sd == pytest.approx(abs(rmse[0] - rmse[1]) / np.sqrt(2))
    assert st.r_ci[0] < st.r_mean < st.r_ci[1] <= 1
    assert st.rmse_ci[0] < st.rmse_mean < st.rmse_ci[1]


def test_paired_test_sees_a_real_difference_and_no_difference():
    ids = np.arange(40).astype(str)
    rng = np.random.default_rng(1)
    good = Predictions(ids, TRUTH, TRUTH + rng.normal(0, 0.02, (1, 40)), (0,))
    bad = Predictions(ids, TRUTH, TRUTH + rng.normal(0, 0.3, (1, 40)), (0,))
    better = cell_stats(good, reference=bad)
    assert better.delta_r > 0.3 and better.p_value < 0.01
    same = cell_stats(good, reference=good)
    assert same.delta_r == 0 and same.p_value == 1.0
    single = cell_stats(good)
    assert np.isnan(single.r_sd) and single.p_value is None


@pytest.fixture
def table4_runs(tmp_path):
    rng = np.random.default_rng(0)
    cells = table_cells([TABLES["table4"]], 2, {}, BASE, "tiny")
    for i, cell in enumerate(cells):
        noise = 0.05 + 0.01 * (len(cells) - i) / 2
        fake_run(tmp_path, cell, TRUTH + rng.normal(0, noise, TRUTH.size))
    return tmp_path


def _table4(out):
    one_seed = table_cells([TABLES["table4"]], 1, {}, BASE, "tiny")
    return build(
        TABLES["table4"], load_runs(out), [signature(to_dict(c.config())) for c in one_seed]
    )


def test_store_query_has_one_row_per_run(table4_runs):
    runs = load_runs(table4_runs)
    assert len(runs) == 12 and set(runs["seed"]) == {0, 1}
    assert {"test_pearson_r", "val_rmse", "hp.weight", "cell", "data_fingerprint"} <= set(
        runs.columns
    )
    assert runs.groupby("cell").size().tolist() == [2] * 6


def test_latex_is_booktabs_with_balanced_rows(table4_runs):
    tex = to_latex(_table4(table4_runs))
    for env in ("table", "tabular"):
        assert tex.count(f"\\begin{{{env}}}") == tex.count(f"\\end{{{env}}}") == 1
    assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0]
    header = tex.split("\\toprule")[1].split("\\midrule")[0]
    rows = [line for line in (header + body).splitlines() if line.strip().endswith("\\\\")]
    assert len(rows) == 7  # header + six cells
    assert {row.count("&") for row in rows} == {7}
    assert tex.count("\\textbf{") == 2  # best R and best RMSE
    assert "seeds 0, 1" in tex


def test_markdown_and_csv(table4_runs):
    data = _table4(table4_runs)
    md = to_markdown(data)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 8 and len({row.count("|") for row in rows}) == 1
    assert "0.8805" in md and "Proposed w/o Consistency" in md
    frame = pd.read_csv(__import__("io").StringIO(to_csv(data)), comment="#")
    assert frame["label"].iloc[0] == "Baseline" and (frame["seeds"] == 2).all()
    best = frame.loc[frame["r_mean"].idxmax(), "label"]
    assert re.search(rf"\*\*{frame['r_mean'].max():.4f}", md) and best


def test_table_without_runs_shows_dashes(tmp_path):
    data = _table4(tmp_path)
    assert "—" in to_markdown(data) and data.tidy["seeds"].sum() == 0


def test_plot_writes_figure2_bland_altman_and_learning_curve(table4_runs, tmp_path):
    from bmdbench.plots import plot_run

    run_dir = next(
        p for p in store.runs_dir(table4_runs).iterdir() if p.name.startswith("proposed")
    )
    written = plot_run(run_dir, tmp_path / "figs")
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{n}.{e}" for n in ("scatter", "bland_altman", "learning_curve") for e in ("png", "pdf")
    )
    assert all(p.stat().st_size > 1000 for p in written)
    assert (tmp_path / "figs" / "scatter.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_lists_runs_and_writes_tables(table4_runs):
    from typer.testing import CliRunner

    from bmdbench.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["list", "runs", "--out", str(table4_runs), "--csv"])
    assert listed.exit_code == 0 and len(listed.stdout.strip().splitlines()) == 13
    args = [
        "table",
        "table4",
        "--preset",
        "smoke",
        "--backbones",
        "tiny",
        "--out",
        str(table4_runs),
    ]
    made = runner.invoke(app, [*args, "--format", "latex"])
    assert made.exit_code == 0, made.output
    assert (table4_runs / "tables" / "table4.tex").read_text().count("\\bottomrule") == 1
    assert not (table4_runs / "tables" / "table4.md").exists()


def test_table3_keeps_triplet_and_atl_apart(tmp_path):
    rng = np.random.default_rng(2)
    cells = table_cells([TABLES["table3"]], 1, {}, BASE, "tiny")
    for cell in cells:
        noise = 0.02 if cell.method == "atl" else 0.2
        fake_run(tmp_path, cell, TRUTH + rng.normal(0, noise, TRUTH.size))
    data = build(
        TABLES["table3"], load_runs(tmp_path), [signature(to_dict(c.config())) for c in cells]
    )
    tidy = data.tidy.set_index(["group", "label"])
    assert tidy.loc[("ATL", "0.5"), "r_mean"] > tidy.loc[("Triplet Loss", "0.5"), "r_mean"] + 0.1
    assert (data.tidy["seeds"] == 1).all()
    md = to_markdown(data)
    assert "Baseline (no triplet term)" in md and md.count("\n| 0.") == 4 and "\n| 1.0 " in md
