"""Synthetic hip phantoms: shape, determinism, patients, labels, no shortcut, learnable."""

from __future__ import annotations

import csv
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmdbench.config import PRESETS, SynthConfig
from bmdbench.data.imageset import ImageSet
from bmdbench.data.manifest import load_manifest
from bmdbench.data.synthetic import (
    BMD_RANGE,
    load_synthetic,
    synthesize,
    synthetic_fingerprint,
    write_synthetic,
)
from bmdbench.errors import DataError

SMOKE = SynthConfig(**PRESETS["smoke"]["synth"])  # 48 labeled / 40 patients / 24 unlabeled
QUICK = SynthConfig(**PRESETS["quick"]["synth"])  # 620 labeled / 470 patients / 560 unlabeled


@pytest.fixture(scope="module")
def smoke() -> ImageSet:
    return synthesize(SMOKE, 32)


@pytest.fixture(scope="module")
def quick_labeled() -> ImageSet:
    """The quick preset's labeled images at its size, 64 px (its unlabeled part is not needed)."""
    return synthesize(SynthConfig(**{**PRESETS["quick"]["synth"], "n_unlabeled": 0}), 64)


def test_fields_and_shapes(smoke: ImageSet) -> None:
    n = SMOKE.n_labeled + SMOKE.n_unlabeled
    assert smoke.images.shape == (n, 32, 32)
    assert smoke.images.dtype == np.uint8
    assert smoke.images.std() > 10  # not blank
    assert smoke.ids[0] == "synth-000000" and len(set(smoke.ids)) == n
    assert all(p.startswith("p") and len(p) == 6 for p in smoke.patient_ids)
    assert smoke.source == "synthetic" and smoke.unit == "g/cm²" and smoke.max_value == 255
    assert smoke.fingerprint == synthetic_fingerprint(SMOKE, 32)
    labeled = smoke.labeled
    assert labeled.sum() == SMOKE.n_labeled
    assert (smoke.given_split[labeled] == "").all()
    assert (smoke.given_split[~labeled] == "unlabeled").all()
    assert np.isfinite(smoke.truth).all()
    assert (smoke.truth >= BMD_RANGE[0]).all() and (smoke.truth <= BMD_RANGE[1]).all()


def test_same_seed_same_images_other_seed_other_images(smoke: ImageSet) -> None:
    again = synthesize(SMOKE, 32, workers=2)  # and the thread count changes nothing
    for name in ("images", "targets", "truth", "patient_ids", "ids", "given_split"):
        np.testing.assert_array_equal(getattr(again, name), getattr(smoke, name))
    other = synthesize(SynthConfig(**{**PRESETS["smoke"]["synth"], "seed": 1}), 32)
    assert not np.array_equal(other.images, smoke.images)
    assert not np.array_equal(other.truth, smoke.truth)
    assert other.fingerprint != smoke.fingerprint


def test_fingerprint_follows_config_size_and_nothing_else() -> None:
    assert synthetic_fingerprint(SMOKE, 32) == synthetic_fingerprint(SynthConfig(**vars(SMOKE)), 32)
    assert synthetic_fingerprint(SMOKE, 32) != synthetic_fingerprint(SMOKE, 64)
    noisier = SynthConfig(**{**vars(SMOKE), "label_noise": 0.02})
    assert synthetic_fingerprint(SMOKE, 32) != synthetic_fingerprint(noisier, 32)


def test_patients(smoke: ImageSet) -> None:
    labeled = smoke.labeled
    patients, counts = np.unique(smoke.patient_ids[labeled], return_counts=True)
    assert len(patients) == SMOKE.n_patients
    assert counts.max() >= 2  # some patients have several images
    unlabeled = smoke.patient_ids[~labeled]
    assert len(set(unlabeled)) == SMOKE.n_unlabeled  # one new patient each
    assert not set(unlabeled) & set(patients)


def test_same_patient_same_truth_other_image(smoke: ImageSet) -> None:
    ids = smoke.patient_ids
    repeated = [p for p in np.unique(ids) if (ids == p).sum() >= 2]
    assert repeated
    for patient in repeated:
        rows = np.flatnonzero(ids == patient)
        assert np.all(smoke.truth[rows] == smoke.truth[rows[0]])
        assert not np.array_equal(smoke.images[rows[0]], smoke.images[rows[1]])


def test_label_noise_is_relative_and_as_configured() -> None:
    cfg = SynthConfig(n_labeled=400, n_patients=400, n_unlabeled=0, label_noise=0.02)
    images = synthesize(cfg, 8)
    relative = images.targets / images.truth - 1
    assert abs(relative.mean()) < 0.005
    assert 0.016 < relative.std() < 0.024
    assert abs(images.truth.mean() - 0.75) < 0.03 and 0.12 < images.truth.std() < 0.18
    exact = synthesize(SynthConfig(n_labeled=20, n_patients=20, n_unlabeled=0, label_noise=0), 8)
    np.testing.assert_array_equal(exact.targets, exact.truth)


def test_labeled_images_do_not_depend_on_n_unlabeled(smoke: ImageSet) -> None:
    fewer = synthesize(SynthConfig(**{**PRESETS["smoke"]["synth"], "n_unlabeled": 3}), 32)
    n = SMOKE.n_labeled
    for name in ("images", "targets", "truth", "patient_ids", "ids"):
        np.testing.assert_array_equal(getattr(fewer, name)[:n], getattr(smoke, name)[:n])
    assert len(fewer) == n + 3


def test_bad_sizes_are_data_errors() -> None:
    with pytest.raises(DataError, match="n_patients"):
        synthesize(SynthConfig(n_labeled=5, n_patients=6, n_unlabeled=0), 32)
    with pytest.raises(DataError, match="image size"):
        synthesize(SMOKE, 4)


def _r2_of_linear_fit(feature: np.ndarray, target: np.ndarray) -> float:
    return float(np.corrcoef(feature, target)[0, 1] ** 2)


def test_global_intensity_is_no_shortcut(quick_labeled: ImageSet) -> None:
    """Exposure hides BMD from the image's brightness and contrast (the quick preset's set)."""
    pixels = quick_labeled.images.reshape(len(quick_labeled), -1).astype(np.float64)
    truth = quick_labeled.truth
    assert _r2_of_linear_fit(pixels.mean(axis=1), truth) < 0.1
    assert _r2_of_linear_fit(pixels.std(axis=1), truth) < 0.15
    for q in (0.05, 0.5, 0.95):
        assert _r2_of_linear_fit(np.quantile(pixels, q, axis=1), truth) < 0.15


def structural_features(images: np.ndarray) -> np.ndarray:
    """Exposure-free, position-free summaries of each image (N, F).

    Per image z-scored pixels → log power in radial frequency bands, quantiles of
    the z-scored values, and quantiles of the gradient magnitude.
    """
    n, size, _ = images.shape
    z = images.astype(np.float64)
    z = (z - z.mean(axis=(1, 2), keepdims=True)) / z.std(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(z)) ** 2
    f = np.fft.fftfreq(size) * size
    radius = np.hypot(f[:, None], f[None, :])
    edges = [1, 2, 3, 4, 6, 8, 11, 15, 20, 26, 33]
    bands = [
        np.log(power[:, (radius >= a) & (radius < b)].mean(axis=1)) for a, b in pairwise(edges)
    ]
    flat = z.reshape(n, -1)
    gradient = np.hypot(np.diff(z, axis=2)[:, :-1], np.diff(z, axis=1)[:, :, :-1]).reshape(n, -1)
    levels = np.quantile(flat, [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98], axis=1)
    steps = np.quantile(gradient, [0.25, 0.5, 0.75, 0.95], axis=1)
    return np.column_stack([*bands, *levels, *steps])


def test_bmd_is_learnable_from_structure(quick_labeled: ImageSet) -> None:
    """Ridge regression on structural features, split by patient, scored on held-out patients."""
    features = structural_features(quick_labeled.images)
    patients = np.unique(quick_labeled.patient_ids)
    held_out = np.random.default_rng(0).permutation(patients)[: len(patients) // 3]
    test = np.isin(quick_labeled.patient_ids, held_out)
    train = ~test
    mean, sd = features[train].mean(axis=0), features[train].std(axis=0)
    design = np.column_stack([np.ones(len(features)), (features - mean) / sd])
    penalty = 10.0 * np.eye(design.shape[1])
    penalty[0, 0] = 0.0
    targets = quick_labeled.targets
    weights = np.linalg.solve(
        design[train].T @ design[train] + penalty, design[train].T @ targets[train]
    )
    predicted = design[test] @ weights
    truth = quick_labeled.truth[test]
    r2 = 1 - np.sum((predicted - truth) ** 2) / np.sum((truth - truth.mean()) ** 2)
    assert r2 > 0.5, f"held-out R² {r2:.3f}"


def test_write_synthetic_round_trip(tmp_path: Path, smoke: ImageSet) -> None:
    out = tmp_path / "phantoms"
    manifest = write_synthetic(SMOKE, 32, out)
    assert manifest == out / "manifest.csv"
    assert [p.name for p in tmp_path.iterdir()] == ["phantoms"]  # no temporary left behind
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "target", "patient_id", "split", "true_bmd"]
    assert len(rows) == len(smoke)
    for i, row in enumerate(rows):
        with Image.open(out / row["image"]) as image:
            np.testing.assert_array_equal(np.asarray(image), smoke.images[i])
        assert row["patient_id"] == smoke.patient_ids[i]
        assert float(row["true_bmd"]) == smoke.truth[i]
        if smoke.labeled[i]:
            assert float(row["target"]) == smoke.targets[i] and row["split"] == ""
        else:
            assert row["target"] == "" and row["split"] == "unlabeled"


def test_written_set_loads_through_the_manifest_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke: ImageSet
) -> None:
    monkeypatch.setenv("BMDBENCH_CACHE", str(tmp_path / "cache"))
    loaded = load_manifest(write_synthetic(SMOKE, 32, tmp_path / "set"), 32)
    np.testing.assert_array_equal(loaded.images, smoke.images)
    np.testing.assert_array_equal(loaded.targets, smoke.targets)
    np.testing.assert_array_equal(loaded.patient_ids, smoke.patient_ids)
    np.testing.assert_array_equal(loaded.given_split, smoke.given_split)


def test_write_synthetic_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="new --out folder"):
        write_synthetic(SMOKE, 32, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_synthetic(
        SynthConfig(n_labeled=2, n_patients=2, n_unlabeled=1), 16, empty
    ).is_file()


def test_load_synthetic_caches_on_disk(tmp_path: Path, smoke: ImageSet) -> None:
    cache = tmp_path / "cache"
    first = load_synthetic(SMOKE, 32, cache_dir=cache)
    (file,) = cache.glob("synthetic-*.npz")
    second = load_synthetic(SMOKE, 32, cache_dir=cache)
    for images in (first, second):
        np.testing.assert_array_equal(images.images, smoke.images)
        np.testing.assert_array_equal(images.targets, smoke.targets)
        assert images.fingerprint == smoke.fingerprint
    file.write_bytes(b"damaged")
    np.testing.assert_array_equal(load_synthetic(SMOKE, 32, cache_dir=cache).images, smoke.images)
    assert file.stat().st_size > 100  # rewritten


def test_load_synthetic_does_not_cache_small_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BMDBENCH_CACHE", str(tmp_path / "cache"))
    load_synthetic(SynthConfig(n_labeled=4, n_patients=3, n_unlabeled=2), 16)
    assert not (tmp_path / "cache").exists()
