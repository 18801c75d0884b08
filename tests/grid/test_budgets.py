"""Label-budget grids: their cells, and `grid labels` → `table labels` end to end on smoke."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from bmdbench import store
from bmdbench.errors import ConfigError
from bmdbench.experiments import budget_cells, cells_for, parse_budgets, with_parents
from bmdbench.spec import RunSpec

BASE = RunSpec("", "tiny", "smoke", device="cpu")


def test_budgets_parse_and_refuse_nonsense():
    assert parse_budgets("200,50,100") == [50.0, 100.0, 200.0]
    for bad in ("", "50,x", "50,50", "0,10", "-5"):
        with pytest.raises(ConfigError, match="--n-labeled"):
            parse_budgets(bad)


def test_each_budget_has_its_own_parents_and_the_same_evaluation_images():
    cells = budget_cells(["mean_teacher"], [12.0, 20.0], 2, {}, BASE)
    # the baseline comes in as the reference, the control of mean teacher's parent after the
    # methods, then the ceiling: the baseline on every label
    assert [(c.method, dict(c.settings).get("split.train")) for c in cells[::2]] == [
        ("baseline", 12.0), ("mean_teacher", 12.0), ("control", 12.0),
        ("baseline", 20.0), ("mean_teacher", 20.0), ("control", 20.0), ("baseline", None),
    ]  # fmt: skip
    parents = {c.parent().key for c in cells if c.method == "mean_teacher"}
    assert len(parents) == 4  # 2 budgets × 2 seeds
    assert parents <= {c.key for c in with_parents(cells)}
    splits = {(c.config.split.val, c.config.split.test, c.config.split.seed) for c in cells}
    assert len(splits) == 1
    with pytest.raises(ConfigError, match="varies"):
        budget_cells(["baseline"], [12.0], 1, {"split.train": "10"}, BASE)
    with pytest.raises(ConfigError, match="label-budget grid"):
        cells_for(None, ["baseline"], ["tiny"], 1, {}, BASE, [12.0])


def bmdbench(*args):
    return subprocess.run(
        [sys.executable, "-m", "bmdbench.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_grid_then_table_and_figure_on_smoke(tmp_path):
    options = ["--methods", "baseline,pi_model", "--n-labeled", "12,20", "--backbones", "tiny"]
    options += ["--preset", "smoke", "--out", tmp_path]
    done = bmdbench("grid", "labels", *options, "--seeds", "2", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    # 2 budgets × (2 methods + the control) × 2 seeds + 2 ceiling
    assert "14 of 14 cells done" in done.stdout
    # the validation and test images are the same at every budget; the training images not
    # in a budget are unlabeled images
    for record in store.iter_records(tmp_path):
        split = json.loads((store.runs_dir(tmp_path) / record.name / "split.json").read_text())
        assert (len(split["val"]), len(split["test"])) == (12, 12)
        budget = record.config["split"]["train"]
        assert record.data.sizes["train"] == (24 if budget is None else budget)
        assert record.data.sizes["unlabeled"] == 24 + 24 - record.data.sizes["train"]

    shown = bmdbench("table", "labels", *options)
    assert shown.returncode == 0, shown.stderr
    tidy = pd.read_csv(tmp_path / "tables" / "labels.csv", comment="#")
    assert list(zip(tidy["budget"], tidy["method"], strict=True)) == [
        ("12", "baseline"), ("12", "pi_model"), ("12", "control"),
        ("20", "baseline"), ("20", "pi_model"), ("20", "control"), ("all", "baseline"),
    ]  # fmt: skip
    assert list(tidy["n_labeled"]) == [12, 12, 12, 20, 20, 20, 24]
    assert (tidy["seeds"] == 2).all()
    assert tidy.loc[[1, 2, 4, 5], "base_delta"].notna().all()
    assert tidy.loc[[0, 3, 6], "base_delta"].isna().all()
    # Π-model against the control of its budget; the control itself has none
    assert tidy.loc[[1, 4], "control_delta"].notna().all()
    assert tidy.loc[[0, 2, 3, 5, 6], "control_delta"].isna().all()
    markdown = (tmp_path / "tables" / "labels.md").read_text()
    assert "| 12 · pi_model" in markdown and "| all · baseline" in markdown
    assert "Data synthetic (data " in markdown and "targets in g/cm²" in markdown
    assert (tmp_path / "tables" / "labels.tex").exists()
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"labels.png", "labels.pdf"}
