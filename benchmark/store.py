"""Run records on disk.

A run is a directory ``<out>/runs/<name>/``. It is built under a temporary
name and renamed into place only once its ``record.json`` is written, so a
run directory without a final record never exists and is never counted.

``record.json`` holds a :class:`~bmdbench.record.RunRecord` (format 1).
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

from bmdbench.errors import ConfigError, DataError, OutputError
from bmdbench.record import RunRecord

RECORD = "record.json"
CHECKPOINT = "checkpoint.pt"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`write_bytes`)."""
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Write atomically: a temp file in the same folder, renamed into place. A write that
    fails (disk full, no permission) leaves no temp file and raises :class:`OutputError`."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_failed(exc, path) from exc


def write_failed(exc: OSError, path: Path | None = None) -> OutputError:
    """The one-line error of a write that failed: the path and the system's reason."""
    where = path if path is not None else exc.filename
    return OutputError(
        f"cannot write {where}: {exc.strerror or exc}",
        "free some disk space or give --out a folder you can write to",
    )


def check_out(out: Path, *subfolders: str, option: str = "--out") -> None:
    """Fail before anything is written when ``out`` (or ``out/<subfolder>``) is a file, lies
    under a file, or cannot be created for want of permission (:class:`ConfigError`)."""
    for path in (out, *(out / s for s in subfolders)):
        existing = path
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            where = "is a file" if existing == path else f"lies under {existing}, a file"
            raise ConfigError(
                f"{option} {out} {where}" if path == out else f"{path} is a file, not a folder",
                f"give {option} a folder (it is created if missing)",
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{option} {out} is not writable ({existing}: permission denied)",
                f"give {option} a folder you can write to",
            )


def runs_dir(out: Path) -> Path:
    return out / "runs"


def run_name(method: str, backbone: str, preset: str, seed: int, config_hash: str) -> str:
    return f"{method}-{backbone}-{preset}-s{seed}-{config_hash[:10]}"


def read_record(run_dir: Path) -> RunRecord | None:
    """The run's final record, or None if the run is incomplete (or not a run at all)."""
    path = run_dir / RECORD
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(
            f"{path} is not a valid run record",
            "restore it, or delete its run folder so that the run is made again",
        ) from None
    return RunRecord.from_json(data, str(path))


def iter_records(out: Path) -> Iterator[RunRecord]:
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
    owner = f"{socket.gethostname()}~{os.getpid()}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=base, prefix=f".{name}.{owner}.", suffix=".tmp"))
    except OSError as exc:
        raise write_failed(exc, base) from exc


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


SOURCE_PATHS = (":/benchmark", ":/methods", ":/backbones", ":/pyproject.toml")
"""What a run's code is made of, relative to the repository root (git pathspecs)."""


def git_sha(where: Path | None = None) -> str:
    """The commit of the bmdbench source tree, with ``-dirty`` appended when the source
    (:data:`SOURCE_PATHS`) differs from that commit, or "unknown" outside a git checkout.

    ``where``: a folder inside the checkout (default: this package's own folder).
    """
    cwd = where or Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        changed = git("diff", "--quiet", "HEAD", "--", *SOURCE_PATHS).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if changed else "")
