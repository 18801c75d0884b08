"""Grids: cells and their parents, and a real kill-and-resume of `bmdbench grid`."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time

from bmdbench import store
from bmdbench.config import to_dict
from bmdbench.experiments import TABLES, custom_cells, select, table_cells, with_parents
from bmdbench.identity import signature
from bmdbench.methods import METHODS
from bmdbench.spec import RunSpec

BASE = RunSpec("", "", "smoke", device="cpu")


def test_parents_come_first_once_without_other_methods_settings():
    cells = custom_cells(
        ["proposed", "pi_model", "atl"], ["tiny"], 2, {"proposed.consistency_weight": "0.5"}, BASE
    )
    ordered = with_parents(cells)
    methods = [c.method for c in ordered]
    assert methods == [
        "atl",
        "atl",
        "baseline",
        "baseline",
        "proposed",
        "proposed",
        "pi_model",
        "pi_model",
    ]
    proposed = next(c for c in ordered if c.method == "proposed")
    assert proposed.parent().settings == ()  # the proposed.* setting does not split the atl cell
    assert len({c.key for c in ordered}) == len(ordered)


def test_a_changed_preset_makes_new_cells(monkeypatch):
    # the queue knows cells by key: a preset edited between two `bmdbench grid` calls must
    # not leave the old runs counted as the new ones
    cell = RunSpec("mean_teacher", "tiny", "smoke", device="cpu")
    before = cell.key
    teacher = METHODS.get("mean_teacher")
    monkeypatch.setattr(teacher, "presets", {**teacher.presets, "smoke": {"ema_decay": 0.9}})
    assert RunSpec("mean_teacher", "tiny", "smoke", device="cpu").key != before
    assert (
        RunSpec("mean_teacher", "tiny", "smoke", seed=0, device="cuda").key != before
    )  # the preset
    assert (
        RunSpec("mean_teacher", "tiny", "smoke", seed=0, device="cuda").key
        == RunSpec("mean_teacher", "tiny", "smoke", device="cpu").key  # not the device
    )
    compiled = RunSpec("mean_teacher", "tiny", "smoke", seed=0, settings=(("compile", "true"),))
    assert compiled.key == RunSpec("mean_teacher", "tiny", "smoke", seed=0).key  # nor compile
    overlap = RunSpec("mean_teacher", "tiny", "smoke", settings=(("split.allow_overlap", "true"),))
    assert overlap.key == RunSpec("mean_teacher", "tiny", "smoke").key  # nor allow_overlap
    record = to_dict(RunSpec("mean_teacher", "tiny", "smoke").config)
    del record["split"]["allow_overlap"], record["parent"]["split"]["allow_overlap"]
    assert signature(record) == overlap.signature  # a record from before


def test_table_cells_follow_the_paper():
    cells = table_cells([TABLES["table3"]], 1, {}, BASE, "tiny")
    margins = [(c.method, dict(c.settings).get(f"{c.method}.margin")) for c in cells]
    assert margins[:2] == [("triplet", "0.1"), ("triplet", "0.3")]
    assert ("atl", "1.0") in margins and ("baseline", None) in margins
    assert {c.backbone for c in cells} == {"tiny"}
    table1 = table_cells([TABLES["table1"]], 1, {}, BASE, "tiny")  # its backbones are its subject
    assert [c.backbone for c in table1][:2] == ["vgg11_bn", "vgg13_bn"]


def test_sota_table_is_table2_and_the_later_methods():
    sota = [tc.method for tc in TABLES["sota"].cells]
    assert sota[:7] == [tc.method for tc in TABLES["table2"].cells]
    assert sota[7:] == ["ucvme", "mixmatch", "rda", "rankup", "rankup_rda", "hpl", "clss"]
    # every stage-2 cell names the control of its parent, which is in the table
    labels = {tc.label: tc for tc in TABLES["sota"].cells}
    for tc in TABLES["sota"].cells:
        if METHODS.get(tc.method).stage == 2 and not METHODS.get(tc.method).labeled_only:
            assert tc.control in labels
            parent = RunSpec(tc.method, "tiny", "quick").parent()
            assert parent is not None
            assert RunSpec(labels[tc.control].method, "tiny", "quick").parent() == parent
    assert all(cell.method in METHODS for cell in TABLES["sota"].cells)  # each registered
    assert [t.name for t in select("all")] == ["table1", "table2", "table3", "table4"]
    assert select("sota") == [TABLES["sota"]]


def test_cell_json_round_trip():
    cell = RunSpec("atl", "tiny", "smoke", seed=3, settings=(("atl.margin", "0.3"),))
    assert RunSpec.from_json(cell.to_json()) == cell


def _grid(out, *extra):
    return [
        sys.executable,
        "-m",
        "bmdbench.cli",
        "grid",
        "table2",
        "--preset",
        "smoke",
        "--seeds",
        "2",
        "--backbones",
        "tiny",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def test_killed_grid_resumes_and_runs_every_cell_once(tmp_path):
    # Table 2 at 2 seeds: baseline, atl, control, Π, TE, MT, control (ATL), proposed: 16 cells
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _grid(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(random.uniform(4.0, 9.0))  # somewhere between the first and the last cell
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_grid(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "16 of 16 cells done, 0 failed" in done.stdout

    records = list(store.iter_records(tmp_path))
    assert len(records) == 16 and all(r.ok for r in records)
    leftovers = [p.name for p in store.runs_dir(tmp_path).iterdir() if p.name.startswith(".")]
    assert leftovers == []
    (events,) = (tmp_path / "grids").glob("*.events.jsonl")
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    trained = collections.Counter(
        e["key"] for e in logged if e["event"] == "end" and not e["reused"]
    )
    assert set(trained.values()) == {1}  # no cell trained twice
    # The kill may land after a cell's record is published and before its "end" is logged:
    # that cell, started twice, is then reused by the second grid, not trained again.
    starts = collections.Counter(e["key"] for e in logged if e["event"] == "start")
    in_flight = {e["key"] for e in logged if e["event"] == "end"} - set(trained)
    assert len(in_flight) <= 1 and all(starts[key] == 2 for key in in_flight)
    assert len(trained) + len(in_flight) == 16

    again = subprocess.run(_grid(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert "16 already done" in again.stdout and "16 of 16 cells done" in again.stdout
