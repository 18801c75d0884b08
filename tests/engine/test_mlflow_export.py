"""`bmdbench export mlflow`: a store's runs round-trip through MLflow's own client, once."""

from __future__ import annotations

import json
import logging
import sys
from importlib.util import find_spec

import pytest

from bmdbench import mlflow_export, store
from bmdbench.data import sources
from bmdbench.errors import ConfigError
from bmdbench.runner import execute
from bmdbench.spec import resolve

pytestmark = pytest.mark.skipif(
    find_spec("mlflow") is None, reason='MLflow is an optional extra: pip install -e ".[mlflow]"'
)

SMALL = {"split.val": "8", "split.test": "8", "stage1.epochs": "2", "stage2.epochs": "1"}


@pytest.fixture
def reader():
    """MLflow's own client on a tracking URI, the loggers it configures put back after."""
    with mlflow_export.loggers_kept():
        from mlflow.tracking import MlflowClient

        yield lambda uri: MlflowClient(tracking_uri=uri)


@pytest.fixture
def smoke_store(tmp_path, monkeypatch, imageset_factory):
    """A stage-1 run and a stage-2 run fine-tuning it, as a smoke grid leaves them."""
    monkeypatch.setattr(sources, "load_images", lambda cfg: imageset_factory())
    out = tmp_path / "results"
    for method in ("baseline", "pi_model"):
        cfg = resolve(method, "tiny", "smoke", SMALL, seed=0, device="cpu")
        execute(cfg, out, show_progress=False)
    return out


def test_flatten_writes_dotted_keys_and_json_leaves():
    flat = mlflow_export.flatten({"stage1": {"lr": 3e-4, "drop": None}, "m": {"w": [1, 2]}})
    assert flat == {"stage1.lr": "0.0003", "stage1.drop": "null", "m.w": "[1, 2]"}


def test_export_round_trips_and_is_idempotent(smoke_store, reader):
    first = mlflow_export.export(smoke_store)
    assert (first.logged, first.skipped) == (2, 0)
    again = mlflow_export.export(smoke_store)
    assert (again.logged, again.skipped) == (0, 2)

    client = reader(first.tracking_uri)
    experiment = client.get_experiment_by_name("bmdbench")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2, "exporting twice made no duplicate"
    records = {r.name: r for r in store.iter_records(smoke_store)}
    for run in runs:
        record = records[run.data.tags[mlflow_export.RUN_TAG]]
        tags = run.data.tags
        assert (tags["method"], tags["backbone"], tags["preset"], tags["seed"]) == (
            record.method, "tiny", "smoke", "0",
        )  # fmt: skip
        assert tags["data.fingerprint"] == record.data.fingerprint
        assert tags["parent_run"] == (record.parent_run or "")
        assert run.info.status == "FINISHED"
        # params: the resolved config; the method's hyperparameters are in it
        assert run.data.params["stage1.lr"] == json.dumps(record.config["stage1"]["lr"])
        assert run.data.params["method"] == record.method
        # metrics: the selected checkpoint's, and the epoch curve as steps
        assert run.data.metrics["test.pearson_r"] == pytest.approx(
            record.metrics["test"]["pearson_r"]
        )
        epochs = [
            json.loads(line)
            for line in (store.runs_dir(smoke_store) / record.name / "epochs.jsonl")
            .read_text()
            .splitlines()
        ]
        history = client.get_metric_history(run.info.run_id, "epoch.val_pearson_r")
        assert [m.step for m in history] == [e["epoch"] for e in epochs]
        assert [m.value for m in history] == pytest.approx([e["val_pearson_r"] for e in epochs])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"record.json", "predictions_test.csv"} <= artifacts
    assert {r.data.tags["method"] for r in runs} == {"baseline", "pi_model"}


def test_an_interrupted_export_is_logged_again(smoke_store, reader):
    first = mlflow_export.export(smoke_store)
    client = reader(first.tracking_uri)
    experiment = client.get_experiment_by_name("bmdbench").experiment_id
    stale = client.search_runs([experiment])[0]
    # what a killed export leaves: a run still RUNNING
    client.update_run(stale.info.run_id, status="RUNNING")
    assert mlflow_export.export(smoke_store).logged == 1
    assert len(client.search_runs([experiment])) == 2


def test_an_empty_store_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no finished runs"):
        mlflow_export.export(tmp_path)


def test_without_mlflow_the_error_says_how_to_install_it(smoke_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # import fails, as uninstalled
    with pytest.raises(ConfigError, match=r"pip install -e \".\[mlflow\]\""):
        mlflow_export.export(smoke_store)
    assert not (smoke_store / "mlflow").exists(), "nothing written"


def test_mlflow_leaves_other_libraries_loggers_as_they_were(smoke_store):
    mlflow_export.export(smoke_store)
    assert not logging.getLogger("sqlalchemy.engine").handlers
    assert not logging.getLogger("alembic").handlers
