"""Semi-supervised regression methods. Importing this package imports every module in it,
and so registers every built-in method; those of installed plug-ins (entry-point group
``bmdbench.methods``, each naming a :class:`Method` subclass: README, "Adding a method")
follow on the first lookup.

A new built-in method is one module here (and its test): nothing else names it.
"""

import importlib
import pkgutil
from dataclasses import Field, asdict, fields
from typing import Any

from bmdbench.catalogue import Catalogue
from bmdbench.config import flatten
from bmdbench.methods.base import METHODS, FitContext, Method, Regressor, RegressorFactory

# The paper's methods first, in this order (the listing order); then every other module of
# the package, by name. An import error is not caught: a broken module is a broken install.
_PAPER = ("supervised", "consistency_regularisation", "self_training")
for _module in (*_PAPER, *sorted({m.name for m in pkgutil.iter_modules(__path__)} - set(_PAPER))):
    importlib.import_module(f"{__name__}.{_module}")


def check_name(name: str) -> None:
    """Raise :class:`~bmdbench.errors.ConfigError`, naming the closest, unless ``name`` is a
    registered method."""
    METHODS.get(name)


def catalogue() -> Catalogue:
    """What ``bmdbench list methods`` shows of each method (stage, stage-1 parent, the first
    line of its docstring, its hyperparameters' defaults), its search ranges and the searches
    it is the default of, as :mod:`bmdbench.catalogue` keeps them."""
    rows = {}
    for name in METHODS:
        method = METHODS.get(name)
        params = method.Params()
        rows[name] = {
            "stage": method.stage,
            "parent": getattr(params, "stage1", None),
            "description": (method.__doc__ or "").strip().splitlines()[0],
            "hyperparameters": flatten(asdict(params)),
            "checks": {f.name: _check(f) for f in fields(params)},
            "search_space": {key: asdict(r) for key, r in method.search_space.items()},
            "tune_default": list(method.tune_default),
        }
    return Catalogue("method", rows)


def _check(f: Field[Any]) -> dict[str, Any]:
    """A hyperparameter's type (as written) and its declared rule, for the catalogue."""
    valid = f.metadata.get("valid")
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    rule = None if valid is None or valid.rule is None else [valid.rule[0], list(valid.rule[1])]
    return {"type": kind, "rule": rule}  # lists, as JSON writes them


__all__ = [
    "METHODS",
    "FitContext",
    "Method",
    "Regressor",
    "RegressorFactory",
    "catalogue",
    "check_name",
]
