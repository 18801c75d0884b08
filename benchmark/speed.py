"""Training speed against its physical limit, and what a run will cost before it starts.

The *limit* of a method is its own training step as :meth:`Trainer.step` runs it (forward
passes, backward, the optimiser step, the method's ``after_step`` hook) on one batch that
already lies on the device, with no augmentation: no data loading, no augmentation, no
validation, no logging. Whatever the Trainer loses against it is the Trainer's own
overhead (``bench/bench_limit.py`` measures both). A few steps of the same measurement
give the time estimate printed before a ``paper`` run (:func:`describe_estimate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from bmdbench.config import StageConfig
from bmdbench.data.module import Batch, steps_per_epoch
from bmdbench.methods.base import FitContext, Method
from bmdbench.trainer import Trainer

GIB = 2**30


@dataclass(frozen=True)
class Speed:
    """A measured training speed."""

    images_per_s: float  # training images (not views) per second over the timed steps
    warmup_s: float  # seconds of the warm-up steps (allocation, cuDNN autotuning, compilation)
    peak_bytes: int | None  # peak CUDA memory over warm-up and timed steps; None on a CPU


def resident_batch(
    trainer: Trainer, images: int, size: tuple[int, int], labeled: int, seed: int = 0
) -> Batch:
    """A random batch of ``images`` single-channel images of ``size`` (H, W) on the trainer's
    device, in its layout; the first ``labeled`` carry a target (standard normal), the rest NaN.
    Its pool positions are ``0 .. images-1``: the batch is the whole training pool."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(images, 1, *size, generator=generator)
    targets = torch.randn(images, generator=generator)
    targets[labeled:] = torch.nan
    device = trainer.device
    return Batch(
        images=trainer.layout(pixels.to(device)),
        targets=targets.to(device),
        labeled=torch.isfinite(targets).to(device),
        index=torch.arange(images, device=device),
    )


def limit_context(
    trainer: Trainer,
    method: Method,
    batch: Batch,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FitContext:
    """A FitContext in which ``batch`` is the whole pool and augmentation is the identity
    (or ``augment``, a :meth:`Trainer.augmenter`), with the method's stage-start and
    epoch-start hooks run once.

    The context reports a perfect validation, so a method that refreshes its pseudo labels
    when validation improves (``proposed``) does so once and then trains, as after its
    first refresh in a real run, on a target for every image.
    """

    @torch.no_grad()
    def predict_pool(predictor: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        was_training = method.training
        method.eval()
        with trainer.autocast():
            out = predictor(batch.images).float()
        method.train(was_training)
        return out

    n = len(batch.index)
    ctx = FitContext(
        augment=augment or (lambda x: x),
        predict_pool=predict_pool,
        pool_size=n,
        n_labeled=int(batch.labeled.sum()),
        pool_targets=batch.targets,
        epochs=1,
        steps_per_epoch=1,
        val={"pearson_r": 1.0, "rmse": 0.0},
        pool_batch=lambda index: Batch(
            batch.images[index], batch.targets[index], batch.labeled[index], index
        ),
    )
    method.on_stage_start(ctx)
    method.on_epoch_start(ctx)
    method.train()
    return ctx


def measure_limit(
    trainer: Trainer,
    method: Method,
    batch: Batch,
    steps: int,
    warmup: int,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Speed:
    """Images/s of ``method``'s training step on ``batch`` (see the module's docstring),
    prepared for the trainer's device, with the Trainer's Adam; with ``augment`` (a
    :meth:`Trainer.augmenter`), the step augments its views as in a run.

    ``warmup`` steps run first and are timed apart (the first steps allocate memory, tune
    cuDNN and, with ``compile``, compile); then ``steps`` steps are timed, the clock read
    after the device has finished.
    """
    method = trainer.prepare(method)
    optimiser = trainer.optimiser(method, StageConfig())
    ctx = limit_context(trainer, method, batch, augment)
    if trainer.cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    started = now(trainer)
    for _ in range(warmup):
        trainer.step(method, batch, ctx, optimiser)
    warmed = now(trainer)
    for _ in range(steps):
        trainer.step(method, batch, ctx, optimiser)
    done = now(trainer)
    peak = torch.cuda.max_memory_allocated(trainer.device) if trainer.cuda else None
    return Speed(len(batch.index) * steps / (done - warmed), warmed - started, peak)


def step_flops(trainer: Trainer, method: Method, batch: Batch) -> int:
    """FLOPs of one training step of ``method`` on ``batch``, forward and backward, from
    torch's FlopCounterMode (matrix products and convolutions; the optimiser's and the
    normalisations' element-wise work is not counted). Takes one real optimiser step.

    Count on an uncompiled method: the counter sees the operations of eager execution.
    """
    method = trainer.prepare(method)
    optimiser = trainer.optimiser(method, StageConfig())
    ctx = limit_context(trainer, method, batch)
    with FlopCounterMode(display=False) as counter:
        trainer.step(method, batch, ctx, optimiser)
    return int(counter.get_total_flops())


def now(trainer: Trainer) -> float:
    """The clock, once the device has finished what was queued."""
    if trainer.cuda:
        torch.cuda.synchronize(trainer.device)
    return time.perf_counter()


@dataclass(frozen=True)
class StageEstimate:
    """One stage of a run to come, priced at a measured speed."""

    label: str  # e.g. "stage 1 (atl)"
    images: int  # training images the stage passes through the optimiser
    speed: Speed  # the stage's method, measured at its limit

    @property
    def seconds(self) -> float:
        return self.images / self.speed.images_per_s


def stage_images(stage: StageConfig, pool: int) -> int:
    """Training images of a stage over a pool of ``pool`` images: epochs × steps per epoch ×
    batch size (a last, smaller batch counted whole: a step costs about the same)."""
    return stage.epochs * steps_per_epoch(pool, stage.batch_size) * stage.batch_size


def describe_estimate(stages: Sequence[StageEstimate], resident_bytes: int) -> str:
    """One line: each stage's images at its measured speed, the total time, and memory.

    The time is a lower bound: the limit leaves out augmentation, validation and pseudo-label
    refreshes. Memory is the largest measured peak of a stage plus the images held on the
    device for the run (``resident_bytes``); a CPU reports the images alone.
    """
    parts = [f"{s.label} {s.images:,} images at {s.speed.images_per_s:,.1f} img/s" for s in stages]
    peaks = [s.speed.peak_bytes for s in stages if s.speed.peak_bytes is not None]
    if peaks:
        memory = (
            f"peak GPU memory ≈ {(max(peaks) + resident_bytes) / GIB:.1f} GiB "
            f"(images {resident_bytes / GIB:.1f} GiB)"
        )
    else:
        memory = f"images on the device {resident_bytes / GIB:.1f} GiB"
    total = _duration(sum(s.seconds for s in stages))
    return (
        f"estimate: {', '.join(parts)}: at least {total} at the limit measured on a resident "
        f"batch; {memory}"
    )


def _duration(seconds: float) -> str:
    """Minutes below an hour, hours from there."""
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"
