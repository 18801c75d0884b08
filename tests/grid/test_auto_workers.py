"""``--workers auto``: how many cells run at once on a GPU (free memory, cores) and on a CPU
(cores), and the grid's time on that many workers."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from rich.console import Console

from bmdbench import cli, trainer, workers
from bmdbench.errors import ConfigError
from bmdbench.experiments import custom_cells, with_parents
from bmdbench.grid import Plan, print_plan
from bmdbench.spec import RunSpec

GIB = 2**30
BASE = RunSpec("", "", "smoke", device="cpu")


def cores(monkeypatch, n: int) -> None:
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


def test_workers_is_a_positive_count_or_auto():
    assert workers.parse_workers("3") == 3
    assert workers.parse_workers("auto") is None
    for bad in ("0", "-2", "many"):
        with pytest.raises(ConfigError, match="neither a positive count nor auto"):
            workers.parse_workers(bad)


def test_grid_refuses_a_bad_workers_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(cli._state, "debug", False)
    argv = ["bmdbench", "grid", "--methods", "baseline", "--backbones", "tiny", "--workers", "0"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert "--workers 0 is neither a positive count nor auto" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_on_a_cpu_one_worker_per_core_with_one_thread_each(monkeypatch):
    cores(monkeypatch, 6)
    count, why = workers.auto_workers([BASE.but(method="baseline", backbone="tiny")])
    assert count == 6 and "6 CPU cores" in why
    assert workers.threads_per_worker(6) == 1
    assert workers.threads_per_worker(2) == 3  # explicit --workers 2 on 6 cores
    assert workers.threads_per_worker(8) == 1


def test_on_a_gpu_as_many_as_its_free_memory_holds_at_most_one_per_core(monkeypatch):
    cell = RunSpec("proposed", "tiny", "smoke", device="cuda")
    monkeypatch.setattr(trainer, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(workers, "cell_gpu_bytes", lambda cell, device: 3 * GIB)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (40 * GIB, 80 * GIB))
    cores(monkeypatch, 16)
    # 90 % of 40 GiB over 3 GiB a cell and 1 GiB of context: 9 workers
    count, why = workers.auto_workers([cell])
    assert count == 9
    assert "40.0 GiB of GPU memory free, 4.00 GiB a worker" in why and "16 CPU cores" in why
    cores(monkeypatch, 4)
    assert workers.auto_workers([cell])[0] == 4  # the cores bound it
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * GIB, 80 * GIB))
    assert workers.auto_workers([cell])[0] == 1  # one worker even when none fits


def test_the_largest_cell_of_a_grid_sets_the_memory_of_a_worker(monkeypatch):
    cells = with_parents(custom_cells(["proposed", "pi_model"], ["tiny"], 3, {}, BASE))
    probed = []

    def probe(cell: RunSpec, device: torch.device) -> int:
        probed.append(cell.method)
        return {"proposed": 7 * GIB}.get(cell.method, GIB)

    monkeypatch.setattr(trainer, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(workers, "cell_gpu_bytes", probe)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (80 * GIB, 80 * GIB))
    cores(monkeypatch, 64)
    assert workers.auto_workers(cells)[0] == 9  # 72 GiB over 8 GiB
    assert sorted(probed) == ["atl", "baseline", "pi_model", "proposed"]  # once per method


def grid_of_four() -> tuple[list[RunSpec], dict[str, float]]:
    """atl, baseline (stage 1, 10 s each) and proposed, pi_model (stage 2, 20 s each) at
    two seeds, parents first."""
    cells = with_parents(custom_cells(["proposed", "pi_model"], ["tiny"], 2, {}, BASE))
    return cells, {c.key: 10.0 if c.stage == 1 else 20.0 for c in cells}


def test_a_grid_takes_the_time_of_its_schedule_on_its_workers():
    cells, seconds = grid_of_four()
    assert workers.makespan(cells, seconds, 1) == 120
    # two workers: atl ×2, then baseline ×2, then proposed ×2, then pi_model ×2
    assert workers.makespan(cells, seconds, 2) == 60
    # four: the stage-1 cells at once, then the stage-2 cells at once
    assert workers.makespan(cells, seconds, 4) == 30
    assert workers.makespan(cells, seconds, 8) == 30  # stage-2 cells wait for their parents
    # finished parents: the stage-2 cells start at once
    stage2 = {key: s for key, s in seconds.items() if s == 20.0}
    assert workers.makespan(cells, stage2, 4) == 20


def test_the_plan_prints_the_time_on_its_workers():
    cells, seconds = grid_of_four()
    text = io.StringIO()
    console = Console(file=text, width=300)
    print_plan(console, Plan("grid-x", cells, set(), 0, seconds), 2)
    print_plan(console, Plan("grid-x", cells, set(), 0, seconds))
    shown = text.getvalue()
    assert "estimated time: 1.0 min on 2 workers, 2.0 min on one" in shown
    assert "estimated time: 2.0 min on one worker (from earlier runs)" in shown
