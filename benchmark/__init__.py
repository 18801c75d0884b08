"""bmdbench: a benchmarking suite for semi-supervised regression on radiographs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bmdbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
