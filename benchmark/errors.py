"""User-facing errors: what went wrong and how to fix it.

Every mistake a user can make (a bad manifest, an unknown method, a wrong
``--set`` key) raises a :class:`BmdError`. The CLI prints it as one line,
``error: <what> — <fix>``, and exits with its ``exit_status``: 2 for a mistake,
1 for a failure of the environment (:class:`OutputError`: a full disk).

The other exceptions here end a run rather than report a mistake: :class:`Diverged` and
:class:`Pruned` stop training (the Trainer, a search's pruner) and the run records why;
:class:`RunFailed` then reports the written record to the caller (exit status 1 at the CLI).
Every exception bmdbench raises on purpose is defined in this module, which imports nothing
heavy, so the CLI can catch them without importing torch; so is :class:`BmdWarning`, the
category of bmdbench's own warnings.
"""

from __future__ import annotations

from pathlib import Path
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


class PluginError(BmdError):
    """An installed plug-in (an entry point of ``bmdbench.methods`` or ``bmdbench.backbones``)
    that cannot be loaded: the message names its distribution."""

    exit_status = 1


class BmdWarning(UserWarning):
    """Something the user should know that does not stop the command: images dropped from
    the unlabeled pool (``--allow-overlap``), a cache that cannot be written, a table that
    finds none of the runs. The CLI writes each as one line, ``warning: <message>``, once
    (:func:`bmdbench.messages.plain_warnings`)."""


class Diverged(Exception):
    """The loss became NaN or infinite (raised by the Trainer's DivergenceGuard hook; the
    run's status: diverged)."""

    def __init__(self, epoch: int, losses: dict[str, float]) -> None:
        super().__init__(f"loss is not finite at epoch {epoch}: {losses}")
        self.epoch = epoch
        self.losses = losses


class Pruned(Exception):
    """Raised by an epoch callback to end a run early: a search trial its pruner stopped
    (the run's status: pruned)."""


class RunFailed(Exception):
    """A run ended with status ``diverged``, ``pruned`` or ``failed``; its record is written."""

    def __init__(self, run_dir: Path, status: str, message: str) -> None:
        super().__init__(f"run {status}: {message}")
        self.run_dir = run_dir
        self.status = status
