"""The methods and backbones a command may name, and what ``bmdbench list`` shows of them,
answered without importing torch.

Both registries are filled by torch modules, so asking them costs an import of torch (and
of timm, for the backbones): 2 to 12 s on a laptop. A process that has not imported a
registry's package reads the registry's :class:`Catalogue` instead: a JSON file in the
cache folder (:func:`~bmdbench.data.cache.default_cache_dir`), written by the first command
that needed it, and read while its fingerprint holds. The fingerprint covers all that the
catalogue is made of: bmdbench's version, the size and modification time of every file of
the registering package, the versions of the libraries it draws names from (timm), and
each installed plug-in of the registry's entry-point group (its entry point, distribution
and version, and the files of its module). So an edited method or a newly installed
plug-in shows at once, with nothing to run. A cache folder that cannot be written costs
only the import, every time.

A process that has imported the package (a run, a grid worker, a test that registers a
method of its own) asks the registry itself. A method's hyperparameter *values* are checked
by the method's own dataclass, so an out-of-range one is reported after the import, still
before anything is written; unknown names and keys are reported from the catalogue.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import import_module
from importlib.metadata import PackageNotFoundError, entry_points, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import bmdbench
from bmdbench import store
from bmdbench.config import RunConfig, valid_keys
from bmdbench.errors import ConfigError, OutputError
from bmdbench.registry import unknown

FORMAT = 1  # bump when a catalogue's content changes shape
KEEP = 4  # catalogue files kept per registry (one per state of the code; older ones deleted)


@dataclass(frozen=True)
class Catalogue:
    """One registry's names and listing. Built by its package's ``catalogue()`` function."""

    kind: str  # "method" | "backbone"
    rows: dict[str, dict[str, Any]]  # registered name → what `bmdbench list` shows of it
    unlisted: tuple[str, ...] = ()  # more names a run may use: timm's architectures
    more: str = ""  # the error's words for ``unlisted`` ("or any timm model name")

    def check(self, name: str) -> None:
        """Raise the registry's own error unless ``name`` is registered or unlisted (which
        may carry a pretrained tag: ``resnet50.a1_in1k``)."""
        if name not in self.rows and name.split(".", 1)[0] not in set(self.unlisted):
            raise unknown(self.kind, name, list(self.rows), self.more, self.unlisted)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, default=str)

    @classmethod
    def from_json(cls, text: str) -> Catalogue:
        data = json.loads(text)
        if data.pop("format") != FORMAT:
            raise ValueError("another format")
        return cls(**{**data, "unlisted": tuple(data["unlisted"])})


@dataclass(frozen=True)
class _Registry:
    package: str  # importing it registers the built-ins; it defines catalogue() and check_name()
    group: str  # plug-ins' entry-point group
    libraries: tuple[str, ...] = field(default=())  # distributions whose version counts too


REGISTRIES = {
    "method": _Registry("bmdbench.methods", "bmdbench.methods"),
    "backbone": _Registry("bmdbench.backbones", "bmdbench.backbones", ("timm",)),
}


def load(kind: str) -> Catalogue:
    """The ``kind`` registry's catalogue: from its package if that is imported, else from
    the cache folder if fresh, else built (importing torch) and written there."""
    registry = REGISTRIES[kind]
    if registry.package in sys.modules:
        return import_module(registry.package).catalogue()
    from bmdbench.data.cache import default_cache_dir

    return _from_folder(kind, default_cache_dir())


def check(kind: str, name: str) -> None:
    """Raise :class:`~bmdbench.errors.ConfigError`, naming the closest, unless ``name`` is a
    ``kind`` a run may use."""
    package = REGISTRIES[kind].package
    if package in sys.modules:
        import_module(package).check_name(name)  # the registry itself: no listing built
    else:
        load(kind).check(name)


def check_method_settings(keys: Iterable[str]) -> None:
    """Each ``method.field`` key names a registered method and one of its hyperparameters."""
    methods = load("method").rows
    for key in keys:
        name, _, rest = key.partition(".")
        if name not in methods or not rest:
            raise ConfigError(
                f"unknown setting {key!r}",
                f"valid keys: {', '.join(valid_keys(RunConfig()))}, "
                "or <method>.<field> for a method's hyperparameters (bmdbench list methods)",
            )
        fields = methods[name]["hyperparameters"]
        if rest not in fields:
            raise ConfigError(
                f"unknown setting {key!r}",
                f"valid keys: {', '.join(f'{name}.{k}' for k in fields)}",
            )


@functools.cache
def _from_folder(kind: str, folder: Path) -> Catalogue:
    file = folder / f"catalogue-{kind}-{_fingerprint(REGISTRIES[kind])[:32]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return Catalogue.from_json(file.read_text())
    catalogue: Catalogue = import_module(REGISTRIES[kind].package).catalogue()
    try:
        store.write_text(file, catalogue.to_json())
    except OutputError:
        return catalogue  # a folder that cannot be written: the import, every time
    with contextlib.suppress(OSError):  # another process pruning too
        for old in sorted(folder.glob(f"catalogue-{kind}-*.json"), key=os.path.getmtime)[:-KEEP]:
            old.unlink()
    return catalogue


def _fingerprint(registry: _Registry) -> str:
    parts: list[object] = [FORMAT, bmdbench.__version__, *_files(registry.package)]
    for library in registry.libraries:
        parts.append((library, _version(library)))
    for point in sorted(entry_points(group=registry.group), key=lambda p: (p.name, p.value)):
        dist = point.dist
        owner = (dist.name, dist.version) if dist is not None else None
        parts += [(point.name, point.value, owner), *_files(point.module)]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _files(module: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of a module's file, or of every file of a package's folders.
    Finding a submodule imports its parents (``bmdbench``; a plug-in's package), not it."""
    try:
        spec = find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return [(module, -1, -1)]  # not installed: the build will say so
    if spec.submodule_search_locations:
        paths = sorted(
            p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.py")
        )
    else:
        paths = [Path(spec.origin)] if spec.origin else []
    return [(str(p), (s := p.stat()).st_size, s.st_mtime_ns) for p in paths]


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "absent"
