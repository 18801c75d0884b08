"""Shared fixtures: a tiny in-memory ImageSet whose target is learnable from the pixels
(:func:`bmdbench.testing.make_imageset`), and a small manifest with a split column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmdbench.data.imageset import ImageSet
from bmdbench.testing import make_imageset


@pytest.fixture
def imageset() -> ImageSet:
    return make_imageset()


@pytest.fixture
def imageset_factory():
    """``make_imageset`` itself, for tests that build several datasets."""
    return make_imageset


def write_manifest(
    folder: Path, unlabeled: Sequence[str] = (), parts: Sequence[tuple[str, int]] | None = None
) -> Path:
    """``folder/manifest.csv`` (columns image, target, patient_id, split, unit) and its PNGs,
    every one of its own content: per part of ``parts`` (default: 12 train, 4 val, 4 test)
    patients ``<part>0``, ``<part>1``, ... with one labeled image ``<part><j>.png`` each, then
    the rows ``unlabeled`` ("image,target,patient_id,split"), whose missing images are made."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,target,patient_id,split,unit"]
    for part, n in parts or (("train", 12), ("val", 4), ("test", 4)):
        rows += [f"{part}{j}.png,{0.5 + j / 100},{part}{j},{part},g/cm²" for j in range(n)]
    rows += [f"{row}," for row in unlabeled]  # unit left empty
    for value, row in enumerate(rows[1:], start=1):
        image = folder / row.split(",")[0]
        if not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(image)
    path = folder / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def manifest_factory():
    """``write_manifest`` itself."""
    return write_manifest
