"""Several workers on one queue: each cell runs once, a killed worker's cell is taken back.

Runs against SQLite always, and against PostgreSQL when BMDBENCH_TEST_POSTGRES holds a
server URL (.ci/run starts one on loopback).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from bmdbench import store

STORAGES = ["sqlite"] + (["postgresql"] if os.environ.get("BMDBENCH_TEST_POSTGRES") else [])


def storage_url(kind: str, tmp_path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return os.environ["BMDBENCH_TEST_POSTGRES"]


@pytest.mark.parametrize("kind", STORAGES)
def test_two_workers_one_killed_every_cell_once(tmp_path, kind):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "bmdbench.cli", "grid", "--methods", "baseline,pi_model,mean_teacher",
        "--backbones", "tiny", "--seeds", "2", "--preset", "smoke", "--device", "cpu",
        "--storage", storage_url(kind, tmp_path), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(2.0)
    second = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(random.uniform(3.0, 8.0))
    first.send_signal(signal.SIGKILL)
    first.wait()
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr
    assert "6 of 6 cells done, 0 failed" in stdout  # 2 baseline + 2 pi_model + 2 mean_teacher

    records = list(store.iter_records(out))
    assert len(records) == 6 and all(r.ok for r in records)
    (events,) = (out / "grids").glob("*.events.jsonl")
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    ends = collections.Counter(e["key"] for e in lines if e["event"] == "end")
    assert len(ends) == 6 and set(ends.values()) == {1}  # every cell finished once
    # A finished run is reused only where the killed worker wrote its record and died
    # before it could say so; no other cell is taken twice.
    killed = {e["key"] for e in lines if e["event"] == "start" and e["pid"] == first.pid}
    reused = {e["key"] for e in lines if e["event"] == "end" and e["reused"]}
    assert reused <= killed
