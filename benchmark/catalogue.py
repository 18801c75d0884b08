"""The methods and backbones a command may name, and what ``bmdbench list`` shows of them,
answered without importing torch.

Both registries are filled by torch modules, so asking them costs an import of torch (and
of timm, for the backbones): 2 to 12 s on the 2-core development machine. A process that
has not imported a registry's package reads the registry's :class:`Catalogue` instead: a
JSON file in the cache folder (:func:`~bmdbench.data.cache.default_cache_dir`), written by
the first command that needed it, and read while its fingerprint holds. The fingerprint
covers all that the catalogue is made of: bmdbench's version, the size and modification
time of every file of the registering package, the versions of the libraries it draws
names from (timm), and each installed plug-in of the registry's entry-point group (its
entry point, distribution and version, and the files of its top-level package or module).
So an edited method or a newly installed plug-in shows at once, with nothing to run. A
cache folder that cannot be written costs only the import, every time.

A process that has imported the package (a run, a grid worker, a test that registers a
method of its own) asks the registry itself. A method's catalogue row holds, besides what
``list methods`` shows, each hyperparameter's type as written and its rule as declared
(:attr:`~bmdbench.config.Valid.rule`), so that a ``--set METHOD.KEY=VALUE`` is checked here
by the same code that checks it on the method's class (:func:`check_method_settings`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, make_dataclass
from importlib import import_module
from importlib.metadata import PackageNotFoundError, entry_points, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Union

import bmdbench
from bmdbench import store
from bmdbench.config import RULES, RunConfig, Valid, apply, check_fields, valid_keys
from bmdbench.errors import ConfigError, OutputError
from bmdbench.registry import unknown

FORMAT = 1  # bump when a catalogue's content changes shape
KEEP = 4  # catalogue files kept per registry (one per state of the code; older ones deleted)


@dataclass(frozen=True)
class Catalogue:
    """One registry's names and listing. Built by its package's ``catalogue()`` function."""

    kind: str  # "method" | "backbone"
    rows: dict[str, dict[str, Any]]  # registered name → what `bmdbench list` shows, and more
    unlisted: tuple[str, ...] = ()  # more names a run may use: timm's architectures
    more: str = ""  # the error's words for ``unlisted`` ("or any timm model name")

    def check(self, name: str) -> None:
        """Raise the registry's own error unless ``name`` is registered or unlisted (which
        may carry a pretrained tag: ``resnet50.a1_in1k``)."""
        if name not in self.rows and name.split(".", 1)[0] not in self._unlisted:
            raise unknown(self.kind, name, list(self.rows), self.more, self.unlisted)

    @functools.cached_property
    def _unlisted(self) -> frozenset[str]:  # built once, not on every grid cell's check
        return frozenset(self.unlisted)

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


def check_method_settings(settings: Mapping[str, Any]) -> None:
    """Each ``method.field`` key names a registered method and one of its hyperparameters,
    and its value has the field's type and passes the field's declared rule: checked on a
    stand-in of the field rebuilt from the catalogue, by the same code as the real one
    (:func:`~bmdbench.config.apply`, :func:`~bmdbench.config.check_fields`). A rule a method
    wrote itself (no :attr:`~bmdbench.config.Valid.rule`) is checked later, by its class."""
    methods = load("method").rows
    for key, value in settings.items():
        name, _, rest = key.partition(".")
        if name not in methods or not rest:
            raise ConfigError(
                f"unknown setting {key!r}",
                f"valid keys: {', '.join(valid_keys(RunConfig()))}, "
                "or <method>.<field> for a method's hyperparameters (bmdbench list methods)",
            )
        row = methods[name]
        if rest not in row["hyperparameters"]:
            raise ConfigError(
                f"unknown setting {key!r}",
                f"valid keys: {', '.join(f'{name}.{k}' for k in row['hyperparameters'])}",
            )
        if (stand_in := _stand_in(rest, row)) is not None:
            check_fields(apply(stand_in, {rest: value}, prefix=f"{name}."), f"{name}.")


def stage1_names() -> list[str]:
    """The registered stage-1 methods (those a stage-2 method may start from)."""
    return [name for name, row in load("method").rows.items() if row["stage"] == 1]


STAGE1 = {
    "valid": Valid(
        lambda name: name in stage1_names(),
        lambda: f"a stage-1 method: {', '.join(stage1_names())}",
        "is not a stage-1 method",
        ("stage1", ()),
    )
}
"""Metadata of a stage-2 method's ``stage1`` field: the method whose checkpoint it starts from."""

_RULES = {**RULES, "stage1": lambda: STAGE1}
_TYPES: dict[str, Any] = {"bool": bool, "int": int, "float": float, "str": str, "None": type(None)}


def _stand_in(field_name: str, row: dict[str, Any]) -> Any:
    """One field of a method's Params, as a dataclass of its own with the declared type,
    default and rule; None for a field whose type is not made of builtin names (``float |
    None`` is) or whose rule this code does not know (the class checks those)."""
    check = row["checks"].get(field_name)
    parts = [part.strip() for part in check["type"].split("|")] if check else ["?"]
    if not all(part in _TYPES for part in parts):
        return None
    kinds = tuple(_TYPES[part] for part in parts)
    try:
        metadata = _RULES[rule[0]](*rule[1]) if (rule := check["rule"]) else {}
    except (KeyError, TypeError):  # a rule that this code no longer has
        return None
    default = row["hyperparameters"][field_name]
    one = field(default=default, metadata=metadata)
    kind = kinds[0] if len(kinds) == 1 else Union[kinds]  # noqa: UP007 (built at run time)
    return make_dataclass("StandIn", [(field_name, kind, one)], frozen=True)()


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
        parts += [(point.name, point.value, owner), *_files(point.module.partition(".")[0])]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _files(module: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of a module's file, or of every file of a package's folders
    (a plug-in's whole top-level package, wherever its entry point's class is). Finding a
    submodule imports its parents (``bmdbench`` for ``bmdbench.methods``), not it."""
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
