"""Statistics by hand, the store query, and the Markdown / LaTeX / CSV tables."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from bmdbench import store
from bmdbench.config import to_dict
from bmdbench.experiments import METHOD_TABLES, TABLES, family, table_cells
from bmdbench.methods import METHODS
from bmdbench.results import load_runs
from bmdbench.spec import RunSpec
from bmdbench.statistics import STAT_COLUMNS
from bmdbench.tables import build, display_frame, to_csv, to_latex, to_markdown

BASE = RunSpec("", "", "smoke", device="cpu")
TRUTH = np.linspace(0.5, 1.0, 40)


def fake_run(
    out, cell: RunSpec, pred: np.ndarray, selected_epoch: int = 3, unit: str = "g/cm²"
) -> None:
    """A finished run record as the runner writes it (no training); stage-2 methods get a
    parent run."""
    cfg = cell.config
    name = f"{cell.method}-{cell.backbone}-s{cell.seed}-{cell.key[:6]}"
    run_dir = store.runs_dir(out) / name
    run_dir.mkdir(parents=True)
    ids = [f"img{i}" for i in range(TRUTH.size)]
    patients = [f"p{i // 2}" for i in range(TRUTH.size)]  # two images per patient
    pd.DataFrame({"id": ids, "patient": patients, "target": TRUTH, "prediction": pred}).to_csv(
        run_dir / "predictions_test.csv", index=False
    )
    epochs = [{"epoch": e, "loss_loss": 1.0 / e, "val_pearson_r": 0.1 * e} for e in (1, 2, 3)]
    (run_dir / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    metrics = {
        "pearson_r": float(np.corrcoef(TRUTH, pred)[0, 1]),
        "rmse": 0.1,
        "ba_bias": float(np.mean(pred - TRUTH)),
    }
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
        "parent_run": f"parent-s{cell.seed}" if METHODS.get(cell.method).stage == 2 else None,
        "selected_epoch": selected_epoch,
        "data": {
            "source": "synthetic",
            "fingerprint": "fp",
            "split_fingerprint": f"sp{cell.seed}" if cfg.split.redraw else "sp",
            "sizes": {},
            "unit": unit,
            "target_mean": 0.75,
            "target_sd": 0.2,
        },
        "metrics": {"val": metrics, "test": metrics},
        "diagnostics": {"pseudo_refreshes": 2.0} if cell.method == "proposed" else {},
        "timings": {"total_s": 1.0},
        "versions": {},
        "device": "cpu",
        "git_sha": "abc",
        "created": "now",
        "format": 1,
    }
    store.write_json(run_dir / store.RECORD, record)


def write_runs(out, table: str, seeds: int, sets=None, noise=None, keep=None, skip=None, **kw):
    """Fake runs of every cell of ``table``: ``noise(cell)`` sets the prediction noise,
    ``keep(cell)`` whether the run selected its stage-1 weights, ``skip(cell)`` leaves it out."""
    rng = np.random.default_rng(0)
    cells = table_cells([TABLES[table]], seeds, sets or {}, BASE, "tiny")
    for cell in cells:
        if skip is not None and skip(cell):
            continue
        sd = noise(cell) if noise else 0.05
        selected = 0 if keep is not None and keep(cell) else 3
        fake_run(out, cell, TRUTH + rng.normal(0, sd, TRUTH.size), selected, **kw)
    return cells


def signatures(table: str, sets=None) -> dict:
    """Every cell of the table's Holm family → its signature, as ``bmdbench table`` names them."""
    _, members = family(TABLES[table])
    names = METHOD_TABLES if table in METHOD_TABLES else (table,)
    out = {}
    for name in names:
        specs = table_cells([TABLES[name]], 1, sets or {}, BASE, "tiny")
        out.update({tc: s.signature for tc, s in zip(TABLES[name].cells, specs, strict=True)})
    assert set(members) <= set(out)
    return out


def _build(out, table: str, sets=None):
    return build(TABLES[table], load_runs(out), signatures(table, sets))


ORDER4 = [tc.method for tc in TABLES["table4"].cells]


@pytest.fixture
def table4_runs(tmp_path):
    write_runs(
        tmp_path,
        "table4",
        3,
        noise=lambda c: 0.07 - 0.004 * ORDER4.index(c.method),  # Proposed is the best
        # Proposed kept its stage-1 weights with every seed, SSL with seed 0 only
        keep=lambda c: c.method == "proposed" or (c.method == "pseudo_label" and c.seed == 0),
    )
    return tmp_path


def _table4(out):
    return _build(out, "table4")


def test_store_query_has_one_row_per_run(table4_runs):
    runs = load_runs(table4_runs)
    assert len(runs) == 24 and set(runs["seed"]) == {0, 1, 2}  # 8 cells, controls included
    assert {
        "test_pearson_r",
        "test_ba_bias",
        "val_rmse",
        "hp.weight",
        "cell",
        "data_fingerprint",
        "target_sd",
        "target_norm",
        "split_redraw",
        "selected_epoch",
        "pseudo_refreshes",
    } <= set(runs.columns)
    assert runs.groupby("cell").size().tolist() == [3] * 8


def test_latex_is_booktabs_with_balanced_rows_and_notes(table4_runs):
    data = _table4(table4_runs)
    tex = to_latex(data)
    for env in ("table", "tabular"):
        assert tex.count(f"\\begin{{{env}}}") == tex.count(f"\\end{{{env}}}") == 1
    assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0]
    header = tex.split("\\toprule")[1].split("\\midrule")[0]
    rows = [line for line in (header + body).splitlines() if line.strip().endswith("\\\\")]
    assert len(rows) == 9  # header + eight cells
    assert len({row.count("&") for row in rows}) == 1
    significant = (data.tidy[["control_p_holm", "base_p_holm"]] < 0.05).to_numpy().sum()
    assert tex.count("\\textbf{") == significant  # bold: significant ΔR, nothing else
    assert "seeds 0, 1, 2" in tex and "\\dag{}" in tex
    notes = tex.split("\\end{tabular}")[1]
    assert notes.count("\\footnotesize") == len(data.footer.splitlines())
    assert "Power (80 \\%, $\\alpha$ = 0.05" in notes and "λ" not in tex and "†" not in tex


def test_markdown_and_csv_carry_the_statistics(table4_runs):
    data = _table4(table4_runs)
    md = to_markdown(data)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 10 and len({row.count("|") for row in rows}) == 1
    assert "0.8805" in md and "Proposed w/o Consistency" in md  # the paper's, beside BMD
    frame = pd.read_csv(io.StringIO(to_csv(data)), comment="#")
    assert frame["label"].iloc[0] == "Baseline" and (frame["seeds"] == 3).all()
    assert set(STAT_COLUMNS) <= set(frame.columns)
    by = frame.set_index("label")
    # every stage-2 cell against its own parent's control; every cell against the baseline
    assert (
        by.loc["SSL", "control"] == "Control" and by.loc["Proposed", "control"] == "Control (ATL)"
    )
    assert by["control_p"].notna().sum() == 4 and by["base_p"].notna().sum() == 7
    assert np.isnan(by.loc["Baseline + ATL", "control_p"])  # stage 1: no control
    assert by.loc["Proposed", "refreshes"] == 2 and np.isnan(by.loc["SSL", "refreshes"])
    assert by.loc["Proposed", "bias_mean"] == pytest.approx(
        load_runs(table4_runs).query("method == 'proposed'")["test_ba_bias"].mean()
    )
    assert (by.loc[by["base_p"].notna(), "base_mde"] > 0).all()
    # stage 1 kept: Proposed 3 of 3 (marked), SSL 1 of 3, stage-1 cells not counted
    assert by.loc["Proposed", "n_selected_stage1"] == 3 and by.loc["SSL", "n_selected_stage1"] == 1
    shown = display_frame(data, "md")
    assert shown.loc["Proposed", "stage 1 kept"] == "3/3" and shown.loc["Proposed", "R"].endswith(
        "†"
    )
    assert shown.loc["SSL", "stage 1 kept"] == "1/3" and not shown.loc["SSL", "R"].endswith("†")
    assert shown.loc["Baseline", "stage 1 kept"] == "n/a"
    assert shown.loc["Baseline", "ΔR vs Baseline"] == "reference"
    assert shown.loc["Proposed", "refreshes"] == "2.0" and shown.loc["SSL", "refreshes"] == ""
    for line in ("Power (80 %", "Holm family 'methods'", "† every seed kept", "B = 2000"):
        assert line in md and line in to_csv(data)
    # the hyperparameters each method's runs had, stage-1 parents left out
    hyper = next(line for line in data.footer.splitlines() if line.startswith("Hyperparameters"))
    assert "Baseline + ATL: margin=0.5, weight=0.5;" in hyper and "stage1" not in hyper
    assert hyper.endswith("Proposed: consistency_weight=1, margin=0.5, weight=0.5.")


def test_the_holm_family_spans_the_methods_tables(tmp_path):
    """Proposed vs its control is one comparison with one p in Tables 2 and 4 and sota."""
    for table in ("table2", "table4", "sota"):
        write_runs(
            tmp_path,
            table,
            3,
            skip=lambda c, t=table: (
                t != "table2"
                and c.method
                in (
                    "baseline",
                    "control",
                    "control_atl",
                    "pi_model",
                    "temporal_ensembling",
                    "mean_teacher",
                    "proposed",
                )
            ),
        )  # each cell written once
    found = {t: _build(tmp_path, t).tidy.set_index("label") for t in ("table2", "table4", "sota")}
    p = {t: found[t].loc["Proposed", "control_p_holm"] for t in found}
    assert len(set(p.values())) == 1 and not np.isnan(p["table2"])
    ci = {t: found[t].loc["Proposed", "r_ci_low"] for t in found}
    assert len(set(ci.values())) == 1
    # the family: Table 2's 4 + Table 4's SSL, SSL + ATL, w/o consistency + sota's 7 later ones
    tested = found["sota"]["control_p"].notna().sum()
    assert tested == 11 and "14 against controls" in _build(tmp_path, "table4").footer


def test_bold_only_where_holm_says_significant(tmp_path):
    write_runs(
        tmp_path,
        "table2",
        5,
        noise=lambda c: {"mean_teacher": 0.005, "control": 0.15}.get(c.method, 0.15),
    )
    data = _build(tmp_path, "table2")
    shown = display_frame(data, "md")
    tidy = data.tidy.set_index("label")
    assert tidy.loc["Mean Teacher", "control_p_holm"] < 0.05
    assert shown.loc["ΔR vs Control", "Mean Teacher"].startswith("**+")
    for label in ("Π-model", "Temp. Ensemble", "Proposed"):
        assert tidy.loc[label, "control_p_holm"] >= 0.05
        assert not shown.loc["ΔR vs Control", label].startswith("**")
    assert not any(str(v).startswith("**") for v in shown.loc["R"])  # R is never bold
    assert "Bold ΔR: Holm p < 0.05; nothing else is bold" in data.footer


def test_nothing_is_bold_without_a_significant_difference(tmp_path):
    write_runs(tmp_path, "table2", 3)  # every cell alike
    md = to_markdown(_build(tmp_path, "table2"))
    assert "**" not in md.split("\n", 1)[1]  # the title's bold aside


def test_no_p_under_three_paired_seeds_and_pairing(tmp_path):
    write_runs(
        tmp_path,
        "table2",
        4,
        skip=lambda c: (
            (c.method == "proposed" and c.seed >= 2)
            or (c.method == "temporal_ensembling" and c.seed == 0)
            or (c.method == "baseline" and c.seed == 3)
        ),
    )
    data = _build(tmp_path, "table2")
    tidy = data.tidy.set_index("label")
    shown = display_frame(data, "md")
    assert (
        np.isnan(tidy.loc["Proposed", "control_p"]) and tidy.loc["Proposed", "control_paired"] == 2
    )
    assert shown.loc["p vs Control (Holm)", "Proposed"] == "—"
    assert tidy.loc["Temp. Ensemble", "base_paired"] == 2  # seeds 1, 2 of 1, 2, 3
    assert "Temp. Ensemble: ΔR paired on the 2 seeds it shares with Baseline" in data.footer


def test_paper_values_only_beside_bmd_and_data_named_by_file(tmp_path):
    months = tmp_path / "months"
    write_runs(months, "table2", 3, unit="months")
    for record in store.runs_dir(months).glob("*/record.json"):
        data = json.loads(record.read_text())
        data["data"]["source"] = "/home/someone/xrays/manifest.csv"
        store.write_json(record, data)
    built = _build(months, "table2")
    md = to_markdown(built)
    assert "0.8805" not in md and "R (paper)" not in md and built.tidy["paper_r"].isna().all()
    assert "targets in months" in built.footer and "Measured on manifest.csv" in built.footer
    assert "/home/someone" not in md + to_latex(built) + to_csv(built)


def test_a_unit_for_a_manifest_without_one(tmp_path):
    write_runs(tmp_path, "table2", 3, unit="")
    unnamed = _build(tmp_path, "table2")
    assert "the unit the manifest does not name" in unnamed.footer
    named = build(TABLES["table2"], load_runs(tmp_path, "months"), signatures("table2"))
    assert "targets in months" in named.footer and named.tidy["paper_r"].isna().all()
    write_runs(tmp_path / "bmd", "table2", 3)  # a record's own unit stays
    assert set(load_runs(tmp_path / "bmd", "months")["unit"]) == {"g/cm²"}


def test_five_seeds_with_the_data_draw_redrawn(tmp_path):
    sets = {"split.redraw": "true"}
    write_runs(tmp_path, "table2", 5, sets=sets)
    data = _build(tmp_path, "table2", sets)
    tested = data.tidy["base_p"].notna()
    assert tested.sum() == 6 and (data.tidy["base_paired"][tested] == 5).all()
    assert "labeled subset redrawn per seed" in data.footer
    assert "paired by seed and labeled-subset draw" in data.footer


def test_table_without_runs_shows_dashes(tmp_path):
    data = _table4(tmp_path)
    assert "—" in to_markdown(data) and data.tidy["seeds"].sum() == 0


def test_a_table_that_finds_none_of_the_stores_runs_warns(table4_runs):
    from rich.console import Console

    from bmdbench.tables import publish

    quiet = Console(file=io.StringIO())
    with pytest.warns(UserWarning, match="none of the 24 runs in the store is in a cell of table4"):
        publish("table4", table4_runs, BASE, ["tiny"], {"split.seed": "5"}, ["md"], quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the grid's own options find its runs: no warning
        publish("table4", table4_runs, BASE, ["tiny"], {}, ["md"], quiet)


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
    assert listed.exit_code == 0 and len(listed.stdout.strip().splitlines()) == 25
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
    made = runner.invoke(app, args)
    assert made.exit_code == 0, made.output
    folder = table4_runs / "tables"
    md, tex = (folder / "table4.md").read_text(), (folder / "table4.tex").read_text()
    frame = pd.read_csv(folder / "table4.csv", comment="#")
    assert "p vs Control (Holm)" in md and "stage 1 kept" in md
    assert "Power (80 %" in md and "† every seed kept" in md
    assert "p vs Control (Holm)" in tex and "\\dag{}" in tex and "Power (80 \\%" in tex
    assert {"control_p", "control_p_holm", "base_mde", "n_selected_stage1"} <= set(frame.columns)
    notes = [
        line[2:] for line in (folder / "table4.csv").read_text().splitlines() if line[:2] == "# "
    ]
    assert len(notes) >= 4 and all(note in md for note in notes)


def test_table3_keeps_triplet_and_atl_apart(tmp_path):
    rng = np.random.default_rng(2)
    cells = table_cells([TABLES["table3"]], 1, {}, BASE, "tiny")
    for cell in cells:
        noise = 0.02 if cell.method == "atl" else 0.2
        fake_run(tmp_path, cell, TRUTH + rng.normal(0, noise, TRUTH.size))
    data = build(TABLES["table3"], load_runs(tmp_path), signatures("table3"))
    tidy = data.tidy.set_index(["group", "label"])
    assert tidy.loc[("ATL", "0.5"), "r_mean"] > tidy.loc[("Triplet Loss", "0.5"), "r_mean"] + 0.1
    assert (data.tidy["seeds"] == 1).all()
    md = to_markdown(data)
    assert "Baseline (no triplet term)" in md and md.count("\n| 0.") == 4 and "\n| 1.0 " in md
    assert "λ raw" not in md  # raw targets: the margins are the paper's scale already


def test_table3_shows_raw_scale_margins_for_z_scored_targets(tmp_path):
    sets = {"target_norm": "zscore"}
    write_runs(tmp_path, "table3", 1, sets=sets)
    data = _build(tmp_path, "table3", sets)
    tidy = data.tidy.set_index(["group", "label"])
    sigma2 = 0.2**2  # the fake records' target SD
    weight = tidy.loc[("ATL", "0.5"), "lambda_raw"] / sigma2
    assert weight == pytest.approx(0.5)  # λ = 0.5 (TripletParams' default) → λσ²
    assert tidy.loc[("ATL", "0.5"), "margin_raw"] == pytest.approx(0.5 / sigma2)  # m/σ²
    assert tidy.loc[("Triplet Loss", "0.3"), "margin_raw"] == pytest.approx(0.3)  # α = 1: m
    assert np.isnan(tidy.loc[("Baseline", "Baseline"), "lambda_raw"])
    shown = display_frame(data, "md")
    assert (
        shown.loc["0.5", ("ATL", "m raw")] == "12.5"
        and shown.loc["0.5", ("ATL", "λ raw")] == "0.02"
    )
    assert "z-scored target scale, not the paper's" in data.footer
    assert "$\\lambda$ raw" in to_latex(data)


def test_cells_with_identical_predictions_get_identical_intervals(tmp_path):
    """A cell that kept its parent's weights shows its parent's interval exactly."""
    rng = np.random.default_rng(1)
    preds = {seed: TRUTH + rng.normal(0, 0.05, TRUTH.size) for seed in range(3)}
    for cell in table_cells([TABLES["table2"]], 3, {}, BASE, "tiny"):
        fake_run(tmp_path, cell, preds[cell.seed], selected_epoch=0)
    stats = _build(tmp_path, "table2").tidy
    assert stats["r_ci_low"].nunique() == 1 and stats["r_ci_high"].nunique() == 1
    assert (stats["base_delta"].dropna() == 0).all() and (
        stats["control_delta"].dropna() == 0
    ).all()


def test_the_footer_marks_runs_of_uncommitted_source(tmp_path):
    write_runs(tmp_path, "table2", 3)
    first = next(store.runs_dir(tmp_path).glob("pi_model-*"))
    record = json.loads((first / store.RECORD).read_text())
    record["git_sha"] = "0123456789abcdef-dirty"
    store.write_json(first / store.RECORD, record)
    assert "git 0123456789-dirty, abc;" in _build(tmp_path, "table2").footer


def test_table_takes_the_preset_of_the_stores_runs(table4_runs, tmp_path):
    from typer.testing import CliRunner

    from bmdbench.cli import app

    runner = CliRunner()
    args = ["table", "table4", "--backbones", "tiny", "--format", "md"]
    made = runner.invoke(app, [*args, "--out", str(table4_runs)])
    assert made.exit_code == 0, made.output
    assert "preset smoke: the preset of the runs under" in made.output
    assert "0.0" in (table4_runs / "tables" / "table4.md").read_text()  # cells were found
    # a store of two presets names them; an empty one says what to do; neither writes
    record = next(store.runs_dir(table4_runs).glob("*/record.json"))
    data = json.loads(record.read_text())
    store.write_json(record, {**data, "preset": "quick"})
    mixed = runner.invoke(app, [*args, "--out", str(table4_runs)])
    # (the console script's main turns a BmdError into one line and exit status 2)
    assert "several presets (quick, smoke)" in str(mixed.exception)
    empty = runner.invoke(app, [*args, "--out", str(tmp_path / "empty")])
    assert "no finished runs under" in str(empty.exception)
    assert not (tmp_path / "empty" / "tables").exists()
