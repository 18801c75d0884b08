"""Shared fixtures: a tiny in-memory ImageSet whose target is learnable from the pixels, and a
small manifest with a split column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmdbench.data.imageset import ImageSet


def make_imageset(
    n_labeled: int = 40, n_unlabeled: int = 16, size: int = 16, seed: int = 0
) -> ImageSet:
    """Bright squares whose side grows with the target; the truth of unlabeled images is kept."""
    rng = np.random.default_rng(seed)
    n = n_labeled + n_unlabeled
    truth = rng.uniform(0.4, 1.1, n)
    images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
    for i, value in enumerate(truth):
        side = int(2 + value * (size - 4) / 1.1)
        images[i, :side, :side] += 150
    targets = truth.copy()
    targets[n_labeled:] = np.nan
    split = np.array([""] * n_labeled + ["unlabeled"] * n_unlabeled)
    return ImageSet(
        images=images,
        targets=targets,
        truth=truth,
        patient_ids=np.array([f"p{i}" for i in range(n)]),
        ids=np.array([f"img{i}" for i in range(n)]),
        given_split=split,
        source="test",
        unit="g/cm²",
        fingerprint=f"test-{seed}-{n}-{size}",
    )


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
