"""What the options several commands share mean, each in one place: a count that must be
positive (``--seeds``, ``--workers``, ``--n-trials``, ``--equal-budget``), and the dotted
settings a command's options give a run.

Precedence of the settings, lowest first: the ``--config`` file, the options that stand for
one setting (``--n-labeled`` for ``split.train``, ``--allow-overlap`` for
``split.allow_overlap``, ...), then ``--set``. So ``--allow-overlap`` is
``--set split.allow_overlap=true`` in every command, below the user's own ``--set``.
Torch-free: the CLI calls it before the engine is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bmdbench.config import load_config_file, parse_set
from bmdbench.errors import ConfigError


def check_positive(option: str, count: int) -> None:
    """Raise :class:`ConfigError` unless ``count``, given as ``option``, is 1 or more."""
    if count < 1:
        raise ConfigError(f"{option} {count} is not a positive count", f"give {option} 1 or more")


def settings(
    sets: Sequence[str] | None,
    *,
    config: Path | None = None,
    allow_overlap: bool = False,
    given: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dotted settings of a command's options: the ``config`` file's, then ``given``
    (setting → an option's value; None where the option was not given), then
    ``allow_overlap``, then each ``--set KEY=VALUE`` of ``sets``."""
    out = load_config_file(config) if config else {}
    out.update({key: value for key, value in (given or {}).items() if value is not None})
    if allow_overlap:
        out["split.allow_overlap"] = "true"
    out.update(parse_set(sets or []))
    return out
