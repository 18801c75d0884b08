"""The cell queue on Optuna storage: order, dependencies, exactly-once, dead workers, retries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from bmdbench.dispatch import CellQueue


def attrs(key: str, needs: str | None = None) -> dict:
    return {"key": key, "cell": "{}", "needs": needs, "label": key}


def queue(tmp_path, name: str = "q") -> CellQueue:
    return CellQueue(f"sqlite:///{tmp_path / 'q.db'}", name)


def test_stage2_cell_waits_for_its_parent(tmp_path):
    q = queue(tmp_path)
    q.fill([attrs("child", needs="parent"), attrs("parent"), attrs("other")])
    first = q.take()
    assert first.user_attrs["key"] == "parent"
    second = q.take()
    assert second.user_attrs["key"] == "other"  # child skipped: its parent is running
    assert q.take() is None
    q.finish(first, "ok", "run-parent", None, 0.5)
    child = q.take()
    assert child.user_attrs["key"] == "child"
    assert not q.parent_failed(child)


def test_fill_twice_and_duplicates_run_once(tmp_path):
    q = queue(tmp_path)
    q.fill([attrs("a"), attrs("b")])
    q.fill([attrs("a"), attrs("b")])  # the same grid started again: nothing new
    assert q.counts().cells == 2 and len(q.study.trials) == 2
    # two racing workers each enqueue "a": the later copy is dropped, not run
    q.study.enqueue_trial({}, user_attrs=attrs("a"))
    taken = [q.take(), q.take(), q.take()]
    keys = [t.user_attrs["key"] for t in taken if t is not None]
    assert sorted(keys) == ["a", "b"]
    states = [t.state for t in q.study.trials]
    assert states.count(TrialState.PRUNED) == 1


def test_failed_cell_stays_failed_until_retry(tmp_path):
    q = queue(tmp_path)
    q.fill([attrs("a"), attrs("child", needs="a")])
    trial = q.take()
    q.finish(trial, "diverged", "run-a", "loss is not finite", None)
    child = q.take()
    assert q.parent_failed(child)
    q.finish(child, "failed", None, "its stage-1 parent failed", None)
    q.fill([attrs("a"), attrs("child", needs="a")])
    counts = q.counts()
    assert (counts.failed, counts.waiting, counts.finished) == (2, 0, True)
    assert q.retry_failed() == 2
    again = q.take()
    assert again.user_attrs["key"] == "a" and again.user_attrs["retry_of"] == trial.number
    q.finish(again, "ok", "run-a", None, 0.7)
    assert q.take().user_attrs["key"] == "child"


def test_cell_of_a_dead_worker_is_taken_back(tmp_path):
    q = queue(tmp_path)
    q.fill([attrs("a")])
    trial = q.take()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    worker = trial.user_attrs["worker"].rpartition(":")[0] + ":" + dead.stdout.strip()
    q.storage.set_trial_user_attr(trial._trial_id, "worker", worker)
    assert q.take() is None  # still running as far as the queue knows
    q.reclaim()
    again = q.take()
    assert again is not None and again.user_attrs["key"] == "a"
    assert again.user_attrs["why"] == "worker died"
    q.finish(again, "ok", "run-a", None, 0.1)
    assert q.counts() == type(q.counts())(cells=1, done=1, running=0, failed=0, waiting=0)


def test_live_worker_keeps_its_cell(tmp_path):
    q = queue(tmp_path)
    q.fill([attrs("a")])
    trial = q.take()  # this process: alive
    q.reclaim()
    assert q.counts().running == 1
    with q.heartbeat(trial):
        pass
    assert q.take() is None


SECRET = "postgresql://bench:s3cret-pw@127.0.0.1:1/bmdbench"


def test_a_storage_password_is_shown_nowhere(tmp_path, monkeypatch):
    """Not in a printed URL, not in an error, not on a worker's command line."""
    from bmdbench import grid
    from bmdbench.dispatch import STORAGE_ENV, open_storage, shown
    from bmdbench.errors import ConfigError

    assert shown(SECRET) == "postgresql://bench:***@127.0.0.1:1/bmdbench"
    with pytest.raises(ConfigError) as refused:  # nothing listens on port 1
        open_storage(SECRET)
    assert "s3cret" not in str(refused.value) and "bench:***@" in str(refused.value)

    started = []

    class Popen:
        def __init__(self, argv, env, **kwargs):
            started.append((argv, env))

        def poll(self):
            return 0

    q = queue(tmp_path)
    monkeypatch.setattr(grid.subprocess, "Popen", Popen)
    grid._run_workers(2, SECRET, "q", tmp_path, q, lambda counts: None)
    assert len(started) == 2
    for argv, env in started:
        assert not any("s3cret" in part for part in argv)
        assert env[STORAGE_ENV] == SECRET  # the worker reads it from its environment


@pytest.mark.parametrize("given", ["--storage", "BMDBENCH_STORAGE"])
def test_a_storage_password_is_not_in_what_the_command_line_prints(
    tmp_path, monkeypatch, capsys, given
):
    from bmdbench import cli

    monkeypatch.setenv("BMDBENCH_DEBUG", "")
    monkeypatch.setitem(cli._state, "debug", False)
    options = ["--preset", "smoke", "--device", "cpu", "--out", str(tmp_path)]
    if given == "--storage":
        options += ["--storage", SECRET]
    else:
        monkeypatch.setenv("BMDBENCH_STORAGE", SECRET)
    for command in (
        ["grid", "--methods", "baseline", "--backbones", "tiny"],
        ["tune", "lr", "-m", "baseline", "-b", "tiny"],
    ):
        monkeypatch.setattr(sys, "argv", ["bmdbench", *command, *options])
        with pytest.raises(SystemExit) as exited:  # nothing listens on port 1
            cli.main()
        out, err = capsys.readouterr()
        assert exited.value.code == 2
        assert "bench:***@127.0.0.1:1" in err
        assert "s3cret" not in out + err


def test_a_worker_takes_its_storage_from_the_environment(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    queue(tmp_path).fill([])
    done = subprocess.run(
        [sys.executable, "-m", "bmdbench.cli", "worker", "--study", "q", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "BMDBENCH_STORAGE": url},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
