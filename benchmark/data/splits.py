"""Patient-grouped, seeded splits of an :class:`ImageSet` into train / val / test / unlabeled."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from bmdbench.config import SplitConfig, stable_hash
from bmdbench.data.imageset import SPLITS, ImageSet
from bmdbench.errors import BmdWarning, DataError
from bmdbench.messages import shortened


@dataclass(frozen=True)
class Split:
    """Indices into an ImageSet. ``unlabeled`` holds images whose targets methods never see:
    images without a label, and labeled images beyond the label budget (``SplitConfig.train``);
    never an image of a validation or test patient, nor one with a val or test image's content."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unlabeled: np.ndarray
    fingerprint: str  # hash of the image ids in every part
    labeled_fingerprint: str  # hash of the train/val/test ids only: what stage 1 depends on

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}

    def to_json(self, images: ImageSet) -> dict[str, object]:
        """The split as image ids per part, with its fingerprint, for the run record."""
        parts = {name: images.ids[getattr(self, name)].tolist() for name in SPLITS}
        return {"fingerprint": self.fingerprint, **parts}


def make_split(images: ImageSet, cfg: SplitConfig, seed: int = 0) -> Split:
    """Split labeled images by patient (seeded) or by the manifest's ``split`` column.

    Labeled images are those with a finite target and a given split other than
    "unlabeled". Test, then val are filled first, patient by patient in a seeded
    random order, never exceeding the requested counts; the remaining labeled
    images form the training pool, cut to the label budget when one is set.

    The test set depends on ``cfg.seed`` only. ``seed`` (the training seed) matters
    only with ``cfg.redraw``: then the val draw and the label-budget draw come from
    a stream of (``cfg.seed``, ``seed``), so each training seed sees its own labeled
    subset and validation split while the test set stays fixed. (A manifest's split
    column fixes val; only the budget draw varies then.)

    The unlabeled pool then may not hold an image of a validation or test patient (by
    patient id, where one was given: see :class:`~bmdbench.data.imageset.ImageFiles`) or
    the content of a validation or test image (its file's SHA-256: the same file under
    another path, or a copy). Such images are a :class:`DataError` naming them, or, with
    ``cfg.allow_overlap``, dropped from the pool with a warning. The label budget's hidden
    images are of training patients by construction.
    """
    labeled = images.labeled & (images.given_split != "unlabeled")
    always_unlabeled = np.flatnonzero(~labeled)
    rng = np.random.default_rng(cfg.seed)
    draw = np.random.default_rng([cfg.seed, seed]) if cfg.redraw else rng
    column = images.given_split[labeled]
    if cfg.use_column and np.isin(column, ("train", "val", "test")).any():
        train, val, test = _from_column(images, labeled)
    else:
        train, val, test = _random(images, np.flatnonzero(labeled), cfg, rng, draw)
    hidden = np.array([], dtype=np.int64)
    if cfg.train is not None:
        n_train = _count(cfg.train, len(train), "train")
        if n_train > len(train):
            raise DataError(
                f"the label budget asks for {n_train} training images but only {len(train)} remain",
                "lower --n-labeled (split.train) or --n-val/--n-test",
            )
        train, hidden = _take_patients(images.patient_ids, train, n_train, draw)
    unlabeled = np.sort(np.concatenate([hidden, always_unlabeled]).astype(np.int64))
    _check_disjoint_patients(images, train, val, test)
    unlabeled = _without_held_out(images, unlabeled, val, test, cfg.allow_overlap)
    parts = {"train": train, "val": val, "test": test, "unlabeled": unlabeled}
    ids = {name: images.ids[idx].tolist() for name, idx in parts.items()}
    return Split(
        train=np.sort(train),
        val=np.sort(val),
        test=np.sort(test),
        unlabeled=unlabeled,
        fingerprint=stable_hash(ids),
        labeled_fingerprint=stable_hash({k: ids[k] for k in ("train", "val", "test")}),
    )


def _count(value: float, n: int, name: str) -> int:
    if value < 0:
        raise DataError(
            f"split.{name}={value} is negative", "give a count (>= 1) or a fraction (< 1)"
        )
    return int(value) if value >= 1 else round(value * n)


def _random(
    images: ImageSet,
    labeled: np.ndarray,
    cfg: SplitConfig,
    test_rng: np.random.Generator,
    val_rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test patients drawn with ``test_rng``, then val from the rest with ``val_rng``
    (the same generator unless the split is redrawn per training seed)."""
    n_val, n_test = _count(cfg.val, len(labeled), "val"), _count(cfg.test, len(labeled), "test")
    if n_val < 2 or n_test < 2 or n_val + n_test >= len(labeled):
        raise DataError(
            f"{len(labeled)} labeled images cannot give {n_val} validation and {n_test} test images "
            "and leave some for training",
            "lower --n-val/--n-test (split.val, split.test) or add labeled images",
        )
    test, rest = _take_patients(images.patient_ids, labeled, n_test, test_rng)
    val, train = _take_patients(images.patient_ids, rest, n_val, val_rng)
    return train, val, test


def _take_patients(
    patient_ids: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick whole patients from ``pool`` in random order until ``n`` images, never more.

    Returns (taken, rest). A patient whose images would overshoot is skipped, so
    the count is exact whenever single-image patients remain to fill the gap.
    """
    patients, inverse = np.unique(patient_ids[pool], return_inverse=True)
    order = rng.permutation(len(patients))
    sizes = np.bincount(inverse, minlength=len(patients))
    chosen = np.zeros(len(patients), dtype=bool)
    total = 0
    for p in order:
        if total + sizes[p] <= n:
            chosen[p] = True
            total += sizes[p]
            if total == n:
                break
    mask = chosen[inverse]
    return pool[mask], pool[~mask]


def _from_column(
    images: ImageSet, labeled: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    given = images.given_split
    missing = np.flatnonzero(labeled & (given == ""))
    if len(missing):
        raise DataError(
            f"labeled image {images.ids[missing[0]]} has no split while other rows have one",
            "fill the split column for every labeled row (train/val/test), or remove the column",
        )
    parts = [np.flatnonzero(labeled & (given == name)) for name in ("train", "val", "test")]
    for name, idx in zip(("train", "val", "test"), parts, strict=True):
        if len(idx) < 2:
            raise DataError(
                f"the manifest's split column gives {len(idx)} {name} images",
                f"give at least 2 labeled images split={name}",
            )
    return parts[0], parts[1], parts[2]


def _check_disjoint_patients(
    images: ImageSet, train: np.ndarray, val: np.ndarray, test: np.ndarray
) -> None:
    seen: dict[str, str] = {}
    for name, idx in (("train", train), ("val", val), ("test", test)):
        for patient in np.unique(images.patient_ids[idx]):
            if patient in seen and seen[patient] != name:
                raise DataError(
                    f"patient {patient} is in both {seen[patient]} and {name}",
                    "give all of a patient's images the same split",
                )
            seen[patient] = name


def _without_held_out(
    images: ImageSet, unlabeled: np.ndarray, val: np.ndarray, test: np.ndarray, allow: bool
) -> np.ndarray:
    """``unlabeled`` less the images of val or test patients (ids given, not file stems) and
    those with the content of a val or test image; an error naming them unless ``allow``."""
    held_out = np.concatenate([val, test])
    files = images.files
    overlap = np.isin(images.patient_ids[unlabeled], images.patient_ids[held_out])
    if files is not None:
        overlap &= files.patient_given[unlabeled]
        overlap |= np.isin(files.digests[unlabeled], files.digests[held_out])
    found = unlabeled[overlap]
    if not len(found):
        return unlabeled
    parts = {"val": val, "test": test}
    listed = shortened([_why(images, int(i), parts) for i in found], "overlap")
    what = (
        f"{len(found)} image{'s' if len(found) > 1 else ''} of validation or test patients, "
        "or with the content of a validation or test image"
    )
    if not allow:
        raise DataError(
            f"the unlabeled pool holds {what}: {listed}",
            "remove them from the unlabeled images, or pass --allow-overlap "
            "(split.allow_overlap=true) to drop them from the pool",
        )
    warnings.warn(
        f"dropped from the unlabeled pool (--allow-overlap): {what}: {listed}",
        BmdWarning,
        stacklevel=3,
    )
    return unlabeled[~overlap]


def _why(images: ImageSet, i: int, parts: dict[str, np.ndarray]) -> str:
    """Where unlabeled image ``i`` is listed and the val or test image or patient it repeats."""
    files = images.files
    where = images.ids[i] if files is None else f"{files.rows[i]}: {images.ids[i]}"
    patient = str(images.patient_ids[i])
    for name, idx in parts.items():
        if (files is None or files.patient_given[i]) and (images.patient_ids[idx] == patient).any():
            return f"{where} (patient {patient!r} is in {name})"
    assert files is not None
    for name, idx in parts.items():
        same = idx[files.digests[idx] == files.digests[i]]
        if len(same):
            j = int(same[0])
            return f"{where} (the content of {name} image {images.ids[j]}, {files.rows[j]})"
    raise AssertionError(f"unlabeled image {i} repeats no val or test image")
