"""End-to-end runs on a tiny in-memory dataset: run records, selection, reuse, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bmdbench import runner, store
from bmdbench.backbones import backbone_names
from bmdbench.data import sources
from bmdbench.errors import RunFailed
from bmdbench.methods.supervised import Baseline
from bmdbench.metrics import METRIC_KEYS
from bmdbench.runner import execute
from bmdbench.spec import resolve

SMALL = {"split.val": "8", "split.test": "8", "stage1.epochs": "3", "stage2.epochs": "2"}


@pytest.fixture(autouse=True)
def tiny_data(monkeypatch, imageset_factory):
    monkeypatch.setattr(sources, "load_images", lambda cfg: imageset_factory())


def run(method="atl", seed=0, **overrides):
    cfg = resolve(method, "tiny", "smoke", {**SMALL, **overrides}, seed=seed, device="cpu")
    return cfg


def test_run_record_and_files(tmp_path):
    outcome = execute(run(), tmp_path, show_progress=False)
    files = {p.name for p in outcome.run_dir.iterdir()}
    assert files == {
        "record.json", "config.json", "split.json", "epochs.jsonl", "checkpoint.pt",
        "predictions_val.csv", "predictions_test.csv",
    }  # fmt: skip
    record = store.read_record(outcome.run_dir)
    assert record.status == "ok" and record.method == "atl"
    assert set(record.metrics) == {"val", "test"}
    assert set(record.metrics["test"]) == set(METRIC_KEYS)
    assert record.data.sizes == {"train": 24, "val": 8, "test": 8, "unlabeled": 16}
    assert len(record.config_hash) == 64 and record.git_sha
    epochs = [
        json.loads(line) for line in (outcome.run_dir / "epochs.jsonl").read_text().splitlines()
    ]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert {"loss_loss", "loss_mse", "loss_triplet", "lr", "val_pearson_r"} <= set(epochs[0])
    # the selected checkpoint is the epoch with the best validation R, and all metrics come from it
    best = max(epochs, key=lambda e: e["val_pearson_r"])
    assert record.selected_epoch == best["epoch"]
    assert record.metrics["val"]["pearson_r"] == pytest.approx(best["val_pearson_r"])
    assert not list(tmp_path.glob("runs/.*")), "no temporary directory is left behind"


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a = execute(run(seed=1), tmp_path / "a", show_progress=False).record.metrics
    b = execute(run(seed=1), tmp_path / "b", show_progress=False).record.metrics
    c = execute(run(seed=2), tmp_path / "c", show_progress=False).record.metrics
    assert a == b
    assert a != c


def test_stage2_reuses_its_stage1_run(tmp_path):
    first = execute(run("proposed"), tmp_path, show_progress=False)
    parent_dir = tmp_path / "runs" / first.record.parent_run
    assert first.record.parent_run.startswith("atl-tiny-smoke-s0-")
    stamp = (parent_dir / "record.json").stat().st_mtime_ns
    second = execute(run("proposed_no_consistency"), tmp_path, show_progress=False)
    assert second.record.parent_run == first.record.parent_run
    assert (parent_dir / "record.json").stat().st_mtime_ns == stamp, "stage 1 was not retrained"
    assert "pseudo_refreshes" in second.record.diagnostics  # Algorithm 1 counts its refreshes
    # a stage-2 setting does not change the stage-1 key
    third = execute(run("pi_model", **{"stage2.epochs": "1"}), tmp_path, show_progress=False)
    assert third.record.parent_run.startswith("baseline-")


def test_compile_says_how_a_run_executes_not_what_it_is():
    """Like the device, compilation is left out of the config hash: a compiled stage-2 run
    reuses an eager stage-1 run."""
    assert runner._inputs(run())[2] == runner._inputs(run(compile="true"))[2]


def test_allow_overlap_is_not_what_a_run_is():
    """What split.allow_overlap drops shows in the split's fingerprint; where it drops nothing
    the run is the same (and leaving it out keeps the hashes of runs from before it)."""
    assert runner._inputs(run())[2] == runner._inputs(run(**{"split.allow_overlap": "true"}))[2]


def test_diverged_run_is_recorded(tmp_path, monkeypatch):
    def nan_step(self, batch, ctx):
        loss = self.regressor(batch.images)[1].mean() * float("nan")
        return {"loss": loss}

    monkeypatch.setattr(Baseline, "training_step", nan_step)
    with pytest.raises(RunFailed, match="diverged") as info:
        execute(run("baseline"), tmp_path, show_progress=False)
    record = store.read_record(info.value.run_dir)
    assert record.status == "diverged" and "not finite" in record.error


def test_checkpoint_loads_with_weights_only(tmp_path):
    outcome = execute(run("baseline"), tmp_path, show_progress=False)
    state = torch.load(outcome.run_dir / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("regressor.head") for k in state)


@pytest.mark.parametrize("backbone", backbone_names())
def test_smoke_run_on_every_backbone(tmp_path, monkeypatch, imageset_factory, backbone):
    """The smoke preset end to end (32 px, the real smoke schedule shortened to one epoch)."""
    monkeypatch.setattr(sources, "load_images", lambda cfg: imageset_factory(size=32))
    overrides = {"split.val": "8", "split.test": "8", "stage1.epochs": "1"}
    cfg = resolve("atl", backbone, "smoke", overrides, device="cpu")
    record = execute(cfg, tmp_path, show_progress=False).record
    assert record.status == "ok" and record.backbone == backbone
    assert np.isfinite(record.metrics["test"]["rmse"])
