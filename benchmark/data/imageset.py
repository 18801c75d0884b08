"""The in-memory dataset every source (manifest, synthetic phantoms) is loaded into."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test", "unlabeled")


@dataclass(frozen=True)
class ImageFiles:
    """The files behind an :class:`ImageSet`'s images, for checks across images
    (:func:`bmdbench.data.splits.make_split`) and their messages. Arrays of length N."""

    digests: np.ndarray  # (N,) str: SHA-256 of each file's content (hex)
    rows: np.ndarray  # (N,) str: where each is listed ("m.csv line 5", for messages)
    patient_given: np.ndarray  # (N,) bool: False where the patient id is the file's stem


@dataclass(frozen=True)
class ImageSet:
    """Decoded, resized images and their labels, before any split.

    Arrays share their first axis (N images). ``targets`` is what methods may
    see (NaN for unlabeled images); ``truth`` is the true value where known
    (the synthetic phantoms' true BMD, or the label itself), NaN where not, and
    is used for diagnostics only. ``given_split`` holds a manifest's ``split``
    column ("" where absent). ``files`` describes the image files (None for the
    synthetic phantoms, which have none).
    """

    images: np.ndarray  # (N, H, W) uint8, or uint16 where a source has more than 8 bits
    targets: np.ndarray  # (N,) float64; NaN where unlabeled
    truth: np.ndarray  # (N,) float64; true value where known, else NaN
    patient_ids: np.ndarray  # (N,) str
    ids: np.ndarray  # (N,) str: image identifier (manifest path, or synthetic id)
    given_split: np.ndarray  # (N,) str: "" or one of SPLITS
    source: str  # "synthetic" or the manifest's path
    unit: str  # unit of the target, for display ("g/cm²" for BMD; "" if unknown)
    fingerprint: str  # content hash of images, targets and patients (SHA-256 hex)
    files: ImageFiles | None = None  # the files the images were decoded from

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("targets", "truth", "patient_ids", "ids", "given_split"):
            assert len(getattr(self, name)) == n, f"ImageSet.{name} has the wrong length"
        assert self.images.ndim == 3 and self.images.dtype in (np.uint8, np.uint16)
        if self.files is not None:
            for name in ("digests", "rows", "patient_given"):
                assert len(getattr(self.files, name)) == n, f"ImageFiles.{name}: wrong length"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labeled(self) -> np.ndarray:
        """Boolean mask of images with a usable target."""
        return np.isfinite(self.targets)

    @property
    def max_value(self) -> int:
        """Full-scale pixel value (255 or 65535): divide by it to get [0, 1]."""
        return int(np.iinfo(self.images.dtype).max)
