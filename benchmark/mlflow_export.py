"""Every run of a results store as an MLflow run, for users whose lab already tracks there.

One bmdbench run becomes one MLflow run of the experiment ``bmdbench`` (``--experiment``):

- params: the resolved config flattened to dotted keys (the method's hyperparameters are in
  it, under the method's name, and the stage-1 parent's under ``parent.``);
- metrics: the selected checkpoint's validation and test metrics (``val.pearson_r``, …) and
  the epoch log, every numeric column of ``epochs.jsonl`` logged with the epoch as its step;
- tags: method, backbone, preset, seed, status, data fingerprint, parent run, git revision;
  ``bmdbench.run`` holds the run folder's name, which is what makes the export idempotent:
  a run whose name is already in the experiment is not logged again;
- artifacts: ``record.json``, ``config.json`` and the prediction files.

MLflow is an optional dependency (``pip install -e ".[mlflow]"``), imported only here. The
default tracking store is an SQLite file under the results store (``OUT/mlflow/mlflow.db``,
artifacts beside it), MLflow's recommended local backend; ``--tracking-uri`` takes any other
(a server's ``http://…``, a database URL).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmdbench import store
from bmdbench.errors import ConfigError
from bmdbench.record import RunRecord

EXPERIMENT = "bmdbench"
RUN_TAG = "bmdbench.run"  # the run folder's name: one MLflow run per bmdbench run
ARTIFACTS = ("record.json", "config.json", "predictions_val.csv", "predictions_test.csv")
_PARAM_MAX = 6000  # MLflow's limit on a param value's length
_BATCH = 900  # metrics per log_batch call (MLflow accepts at most 1,000)


@dataclass(frozen=True)
class Exported:
    """What an export did: runs logged now, runs found already logged, the tracking URI."""

    logged: int
    skipped: int
    tracking_uri: str
    experiment: str


def default_uri(out: Path) -> str:
    return f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → {"stage1.lr": "0.0003", …}; lists and None as their JSON."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:_PARAM_MAX]
    return flat


def record_metrics(record: RunRecord) -> dict[str, float]:
    """The selected checkpoint's metrics, finite ones only (MLflow stores no NaN in SQL)."""
    return {
        f"{split}.{name}": float(value)
        for split, values in record.metrics.items()
        for name, value in values.items()
        if math.isfinite(value)
    }


def epoch_metrics(run_dir: Path) -> Iterator[tuple[str, float, int]]:
    """(key, value, step) for every finite number of the epoch log, step = the epoch."""
    path = run_dir / "epochs.jsonl"
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        row = json.loads(line)
        step = int(row.get("epoch", 0))
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                yield f"epoch.{key}", float(value), step


def tags(record: RunRecord) -> dict[str, str]:
    return {
        RUN_TAG: record.name,
        "method": record.method,
        "backbone": record.backbone,
        "preset": record.preset,
        "seed": str(record.seed),
        "status": record.status,
        "data.source": Path(record.data.source).name,
        "data.fingerprint": record.data.fingerprint,
        "data.split_fingerprint": record.data.split_fingerprint,
        "parent_run": record.parent_run or "",
        "git_sha": record.git_sha,
        "device": record.device,
    }


@contextmanager
def loggers_kept() -> Iterator[None]:
    """Leave every logger outside MLflow's as it was. MLflow configures other libraries'
    loggers (SQLAlchemy's and Alembic's get handlers, on import and when it sets up its
    database), whose lines would then reach the user's terminal from every later database
    call of the process, a grid's included."""

    def state() -> dict[str, tuple[list[logging.Handler], int, bool, bool]]:
        loggers = {
            name: lg
            for name, lg in logging.Logger.manager.loggerDict.items()
            if isinstance(lg, logging.Logger) and not name.startswith("mlflow")
        }
        loggers[""] = logging.getLogger()
        return {
            n: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for n, lg in loggers.items()
        }

    before = state()
    try:
        yield
    finally:
        for name in state():
            handlers, level, propagate, disabled = before.get(
                name, ([], logging.NOTSET, True, False)
            )
            logger = logging.getLogger(name or None)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled


def export(out: Path, tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> Exported:
    """Log every finished run under ``out/runs`` that the experiment does not hold yet."""
    records = list(store.iter_records(out))
    if not records:
        raise ConfigError(
            f"no finished runs under {out / 'runs'}", "run a grid first, or pass --out"
        )
    with loggers_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # MLflow's own, on SQLAlchemy
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(
                "MLflow is not installed", 'install it with  pip install -e ".[mlflow]"'
            ) from None
        artifacts = None
        if tracking_uri is None:
            store.check_out(out, "mlflow")
            (out / "mlflow").mkdir(exist_ok=True)
            artifacts = (out / "mlflow" / "artifacts").resolve().as_uri()
        uri = tracking_uri or default_uri(out)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up chatter
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(experiment, artifact_location=artifacts)
        )
        logged = _log_new(client, experiment_id, records, out)
    return Exported(logged, len(records) - logged, uri, experiment)


def _log_new(client: Any, experiment_id: str, records: list[RunRecord], out: Path) -> int:
    """Log the records the experiment lacks; the number logged."""
    from mlflow.entities import Metric, Param

    done = set()
    for run in client.search_runs([experiment_id], max_results=50_000):
        if run.info.status == "RUNNING":  # an export that was interrupted: log it again
            client.delete_run(run.info.run_id)
        else:
            done.add(run.data.tags.get(RUN_TAG))
    logged = 0
    for record in records:
        if record.name in done:
            continue
        run_dir = store.runs_dir(out) / record.name
        run_id = client.create_run(
            experiment_id, run_name=record.name, tags=tags(record)
        ).info.run_id
        params = [Param(k, v) for k, v in flatten(record.config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            client.log_batch(run_id, params=params[start : start + 100])
        metrics = [Metric(k, v, 0, 0) for k, v in record_metrics(record).items()]
        metrics += [Metric(k, v, 0, step) for k, v, step in epoch_metrics(run_dir)]
        for start in range(0, len(metrics), _BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        if record.error:
            client.set_tag(run_id, "error", record.error)
        client.set_terminated(run_id, "FINISHED" if record.ok else "FAILED")
        logged += 1
    return logged
