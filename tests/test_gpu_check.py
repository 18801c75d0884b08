"""``bench/gpu_check.sh``, the CUDA checks in one command, runs at small sizes on a CPU, so it
still works when the next GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_every_check_on_the_cpu(tmp_path):
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.split("| check | measured | goal | status |")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert sorted(rows) == [
        "gpu tests",
        "grid --methods baseline,mean_teacher --backbones tiny --seeds 2 --preset smoke "
        "--set stage1.epochs=1",
        "limit tiny 32 px",
        "paper proposed tiny",
    ]
    assert not any(word in done.stdout for word in ("| failed |", "| timed out |"))
    for method in ("baseline", "atl", "proposed", "mean_teacher"):
        assert f"{method} " in rows["limit tiny 32 px"]
    grid = next(row for name, row in rows.items() if name.startswith("grid"))
    assert "s for 4 runs on " in grid  # baseline and mean_teacher, 2 seeds each
    assert "min extrapolated" in rows["paper proposed tiny"]
    assert "bmdbench's estimate: at least" in rows["paper proposed tiny"]
    assert (tmp_path / "limit-tiny.json").is_file() and (tmp_path / "paper.json").is_file()
