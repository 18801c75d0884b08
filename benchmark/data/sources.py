"""A run's inputs: its images (the embedded phantoms or a manifest) and its split, checked.

Torch-free, so that ``bmdbench run`` reports a bad manifest, split or label budget before it
loads the training engine.
"""

from __future__ import annotations

from pathlib import Path

from bmdbench.config import RunConfig, stable_hash, to_dict
from bmdbench.data.imageset import ImageSet
from bmdbench.data.manifest_file import check_manifest_file
from bmdbench.data.splits import Split, make_split
from bmdbench.errors import DataError

_IMAGES: dict[str, ImageSet] = {}


def check_sources(cfg: RunConfig) -> None:
    """The errors of the run's data sources that show without opening an image: the rows
    of its manifests (:func:`~bmdbench.data.manifest.read_sources`; read again when the
    images are decoded, which costs milliseconds), or extra unlabeled images given beside
    the synthetic data."""
    if cfg.data == "synthetic":
        _synthetic_alone(cfg)
        return
    check_manifest_file(Path(cfg.data))  # before pandas is imported
    from bmdbench.data.manifest import read_sources  # pandas and the image readers

    read_sources(cfg.data, cfg.unlabeled)


def _synthetic_alone(cfg: RunConfig) -> None:
    if cfg.unlabeled is not None:
        raise DataError(
            "--unlabeled goes with --data MANIFEST",
            "the synthetic data has its own unlabeled images (synth.n_unlabeled)",
        )


def load_images(cfg: RunConfig) -> ImageSet:
    """The run's images, decoded once per process: one set per data source, unlabeled
    images, image size and synthetic-data settings."""
    from bmdbench.data.manifest import load_manifest
    from bmdbench.data.synthetic import load_synthetic

    key = stable_hash([cfg.data, cfg.unlabeled, cfg.image_size, to_dict(cfg)["synth"]])
    if key not in _IMAGES:
        if cfg.data == "synthetic":
            _synthetic_alone(cfg)
            _IMAGES[key] = load_synthetic(cfg.synth, cfg.image_size)
        else:
            _IMAGES[key] = load_manifest(cfg.data, cfg.image_size, unlabeled=cfg.unlabeled)
    return _IMAGES[key]


def load_inputs(cfg: RunConfig) -> tuple[ImageSet, Split]:
    """The run's images and split. Checks that a stage-2 config (one with a ``parent``) has
    unlabeled images and that the labeled training images fill a stage-1 batch (the label
    budget)."""
    images = load_images(cfg)
    split = make_split(images, cfg.split, seed=cfg.seed)
    if cfg.parent is not None and len(split.unlabeled) == 0:
        raise DataError(
            f"{cfg.method} needs unlabeled images but the data has none",
            "add them with --unlabeled FOLDER_OR_MANIFEST or set a label budget (--n-labeled)",
        )
    batch = cfg.stage1.batch_size
    if len(split.train) < batch:
        raise DataError(
            f"{len(split.train)} labeled training images do not fill one batch of {batch} "
            "(stage1.batch_size)",
            f"raise the label budget (--n-labeled) to {batch} or more, or lower stage1.batch_size",
        )
    return images, split
