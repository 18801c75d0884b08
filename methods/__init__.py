"""Semi-supervised regression methods. Importing this package registers every built-in method;
those of installed plug-ins (entry-point group ``bmdbench.methods``, each naming a
:class:`Method` subclass: README, "Adding a method") follow on the first lookup."""

# isort: off
# Importing these modules registers their methods; the import order is the listing order.
from bmdbench.methods import supervised, consistency_regularisation, self_training  # noqa: F401

# isort: on
from bmdbench.methods.base import (
    METHODS,
    FitContext,
    Method,
    Regressor,
    RegressorFactory,
    describe,
)

__all__ = ["METHODS", "FitContext", "Method", "Regressor", "RegressorFactory", "describe"]
