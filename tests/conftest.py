"""Shared fixtures: a tiny in-memory ImageSet whose target is learnable from the pixels
(:func:`bmdbench.testing.make_imageset`)."""

from __future__ import annotations

import pytest

from bmdbench.data.imageset import ImageSet
from bmdbench.testing import make_imageset


@pytest.fixture
def imageset() -> ImageSet:
    return make_imageset()


@pytest.fixture
def imageset_factory():
    """``make_imageset`` itself, for tests that build several datasets."""
    return make_imageset
