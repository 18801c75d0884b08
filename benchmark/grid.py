"""Running a grid of cells (:mod:`bmdbench.experiments` names them): their plan, their queue
and the workers that run them.

A grid is an Optuna study used as a queue (:mod:`bmdbench.dispatch`); its name
is a hash of its cells and its output folder, so the same command finds the same
queue again and carries on where it stopped. Stage-1 cells are queued before the stage-2 cells
that fine-tune from them, and a stage-2 cell waits until its parent is finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bmdbench import store
from bmdbench.config import stable_hash
from bmdbench.dispatch import IDLE_S, STORAGE_ENV, CellQueue, Counts
from bmdbench.errors import BmdError, RunFailed
from bmdbench.experiments import with_parents
from bmdbench.spec import RunSpec
from bmdbench.workers import makespan, threads_per_worker


@dataclass(frozen=True)
class Plan:
    name: str  # the study (queue) name
    cells: list[RunSpec]
    done: set[str]  # keys of cells with a finished (ok) run record
    stage1_reused: int  # stage-2 cells whose stage-1 checkpoint already exists
    # seconds of each remaining cell, as earlier runs here took; None: unknown
    seconds: dict[str, float] | None


def make_plan(cells: Sequence[RunSpec], out: Path) -> Plan:
    """Resolve and check every cell as a run would (:func:`bmdbench.runner.check`: bad input
    fails here, before anything is queued or written) and see what exists."""
    from bmdbench.runner import check

    cells = with_parents(cells)
    dirs = {cell.key: check(cell.config, out) for cell in cells}
    done = {key for key, d in dirs.items() if _ok(d)}
    parents = {p.key for c in cells if (p := c.parent()) is not None}
    seconds = _typical_seconds(out)
    remaining = [c for c in cells if c.key not in done]
    guesses = {c.key: seconds.get((c.preset, c.stage, c.backbone)) for c in remaining}
    known = {key: g for key, g in guesses.items() if g is not None}
    estimate = known if len(known) == len(guesses) else None
    # a grid is its cells written to one output root (workers on several machines share it)
    name = "grid-" + stable_hash([str(out.resolve()), sorted(c.key for c in cells)])[:16]
    return Plan(name, cells, done, len(parents & done), estimate)


def _ok(run_dir: Path) -> bool:
    record = store.read_record(run_dir)
    return record is not None and record.ok


def _typical_seconds(out: Path) -> dict[tuple[str, int, str], float]:
    """Median run time of earlier ok runs under ``out`` by (preset, stage, backbone)."""
    times: dict[tuple[str, int, str], list[float]] = {}
    for record in store.iter_records(out):
        if record.ok:
            key = (record.preset, record.stage, record.backbone)
            times.setdefault(key, []).append(record.timings["total_s"])
    return {k: float(np.median(v)) for k, v in times.items()}


def print_plan(console: Console, plan: Plan, workers: int = 1) -> None:
    n = len(plan.cells)
    stage2 = sum(1 for c in plan.cells if c.stage == 2)
    console.print(
        f"grid [bold]{plan.name}[/]: {n} cells ({n - stage2} stage-1, {stage2} stage-2), "
        f"{len(plan.done)} already done, {plan.stage1_reused} stage-1 checkpoints reused"
    )
    if plan.seconds is None:
        console.print("estimated time: unknown until cells of this preset have run here")
        return
    one = makespan(plan.cells, plan.seconds, 1)
    if workers == 1:
        console.print(f"estimated time: {one / 60:.1f} min on one worker (from earlier runs)")
    else:
        console.print(
            f"estimated time: {makespan(plan.cells, plan.seconds, workers) / 60:.1f} min on "
            f"{workers} workers, {one / 60:.1f} min on one (each cell as long as earlier runs "
            "here took; stage-2 cells wait for their parents)"
        )


def cell_attrs(cell: RunSpec) -> dict[str, Any]:
    parent = cell.parent()
    return {
        "key": cell.key,
        "cell": cell.to_json(),
        "needs": parent.key if parent else None,
        "label": cell.describe(),
    }


def run_cell(cell: RunSpec, out: Path) -> tuple[str, str | None, str | None, float | None, bool]:
    """Run one cell (reusing a finished run): (status, run name, error, val R, reused)."""
    from bmdbench.runner import execute

    try:
        outcome = execute(cell.config, out, Console(quiet=True), show_progress=False, reuse=True)
    except RunFailed as exc:
        return exc.status, exc.run_dir.name, str(exc), None, False
    except BmdError as exc:
        return "failed", None, str(exc), None, False
    val_r = outcome.record.metrics["val"]["pearson_r"]
    return "ok", outcome.run_dir.name, None, val_r, outcome.reused


def work(queue: CellQueue, out: Path, events: Path, on_change: Callable[[Counts], None]) -> None:
    """Take cells from the queue and run them until none is queued or running."""
    while True:
        queue.reclaim()
        trial = queue.take()
        if trial is None:
            counts = queue.counts()
            on_change(counts)
            if counts.finished:
                return
            time.sleep(IDLE_S)
            continue
        cell = RunSpec.from_json(trial.user_attrs["cell"])
        _event(events, "start", cell, trial.number)
        if queue.parent_failed(trial):
            result: tuple[str, str | None, str | None, float | None, bool] = (
                "failed",
                None,
                "its stage-1 parent failed",
                None,
                False,
            )
        else:
            with queue.heartbeat(trial):
                result = run_cell(cell, out)
        status, run, error, value, reused = result
        queue.finish(trial, status, run, error, value)
        _event(
            events, "end", cell, trial.number, status=status, run=run, reused=reused, error=error
        )
        on_change(queue.counts())


def _event(events: Path, kind: str, cell: RunSpec, trial: int, **extra: Any) -> None:
    """Append one line to the grid's event log (one write per line: safe across workers)."""
    line = {
        "event": kind,
        "key": cell.key,
        "cell": cell.describe(),
        "trial": trial,
        "pid": os.getpid(),
        "time": round(time.time(), 3),
        **extra,
    }
    events.parent.mkdir(parents=True, exist_ok=True)
    with open(events, "a") as fh:
        fh.write(json.dumps(line) + "\n")


def events_path(out: Path, name: str) -> Path:
    return out / "grids" / f"{name}.events.jsonl"


def run_grid(
    plan: Plan,
    out: Path,
    storage: str,
    workers: int,
    retry_failed: bool,
    console: Console,
) -> Counts:
    """Queue the plan's cells and run them with ``workers`` processes; returns the final counts."""
    store.remove_dead_staging(out)
    queue = CellQueue(storage, plan.name)
    queue.fill([cell_attrs(c) for c in plan.cells])
    if retry_failed:
        console.print(f"queued {queue.retry_failed()} failed cells again")
    events = events_path(out, plan.name)
    with Progress(
        TextColumn("cells"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("cells", total=len(plan.cells), info="")

        def show(counts: Counts) -> None:
            progress.update(
                task,
                completed=counts.done + counts.failed,
                info=f"running {counts.running} · failed {counts.failed}",
            )

        show(queue.counts())
        if workers == 1:
            work(queue, out, events, show)
        else:
            _run_workers(workers, storage, plan.name, out, queue, show)
    return queue.counts()


def _run_workers(
    n: int, storage: str, name: str, out: Path, queue: CellQueue, show: Callable[[Counts], None]
) -> None:
    logs = out / "grids"
    logs.mkdir(parents=True, exist_ok=True)
    # the URL travels in the environment, never on a command line that `ps` shows to all
    command = [sys.executable, "-m", "bmdbench.cli", "worker", "--study", name]
    environment = {**os.environ, STORAGE_ENV: storage}
    environment.setdefault("OMP_NUM_THREADS", str(threads_per_worker(n)))  # n share the cores
    procs = []
    for i in range(n):
        with open(logs / f"{name}.worker{i}.log", "a") as log:
            procs.append(
                subprocess.Popen(
                    [*command, "--out", str(out)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                )
            )
    try:
        while any(p.poll() is None for p in procs):
            show(queue.counts())
            time.sleep(2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    show(queue.counts())
