"""Whether a manifest's file is there at all: answered before pandas and the image readers
are imported (about 0.5 s), so a mistyped ``--data`` path is told at once."""

from __future__ import annotations

from pathlib import Path

from bmdbench.errors import DataError


def check_manifest_file(path: Path) -> None:
    """Raise :class:`DataError` when ``path`` is a folder or does not exist."""
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a manifest CSV", "give the path of the CSV")
    if not path.exists():
        raise DataError(
            f"manifest {path} not found",
            "check the path; a manifest is a CSV with columns image, target, patient_id",
        )
