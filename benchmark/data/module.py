"""Device-resident data for one run: batches without per-sample Python work."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bmdbench.data.imageset import ImageSet
from bmdbench.data.splits import Split


@dataclass(frozen=True)
class Batch:
    """One training batch, on the training device.

    ``images`` are un-augmented, float in [0, 1], (B, 1, H, W): a method draws
    its own augmentations with ``ctx.augment``. ``targets`` are in the loss's
    space (raw, or z-scored with ``target_norm=zscore``) and NaN where the image
    is unlabeled; ``labeled`` is their finite mask. ``index`` is each image's
    position in the training pool (``DataModule.pool_size``), for per-image banks.
    """

    images: torch.Tensor
    targets: torch.Tensor
    labeled: torch.Tensor
    index: torch.Tensor


class DataModule:
    """Images of one split held once on ``device`` as integers, converted per batch.

    The training pool of stage 1 is the labeled training images; that of stage 2
    is those followed by the unlabeled images (labeled ones first, so pool
    positions ``< n_labeled`` are labeled).
    """

    def __init__(
        self, images: ImageSet, split: Split, device: torch.device, target_norm: str = "none"
    ) -> None:
        self.device = device
        self.scale = float(images.max_value)
        self.n_labeled = len(split.train)
        self.unit = images.unit
        pixels = images.images.astype(_resident_dtype(images.images.dtype), copy=False)
        train = split.train
        if target_norm == "zscore":
            self.target_mean = float(images.targets[train].mean())
            self.target_std = float(images.targets[train].std()) or 1.0
        else:
            self.target_mean, self.target_std = 0.0, 1.0

        def put(idx: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(pixels[idx])[:, None]).to(device)

        pool = np.concatenate([train, split.unlabeled])
        self._pool_images = put(pool)
        targets = images.targets[pool].copy()
        targets[self.n_labeled :] = np.nan
        self.pool_targets = torch.from_numpy(self.normalise(targets)).float().to(device)
        self.pool_truth = images.truth[pool].astype(np.float64)  # diagnostics only
        self._eval = {
            name: (put(idx), images.targets[idx].astype(np.float64))
            for name, idx in (("val", split.val), ("test", split.test))
        }

    @property
    def pool_size(self) -> int:
        return len(self._pool_images)

    def normalise(self, targets: np.ndarray) -> np.ndarray:
        return (targets - self.target_mean) / self.target_std

    def denormalise(self, values: np.ndarray) -> np.ndarray:
        """Map predictions from the loss's space back to the target's own unit."""
        return values * self.target_std + self.target_mean

    def to_float(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().div_(self.scale)

    def train_batches(
        self, batch_size: int, with_unlabeled: bool, generator: torch.Generator
    ) -> Iterator[Batch]:
        """One epoch of shuffled batches over the labeled pool (or the whole pool).

        A final batch of a single image is dropped (batch norm needs two).
        """
        n = self.pool_size if with_unlabeled else self.n_labeled
        order = torch.randperm(n, generator=generator).to(self.device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:
                break
            yield self.batch(index)

    def batch(self, index: torch.Tensor) -> Batch:
        """The pool images at ``index`` (pool positions, on the device), un-augmented, with their
        loss-space targets."""
        targets = self.pool_targets[index]
        return Batch(
            images=self.to_float(self._pool_images[index]),
            targets=targets,
            labeled=torch.isfinite(targets),
            index=index,
        )

    def two_stream_batches(
        self, batch_size: int, labeled_per_batch: int, generator: torch.Generator
    ) -> Iterator[Batch]:
        """One stage-2 epoch in which every batch holds ``labeled_per_batch`` labeled images
        followed by ``batch_size - labeled_per_batch`` unlabeled ones (mean teacher's labeled
        sub-batch). Each stream walks its own shuffled order and starts a new shuffle when it
        runs out, so the supervised term is averaged over the same number of images on every
        step. The epoch has as many steps as one pass over the whole pool
        (:meth:`steps_per_epoch`), so every stage-2 method gets the same optimisation budget.
        """
        steps = self.steps_per_epoch(batch_size, with_unlabeled=True)
        labeled = _stream(self.n_labeled, labeled_per_batch * steps, generator)
        n_unlabeled = self.pool_size - self.n_labeled
        unlabeled = self.n_labeled + _stream(
            n_unlabeled, (batch_size - labeled_per_batch) * steps, generator
        )
        labeled = labeled.view(steps, labeled_per_batch).to(self.device)
        unlabeled = unlabeled.view(steps, -1).to(self.device)
        for step in range(steps):
            index = torch.cat([labeled[step], unlabeled[step]])
            yield self.batch(index)

    def labeled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One stage-2 epoch of labeled images only: as many steps as one pass over the whole
        pool (:meth:`steps_per_epoch`), each batch ``batch_size`` labeled images from
        back-to-back shuffles of them (the equal-compute supervised control's batches)."""
        steps = self.steps_per_epoch(batch_size, with_unlabeled=True)
        size = min(batch_size, self.n_labeled)
        order = _stream(self.n_labeled, size * steps, generator).view(steps, size)
        for index in order.to(self.device):
            yield self.batch(index)

    def steps_per_epoch(self, batch_size: int, with_unlabeled: bool) -> int:
        return steps_per_epoch(self.pool_size if with_unlabeled else self.n_labeled, batch_size)

    def pool_chunks(self, chunk: int = 256) -> Iterator[torch.Tensor]:
        """The whole training pool in order, float, un-augmented, for pool-wide predictions."""
        for start in range(0, self.pool_size, chunk):
            yield self.to_float(self._pool_images[start : start + chunk])

    def labeled_chunks(self, chunk: int = 256) -> Iterator[torch.Tensor]:
        """The labeled training images in pool order, float, un-augmented, in chunks of
        nearly equal size (none of one image, which batch norm in training mode refuses)."""
        bounds = np.linspace(0, self.n_labeled, -(-self.n_labeled // chunk) + 1).round()
        for start, stop in zip(bounds[:-1].astype(int), bounds[1:].astype(int), strict=True):
            yield self.to_float(self._pool_images[start:stop])

    def eval_chunks(self, split: str, chunk: int = 256) -> Iterator[torch.Tensor]:
        pixels, _ = self._eval[split]
        for start in range(0, len(pixels), chunk):
            yield self.to_float(pixels[start : start + chunk])

    def eval_targets(self, split: str) -> np.ndarray:
        """Targets of ``val`` or ``test`` in their own unit."""
        return self._eval[split][1]


def resident_bytes(images: ImageSet, split: Split) -> int:
    """Bytes of the images a :class:`DataModule` of ``split`` holds on its device."""
    n = sum(len(idx) for idx in (split.train, split.unlabeled, split.val, split.test))
    height, width = images.images.shape[1:]
    return n * height * width * _resident_dtype(images.images.dtype).itemsize


def _resident_dtype(dtype: np.dtype) -> np.dtype:
    """uint8 images stay uint8 on the device; 16-bit ones are held as int32."""
    return np.dtype(np.uint8) if dtype == np.uint8 else np.dtype(np.int32)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps of one pass over ``n`` images (a last batch of one image is dropped)."""
    return n // batch_size + int(n % batch_size >= 2)


def _stream(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``length`` indices in [0, n): back-to-back random permutations of ``range(n)``."""
    laps = -(-length // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(laps)])[:length]
