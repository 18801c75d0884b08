"""Semi-supervised regression methods. Importing this package registers every method."""

from bmdbench.methods import consistency_regularisation, self_training, supervised
from bmdbench.methods.base import METHODS, FitContext, Method, Regressor, describe

__all__ = [
    "METHODS",
    "FitContext",
    "Method",
    "Regressor",
    "consistency_regularisation",
    "describe",
    "self_training",
    "supervised",
]
