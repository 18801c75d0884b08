"""Run records on disk.

A run is a directory ``<out>/runs/<name>/``. It is built under a temporary
name and renamed into place only once its ``record.json`` is written, so a
run directory without a final record never exists and is never counted.

``record.json`` (format 1) holds: ``name``, ``method``, ``backbone``,
``preset``, ``seed``, ``status`` (``ok`` | ``diverged`` | ``pruned`` | ``failed``),
``error``, ``config`` (resolved) and ``config_hash``, ``parent_run``, ``data``
(source, fingerprints, split sizes, unit), ``metrics`` with ``val`` and
``test`` dicts keyed by :data:`bmdbench.metrics.METRIC_KEYS`,
``selected_epoch``, ``diagnostics``, ``timings``, ``versions``, ``git_sha``,
``device``, ``created`` and ``study`` (``{"name", "trial"}`` for a search trial, else null).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RECORD = "record.json"
CHECKPOINT = "checkpoint.pt"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def runs_dir(out: Path) -> Path:
    return out / "runs"


def run_name(method: str, backbone: str, preset: str, seed: int, config_hash: str) -> str:
    return f"{method}-{backbone}-{preset}-s{seed}-{config_hash[:10]}"


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's final record, or None if the run is incomplete."""
    try:
        return json.loads((run_dir / RECORD).read_text())
    except FileNotFoundError:
        return None


def iter_records(out: Path) -> Iterator[dict[str, Any]]:
    """The final records of every complete run under ``out/runs`` (staging folders skipped)."""
    base = runs_dir(out)
    if not base.is_dir():
        return
    for run_dir in sorted(base.iterdir()):
        if run_dir.name.startswith("."):
            continue
        record = read_record(run_dir)
        if record is not None:
            yield record


def staging_dir(out: Path, name: str) -> Path:
    """A fresh temporary directory beside the final one (same filesystem), named
    ``.<name>.<host>~<pid>.<random>.tmp`` so that a dead process's leftovers can be found."""
    base = runs_dir(out)
    base.mkdir(parents=True, exist_ok=True)
    owner = f"{socket.gethostname()}~{os.getpid()}"
    return Path(tempfile.mkdtemp(dir=base, prefix=f".{name}.{owner}.", suffix=".tmp"))


def remove_dead_staging(out: Path) -> int:
    """Delete staging folders left by killed processes of this host; returns how many."""
    base = runs_dir(out)
    host = socket.gethostname()
    removed = 0
    for path in base.glob(".*.tmp") if base.is_dir() else ():
        stem = path.name.removesuffix(".tmp").rpartition(".")[0]  # without the random part
        owner, _, pid = stem.rpartition("~")
        if owner.endswith(f".{host}") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(staging: Path, final: Path) -> None:
    """Move a finished run into place, replacing an older run of the same name."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old)
    else:
        staging.rename(final)


def git_sha() -> str:
    """The commit of the bmdbench source tree, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()
