"""User-facing errors: what went wrong and how to fix it.

Every mistake a user can make (a bad manifest, an unknown method, a wrong
``--set`` key) raises a :class:`BmdError`. The CLI prints it as one line,
``error: <what> — <fix>``, and exits with its ``exit_status``: 2 for a mistake,
1 for a failure of the environment (:class:`OutputError`: a full disk).
"""

from __future__ import annotations

from typing import ClassVar


class BmdError(Exception):
    """A mistake the user can fix. ``what`` says what is wrong, ``fix`` how to fix it."""

    exit_status: ClassVar[int] = 2

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what} — {fix}")
        self.what = what
        self.fix = fix


class ConfigError(BmdError):
    """An unknown configuration key, a wrong type, or an unknown registry name."""


class DataError(BmdError):
    """A manifest, an image or a split that cannot be used."""


class CheckpointError(BmdError):
    """A checkpoint or pretrained weights file that cannot be loaded."""


class OutputError(BmdError):
    """A file that could not be written (disk full, no permission): nothing was left behind."""

    exit_status = 1
