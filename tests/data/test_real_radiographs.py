"""The real-radiograph path of the README (RSNA bone age): a manifest of images with targets in
months and a unit column, z-scored targets, fixed validation and test sets by patient, label
budgets from the rest and the remainder unlabeled. A small generated manifest stands in for the
shared data, which tests never read."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bmdbench import store


def bone_age_manifest(folder, n=64):
    """``n`` hand-radiograph stand-ins, one patient each, bone age 20–220 months carried by
    the pixels' texture, as the RSNA manifest's columns plus ``unit``."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    rows = []
    for i in range(n):
        months = float(rng.uniform(20, 220))
        texture = rng.normal(0, 1, (40, 40)) * (months / 220) * 60 + 128
        Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
        rows.append({"image": f"{i}.png", "target": round(months), "patient_id": i,
                     "sex": "F", "unit": "months"})  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def bmdbench(*args):
    done = subprocess.run(
        [sys.executable, "-m", "bmdbench.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_label_budgets_on_a_bone_age_manifest(tmp_path):
    manifest = bone_age_manifest(tmp_path / "hands")
    assert "months" in bmdbench("data", "check", manifest)
    out = tmp_path / "results"
    options = ["--methods", "baseline,pi_model", "--n-labeled", "16,24", "--backbones", "tiny"]
    options += ["--preset", "smoke", "--data", manifest, "--out", out]
    options += ["--set", "target_norm=zscore", "--set", "split.val=12", "--set", "split.test=12"]
    bmdbench("grid", "labels", *options, "--seeds", "1", "--device", "cpu")
    records = list(store.iter_records(out))
    assert len(records) == 7  # 2 budgets × (baseline, pi_model, its control) + the ceiling
    held_out = set()
    for record in records:
        split = json.loads((store.runs_dir(out) / record.name / "split.json").read_text())
        held_out.add((tuple(sorted(split["val"])), tuple(sorted(split["test"]))))
        assert record.data.unit == "months" and record.config["target_norm"] == "zscore"
        labeled, budget = record.data.sizes["train"], record.config["split"]["train"]
        assert labeled == (40 if budget is None else budget)
        # the labeled images a budget leaves out are the unlabeled ones; val and test never
        assert record.data.sizes["unlabeled"] == 40 - labeled
        assert not set(split["unlabeled"]) & (set(split["val"]) | set(split["test"]))
        # metrics are in months (the targets' SD is about 58), not in z-units (about 1)
        assert record.metrics["test"]["rmse"] > 5
    assert len(held_out) == 1  # the same validation and test images at every budget
    bmdbench("table", "labels", *options)
    # named after the manifest's folder, beside any other dataset's curve
    assert (out / "figures" / "labels-hands.png").exists()
    tidy = pd.read_csv(out / "tables" / "labels-hands.csv", comment="#")
    assert list(tidy["n_labeled"]) == [16, 16, 16, 24, 24, 24, 40]
