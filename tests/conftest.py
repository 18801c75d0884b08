"""Shared fixtures: a tiny in-memory ImageSet whose target is learnable from the pixels."""

from __future__ import annotations

import numpy as np
import pytest

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
