"""Run records: the typed record reads the format-1 files earlier versions wrote."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from bmdbench import store
from bmdbench.errors import DataError
from bmdbench.record import RecordData, RunRecord
from bmdbench.results import load_runs

# record.json of `bmdbench run -m pi_model -b tiny -p smoke --device cpu` at 0d81f48, the
# last commit before records were typed
FORMAT1 = Path(__file__).with_name("records") / "format1-pi_model.json"


def test_a_format1_record_loads_with_every_field():
    record = RunRecord.from_json(json.loads(FORMAT1.read_text()))
    assert record.format == 1 and record.ok and record.stage == 2
    assert record.name == "pi_model-tiny-smoke-s0-9475ead3f9"
    assert record.parent_run == "baseline-tiny-smoke-s0-e001da1fad"
    assert isinstance(record.data, RecordData) and record.data.unit == "g/cm²"
    assert record.data.sizes == {"train": 24, "val": 12, "test": 12, "unlabeled": 24}
    assert math.isfinite(record.metrics["test"]["pearson_r"])
    assert record.study is None and record.timings["total_s"] > 0


def test_the_on_disk_form_round_trips(tmp_path):
    data = json.loads(FORMAT1.read_text())
    record = RunRecord.from_json(data)
    assert RunRecord.from_json(record.to_json()) == record
    assert record.to_json() == data  # nothing lost, nothing added


def test_the_store_reads_records_as_typed_and_tables_see_old_ones(tmp_path):
    run_dir = store.runs_dir(tmp_path) / "pi_model-tiny-smoke-s0-9475ead3f9"
    run_dir.mkdir(parents=True)
    shutil.copy(FORMAT1, run_dir / store.RECORD)
    assert store.read_record(run_dir) == RunRecord.from_json(json.loads(FORMAT1.read_text()))
    runs = load_runs(tmp_path)
    assert list(runs["method"]) == ["pi_model"] and runs["test_pearson_r"].notna().all()


def test_records_written_before_a_field_existed_get_its_default():
    data = json.loads(FORMAT1.read_text())
    del data["study"], data["data"]["target_mean"], data["data"]["target_sd"]
    record = RunRecord.from_json(data)
    assert record.study is None and math.isnan(record.data.target_sd)


@pytest.mark.parametrize("broken", [{"format": 2}, {"name": None, "data": None}])
def test_a_record_that_cannot_be_read_names_the_file(broken):
    data = {**json.loads(FORMAT1.read_text()), **broken}
    if data["data"] is None:
        del data["data"]
    with pytest.raises(DataError, match="run.json"):
        RunRecord.from_json(data, "run.json")
