"""A work queue of grid cells on Optuna's storage, shared by any number of workers.

Each cell is an Optuna trial of one study: enqueued ``WAITING``, taken by one
worker (``RUNNING``, an atomic state change in the database), then ``COMPLETE``
(status ok) or ``FAIL`` (diverged, failed, or its worker died). The storage is a
SQLite file by default; any Optuna RDB URL (``postgresql://...``) lets workers
on many machines share one queue.

A worker that dies leaves its cell ``RUNNING``. The cell is taken back and
queued again (a copy of the trial) when either its worker's process is gone
(same host) or its heartbeat is older than the grace period (any host).
Exactly-once: a trial of a cell whose earlier trial is queued, running or
complete is dropped (``PRUNED``) instead of run, so a cell enqueued twice by
racing workers still runs once.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from bmdbench import store
from bmdbench.errors import ConfigError

HEARTBEAT_S = 20  # a running worker refreshes its cell's heartbeat this often
GRACE_S = 90  # a cell whose heartbeat is older than this is taken back
DB_NAME = "bmdbench.db"  # the default SQLite file of an output root
IDLE_S = 1.0  # an idle worker looks at the queue again after this long


optuna.logging.set_verbosity(optuna.logging.WARNING)


def default_storage(out: Path) -> str:
    """The SQLite file that holds the queues (and studies) of an output root."""
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(out / DB_NAME).resolve()}"


STORAGE_ENV = "BMDBENCH_STORAGE"
"""The environment variable that may hold the storage URL (as ``--storage`` does): a URL with
a password is then on no command line, and grid workers receive it this way."""


def shown(url: str) -> str:
    """A storage URL as bmdbench prints it: any password replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL at all: nothing to hide that parsing could find
        return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def open_storage(
    url: str, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> RDBStorage:
    """An Optuna RDB storage with heartbeats; a bad URL is a user error.

    ``on_stale`` is told of each trial failed for a stale heartbeat (default: queue
    the grid cell again)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        with quiet_libraries():
            return RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=on_stale or _requeue_stale,
                **kwargs,
            )
    except ImportError:
        dialect = url.split(":", 1)[0]
        install = (
            'pip install "bmdbench[postgres]"'
            if dialect.startswith("postgres")
            else f"install the Python driver of {dialect}"
        )
        raise ConfigError(
            f"the database driver for {dialect} is not installed",
            f"{install}, or use a sqlite:/// URL",
        ) from None
    except Exception as exc:  # sqlalchemy raises many kinds for a bad URL or server
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else ""  # not sqlalchemy's links and SQL
        raise ConfigError(
            f"cannot open storage {shown(url)!r}: {type(exc).__name__}: {reason.replace(url, shown(url))}",
            "give --storage a reachable Optuna URL (sqlite:///file.db or postgresql://user@host/db)",
        ) from None


LIBRARY_LOGGERS = ("optuna", "sqlalchemy", "alembic")


@contextmanager
def quiet_libraries(hide_warnings: bool = True) -> Iterator[None]:
    """Hide the log lines of optuna, sqlalchemy and alembic in the body (and, with
    ``hide_warnings``, every Python warning), so that an error is bmdbench's one line;
    ``--debug`` (``BMDBENCH_DEBUG=1``) shows them."""
    if os.environ.get("BMDBENCH_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        if hide_warnings:
            warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's callback for a trial failed by stale heartbeat: queue the cell again."""
    study.enqueue_trial(
        {}, user_attrs={**_cell_attrs(trial), "retry_of": trial.number, "why": "stale heartbeat"}
    )


def _cell_attrs(trial: FrozenTrial) -> dict[str, Any]:
    return {
        k: trial.user_attrs[k] for k in ("key", "cell", "needs", "label") if k in trial.user_attrs
    }


@dataclass(frozen=True)
class Counts:
    cells: int
    done: int
    running: int
    failed: int
    waiting: int

    @property
    def finished(self) -> bool:
        return self.running == 0 and self.waiting == 0


class CellQueue:
    """The cells of one grid (one Optuna study) and the operations workers need."""

    def __init__(self, storage: str, name: str) -> None:
        self.storage = open_storage(storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study = optuna.create_study(
                storage=self.storage, study_name=name, load_if_exists=True, direction="maximize"
            )

    def fill(self, cells: list[dict[str, Any]]) -> None:
        """Queue every cell not queued before (``cells``: dicts with key, cell, needs, label)."""
        known = {t.user_attrs.get("key") for t in self._trials()}
        for attrs in cells:
            if attrs["key"] not in known:
                self.study.enqueue_trial({}, user_attrs=attrs)

    def retry_failed(self) -> int:
        """Queue again every cell whose last trial failed; returns how many."""
        latest = self.latest()
        failed = [t for t in latest.values() if t.state == TrialState.FAIL]
        for trial in sorted(failed, key=lambda t: t.number):
            self.study.enqueue_trial(
                {}, user_attrs={**_cell_attrs(trial), "retry_of": trial.number}
            )
        return len(failed)

    def reclaim(self) -> None:
        """Take back cells of dead workers: a gone process on this host, or a stale heartbeat."""
        host = socket.gethostname()
        for trial in self._trials(TrialState.RUNNING):
            worker = trial.user_attrs.get("worker", "")
            owner_host, _, pid = worker.rpartition(":")
            if owner_host == host and pid.isdigit() and not store.pid_alive(int(pid)):
                if self._set_state(trial._trial_id, TrialState.FAIL):
                    self.study.enqueue_trial(
                        {},
                        user_attrs={
                            **_cell_attrs(trial),
                            "retry_of": trial.number,
                            "why": "worker died",
                        },
                    )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def take(self) -> FrozenTrial | None:
        """Claim the first queued cell whose stage-1 parent is finished (None: nothing ready)."""
        latest = self.latest()
        for trial in self._trials(TrialState.WAITING):
            needs = trial.user_attrs.get("needs")
            parent = latest.get(needs) if needs else None
            if parent is not None and not parent.state.is_finished():
                continue
            if not self._set_state(trial._trial_id, TrialState.RUNNING):
                continue
            self.storage.set_trial_user_attr(trial._trial_id, "worker", _worker_id())
            if self._superseded(trial):
                self._set_state(trial._trial_id, TrialState.PRUNED)
                continue
            return self.storage.get_trial(trial._trial_id)
        return None

    def parent_failed(self, trial: FrozenTrial) -> bool:
        """Whether the cell's stage-1 parent ended failed (the cell then fails too)."""
        needs = trial.user_attrs.get("needs")
        parent = self.latest().get(needs) if needs else None
        return parent is not None and parent.state == TrialState.FAIL

    def finish(
        self,
        trial: FrozenTrial,
        status: str,
        run: str | None,
        error: str | None,
        value: float | None,
    ) -> None:
        """Record a cell's outcome: ``ok`` → COMPLETE (value = validation R), else FAIL.

        A worker taken for dead while it was alive finds its trial already failed and
        requeued: it leaves the trial as it is (its run record is published all the same,
        and the requeued copy reuses it)."""
        try:
            for key, attr in (("status", status), ("run", run), ("error", error)):
                self.storage.set_trial_user_attr(trial._trial_id, key, attr)
        except optuna.exceptions.UpdateFinishedTrialError:
            return
        if status == "ok":
            self._set_state(
                trial._trial_id, TrialState.COMPLETE, [value if value is not None else float("nan")]
            )
        else:
            self._set_state(trial._trial_id, TrialState.FAIL)

    @contextmanager
    def heartbeat(self, trial: FrozenTrial) -> Iterator[None]:
        """Refresh the cell's heartbeat from a thread while the body runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.is_set():
                self.storage.record_heartbeat(trial._trial_id)
                stop.wait(HEARTBEAT_S)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def counts(self) -> Counts:
        latest = self.latest()
        states = [t.state for t in latest.values()]
        return Counts(
            cells=len(latest),
            done=states.count(TrialState.COMPLETE),
            running=states.count(TrialState.RUNNING),
            failed=states.count(TrialState.FAIL),
            waiting=states.count(TrialState.WAITING),
        )

    def latest(self) -> dict[str, FrozenTrial]:
        """Per cell key, the trial that says where the cell stands: a complete one if
        any, else the newest queued or running one, else the newest failed one."""
        rank = {
            TrialState.COMPLETE: 3,
            TrialState.RUNNING: 2,
            TrialState.WAITING: 2,
            TrialState.FAIL: 1,
        }
        best: dict[str, FrozenTrial] = {}
        for trial in self._trials():
            key = trial.user_attrs.get("key")
            if key is None or trial.state not in rank:
                continue
            old = best.get(key)
            if old is None or (rank[trial.state], trial.number) > (rank[old.state], old.number):
                best[key] = trial
        return best

    def _superseded(self, trial: FrozenTrial) -> bool:
        key = trial.user_attrs["key"]
        return any(
            t.user_attrs.get("key") == key
            and t.number < trial.number
            and t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
            for t in self._trials()
        )

    def _trials(self, *states: TrialState) -> list[FrozenTrial]:
        return self.storage.get_all_trials(
            self.study._study_id, deepcopy=False, states=states or None
        )

    def _set_state(
        self, trial_id: int, state: TrialState, values: list[float] | None = None
    ) -> bool:
        try:
            return self.storage.set_trial_state_values(trial_id, state=state, values=values)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
