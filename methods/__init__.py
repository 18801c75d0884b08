"""Semi-supervised regression methods. Importing this package imports every module in it,
and so registers every built-in method; those of installed plug-ins (entry-point group
``bmdbench.methods``, each naming a :class:`Method` subclass: README, "Adding a method")
follow on the first lookup.

A new built-in method is one module here (and its test): nothing else names it.
"""

import importlib
import pkgutil

from bmdbench.methods.base import METHODS, FitContext, Method, Regressor, RegressorFactory

# The paper's methods first, in this order (the listing order); then every other module of
# the package, by name. An import error is not caught: a broken module is a broken install.
_PAPER = ("supervised", "consistency_regularisation", "self_training")
for _module in (*_PAPER, *sorted({m.name for m in pkgutil.iter_modules(__path__)} - set(_PAPER))):
    importlib.import_module(f"{__name__}.{_module}")


__all__ = [
    "METHODS",
    "FitContext",
    "Method",
    "Regressor",
    "RegressorFactory",
]
