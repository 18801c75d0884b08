"""Strict registries: duplicates are errors, a miss lists what exists and the closest name.

Installed distributions add entries through an entry-point group (``NAME = "module:attribute"``
in their metadata, e.g. ``[project.entry-points."bmdbench.methods"]`` in pyproject.toml). A
registry loads its group on its first lookup, after the entries its package registers by
decorator (the built-ins), not when that package is imported: a plug-in module imports the
package (``from bmdbench.methods import Method``), and an import-time load would import the
plug-in again while it is half-imported. So a plug-in module must not look up a registry
while it is being imported.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from bmdbench.errors import ConfigError, PluginError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object. ``kind`` names the registry in error messages ("method", "backbone").

    ``group``: the entry-point group whose objects are registered under their entry points'
    names on the first lookup; ``accepts`` tells whether an object is ``wanted`` ("a Method
    subclass"). All of them are registered, or none: an entry point that does not import,
    names something else, or whose name is not an identifier or is taken makes every lookup
    raise :class:`~bmdbench.errors.PluginError`, naming its distribution and the fix.
    """

    def __init__(
        self,
        kind: str,
        group: str | None = None,
        accepts: Callable[[object], bool] = callable,
        wanted: str = "a callable",
    ) -> None:
        self.kind = kind
        self._group = group  # None once loaded
        self._accepts = accepts
        self._wanted = wanted
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its argument under ``name``; a second use of a name raises."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._all():
            raise unknown(self.kind, name, self.names())
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._all() if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def _all(self) -> dict[str, T]:
        """The entries, the entry-point group's loaded first if it is not yet."""
        if self._group is not None:
            self._entries.update(self._load_group(self._group))
            self._group = None
        return self._entries

    def _load_group(self, group: str) -> dict[str, T]:
        found: dict[str, T] = {}
        for point in entry_points(group=group):
            dist = point.dist.name if point.dist is not None else "its distribution"
            where = f"{self.kind} plug-in {point.name!r} = {point.value!r} of {dist}"
            remove = f"pip uninstall {dist}"
            try:
                obj = point.load()
            except Exception as exc:
                raise PluginError(
                    f"{where} does not import ({type(exc).__name__}: {exc})",
                    f"fix the plug-in or remove it: {remove}",
                ) from exc
            if not self._accepts(obj):
                raise PluginError(
                    f"{where} is {obj!r}, not {self._wanted}",
                    f"point the entry point at {self._wanted}, or remove it: {remove}",
                )
            if not point.name.isidentifier():
                raise PluginError(
                    f"{where}: its name is not an identifier (letters, digits, underscores)",
                    f"rename the entry point in the plug-in's pyproject.toml, or {remove}",
                )
            if self._entries.get(point.name) is obj:
                raise PluginError(
                    f"{where} registers itself too",
                    "remove its registering decorator: the entry point registers it",
                )
            if point.name in self._entries or point.name in found:
                raise PluginError(
                    f"{where}: a {self.kind} {point.name!r} exists already",
                    f"rename the entry point in the plug-in's pyproject.toml, or {remove}",
                )
            found[point.name] = obj
        return found


def unknown(
    kind: str, name: str, known: list[str], more: str = "", unlisted: Iterable[str] = ()
) -> ConfigError:
    """The error for a name no registry holds: the closest of ``known`` and ``unlisted``
    names, then the ``known`` ones, then ``more`` ("or any timm model name")."""
    close = difflib.get_close_matches(name, [*known, *unlisted], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    tail = f", {more}" if more else ""
    return ConfigError(f"unknown {kind} {name!r}", f"{hint}known {kind}s: {', '.join(known)}{tail}")
