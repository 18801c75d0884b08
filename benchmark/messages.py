"""What bmdbench tells the user besides its errors: its warnings, one plain line each and
once, and long lists in a message cut short, the whole list in a file.

Python prints a warning as ``<source file>:<line>: UserWarning: <message>`` followed by the
source line, and again wherever it is raised from another place or after the warning
filters changed: ``--allow-overlap`` printed its dropped images twice, once when the run's
inputs were checked and once when the run read them. Within :func:`plain_warnings` (the
CLI's whole command) bmdbench's own warnings (:class:`~bmdbench.errors.BmdWarning`) are one
line each, ``warning: <message>``, and a message is written once. They stay warnings, so a
program that imports bmdbench filters or records them as any other (``pytest.warns``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bmdbench import store
from bmdbench.config import stable_hash
from bmdbench.errors import BmdWarning, OutputError

NAMED = 3
"""Items a message names before "and N more"."""


def shortened(items: Sequence[str], name: str) -> str:
    """``items`` for a one-line message, "; "-separated: all of them when they are
    :data:`NAMED` or fewer; else the first ones, then "and N more (all M: FILE)", where FILE
    holds one item per line. FILE lies in the temporary folder (not under ``--out``: a
    message is no result), named after ``name`` and its content, so the same list gives the
    same file. A file that cannot be written is left out of the message."""
    if len(items) <= NAMED:
        return "; ".join(items)
    text = "".join(f"{item}\n" for item in items)
    file = Path(tempfile.gettempdir()) / "bmdbench" / f"{name}-{stable_hash(text)[:12]}.txt"
    try:
        store.write_text(file, text)
        where = f" (all {len(items)}: {file})"
    except OutputError:
        where = ""
    return f"{'; '.join(items[:NAMED])}; and {len(items) - NAMED} more{where}"


@contextmanager
def plain_warnings() -> Iterator[None]:
    """Write each :class:`~bmdbench.errors.BmdWarning` as ``warning: <message>`` on one
    line, without its source, and only the first time its message is seen. Other warnings
    keep Python's form, and so do bmdbench's under ``--debug`` (``BMDBENCH_DEBUG``), which
    then says where each came from."""
    python_form = warnings.formatwarning
    written: set[str] = set()

    def plain(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        if not issubclass(category, BmdWarning) or os.environ.get("BMDBENCH_DEBUG"):
            return python_form(message, category, filename, lineno, line)
        text = " ".join(str(message).split())
        if text in written:
            return ""
        written.add(text)
        return f"warning: {text}\n"

    warnings.formatwarning = plain
    try:
        yield
    finally:
        warnings.formatwarning = python_form
