"""Training speed against its physical limit: the Trainer's images/s over the bare step's.

For one backbone and image size, in one process:

- (a)  the limit: forward + backward + Adam step of the regressor (backbone and fp32 head,
       as every method trains it) with the MSE loss, on one batch already on the device,
       no augmentation: ``baseline``'s own training step (:func:`bmdbench.speed.measure_limit`);
- (b)  the Trainer (``Trainer.fit``) with the stage-1 methods ``baseline`` and ``atl`` on an
       in-memory synthetic dataset of the same image size;
- (c)  the Trainer with the two-view stage-2 methods ``proposed`` and ``mean_teacher``;
- (a′) beside each of these, its own limit: its training step on a resident batch (two
       forward + backward passes for ``proposed``; a student step, a teacher forward and the
       EMA update for mean teacher).

It prints images/s, the ratios (b)/(a) and (c)/(a′), and the achieved FLOP/s: the FLOPs of
one step of the limit (torch's FlopCounterMode, forward and backward) per image, times
images/s; a Trainer's FLOP/s counts the same useful work. A Trainer figure includes what a
run does besides its steps (augmentation, validation after each epoch, ``proposed``'s
pseudo-label refreshes); it is the second of two fits, the first (one epoch) warming up.
A limit follows ``--warmup`` untimed steps, and is measured right before and right after
the fits it is compared with; its row shows the mean of the two, the reference of the ratio. Methods are built as a run builds them
(``bmdbench.runner.build_method``, default hyperparameters, the ``quick`` preset's
schedules). Runs unchanged on CPU and CUDA (clocks are read after a synchronise).

Then where each fit's time went, as shares of it: its steps at the limit's speed (the
ratio itself), what augmenting the views adds (the limit measured again with the Trainer's
augmentation), the batch-norm refresh and the validation after each epoch and ``proposed``'s
pseudo-label refreshes (each timed alone, after the fit, on the fitted method), and the rest
(batches, bookkeeping, hooks, and the noise of all these measurements). ``--profile N``
prints the N operations of each timed fit with the most time of their own (torch.profiler).

    python bench/bench_limit.py --backbone vgg11_bn_se --size 32 [--batch 16] [--steps 20]
        [--device auto] [--amp auto] [--compile] [--train 512] [--unlabeled 512] [--epochs 1]
        [--profile N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from bmdbench.config import AugmentConfig, SplitConfig, StageConfig, SynthConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import DataModule
from bmdbench.data.splits import make_split
from bmdbench.data.synthetic import load_synthetic
from bmdbench.methods import METHODS, Method
from bmdbench.runner import build_method
from bmdbench.spec import resolve
from bmdbench.speed import Speed, measure_limit, now, resident_batch, step_flops
from bmdbench.trainer import Trainer, resolve_device, seed_everything

STAGE1 = ("baseline", "atl")
STAGE2 = ("proposed", "mean_teacher")
EVAL_IMAGES = 20  # validation and test images each: validation runs after every epoch


@dataclass(frozen=True)
class Measured:
    label: str  # "(a) limit", "(b) baseline", ...
    images_per_s: float
    flops_per_image: float  # of the limit it is compared with
    warmup_s: float  # warm-up steps (a limit) or the warm-up fit (a Trainer)
    ratio: float | None = None  # images/s over its limit's
    note: str = ""
    shares: dict[str, float] | None = None  # a Trainer fit: where its time went (PARTS)


PARTS = ("steps", "augmentation", "precise BN", "validation", "pseudo labels", "rest")


@dataclass(frozen=True)
class Fitted:
    """A timed Trainer fit and what it left: the method, its data, its stage."""

    name: str
    images_per_s: float
    seconds: float
    images: int
    warmup_s: float
    method: Method
    summary: dict[str, float]


def new_method(name: str, backbone: str) -> Method:
    """``name`` with its default hyperparameters, randomly initialised, as a run builds it."""
    return build_method(resolve(name, backbone, "quick"))


def limit(
    name: str, args: argparse.Namespace, trainer: Trainer, stage: StageConfig
) -> tuple[Speed, float]:
    """``name``'s limit, and the FLOPs per image of its step (counted once, uncompiled).
    A stage-2 batch holds ``stage.labeled_per_batch`` labeled images, as in a run."""
    batch = resident_batch(
        trainer, args.batch, (args.size, args.size), labeled_of(name, args, stage)
    )
    seed_everything(0)
    counter = Trainer(trainer.device, show_progress=False, amp=args.amp)
    flops = step_flops(counter, new_method(name, args.backbone), batch) / args.batch
    seed_everything(0)
    method = new_method(name, args.backbone)
    return measure_limit(trainer, method, batch, args.steps, args.warmup), flops


def fitted(
    name: str, args: argparse.Namespace, trainer: Trainer, data: DataModule, stage: StageConfig
) -> Fitted:
    """``Trainer.fit`` over ``args.epochs`` epochs after a one-epoch warm-up fit."""
    seed_everything(0)
    method = new_method(name, args.backbone)
    augment = BatchAugment(augmentation(args))
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    trainer.fit(method, data, replace(stage, epochs=1), augment, generator)
    warmup_s = time.perf_counter() - started
    with profiled(args, name):
        fit = trainer.fit(method, data, replace(stage, epochs=args.epochs), augment, generator)
    ips = fit.images_seen / fit.train_seconds
    return Fitted(name, ips, fit.train_seconds, fit.images_seen, warmup_s, method, method.summary())


def profiled(args: argparse.Namespace, name: str) -> AbstractContextManager[Any]:
    """With ``--profile N``: torch.profiler around the block, its N operations with the most
    time of their own printed after it."""
    if not args.profile:
        return nullcontext()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)

    def show(prof: profile) -> None:
        print(f"profile of the timed {name} fit:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))

    return profile(activities=activities, on_trace_ready=show)


def shares(
    fit: Fitted,
    limit_ips: float,
    args: argparse.Namespace,
    trainer: Trainer,
    data: DataModule,
    stage: StageConfig,
) -> dict[str, float]:
    """Where ``fit``'s time went (:data:`PARTS`), as shares of it: its images at the limit's
    speed; the limit measured again with the Trainer's augmentation, less the limit; the
    batch-norm refresh and the validation timed on the fitted method, once per epoch; one
    prediction of the pool per pseudo-label refresh; the rest."""
    batch = resident_batch(
        trainer, args.batch, (args.size, args.size), labeled_of(fit.name, args, stage)
    )
    seed_everything(0)
    augment = trainer.augmenter(BatchAugment(augmentation(args)))
    with_augmentation = measure_limit(
        trainer, new_method(fit.name, args.backbone), batch, args.steps, args.warmup, augment
    )
    method = fit.method
    refresh = timed(trainer, lambda: trainer.refresh_batch_norm(method, data))
    validation = timed(trainer, lambda: trainer.evaluate(method, data, "val"))
    ctx = trainer.context(method, data, stage, BatchAugment(augmentation(args)))
    pool = timed(trainer, lambda: ctx.predict_pool(lambda x: method.regressor(x)[1]))
    steps = fit.images / limit_ips
    seconds = {
        "steps": steps,
        "augmentation": fit.images / with_augmentation.images_per_s - steps,
        "precise BN": args.epochs * refresh if trainer.precise_bn else 0.0,
        "validation": args.epochs * validation,
        "pseudo labels": fit.summary.get("pseudo_refreshes", 0.0) * pool,
    }
    seconds["rest"] = fit.seconds - sum(seconds.values())
    return {part: value / fit.seconds for part, value in seconds.items()}


def timed(trainer: Trainer, work: Any) -> float:
    """Seconds of ``work()``, the clock read once the device has finished."""
    started = now(trainer)
    work()
    return now(trainer) - started


def labeled_of(name: str, args: argparse.Namespace, stage: StageConfig) -> int:
    """Labeled images in a resident batch: all of a stage-1 batch, a stage-2 batch's
    ``stage.labeled_per_batch``, as in a run."""
    return args.batch if METHODS.get(name).stage == 1 else stage.labeled_per_batch


def augmentation(args: argparse.Namespace) -> AugmentConfig:
    """The ``quick`` preset's augmentation at its image size (whole-pixel shifts), the
    paper's affine warp at any other size."""
    quick = resolve("baseline", args.backbone, "quick")
    return quick.augment if args.size == quick.image_size else AugmentConfig()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg11_bn_se")
    parser.add_argument("--size", type=int, default=32, help="image side, pixels (quick: 32)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each limit")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before a limit")
    parser.add_argument("--train", type=int, default=512, help="labeled training images")
    parser.add_argument("--unlabeled", type=int, default=512, help="unlabeled images (stage 2)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs of each Trainer fit")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print each timed fit's top N ops"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    trainer = Trainer(device, show_progress=False, amp=args.amp, compile=args.compile)

    n = args.train + 2 * EVAL_IMAGES
    synth = SynthConfig(n_labeled=n, n_patients=n, n_unlabeled=args.unlabeled)
    images = load_synthetic(synth, args.size)
    data = DataModule(
        images, make_split(images, SplitConfig(val=EVAL_IMAGES, test=EVAL_IMAGES)), device
    )
    quick = resolve("baseline", args.backbone, "quick")  # the quick preset's schedules
    stages = {
        1: replace(quick.stage1, batch_size=args.batch),
        2: replace(quick.stage2, batch_size=args.batch),
    }

    header(args, trainer, data)
    rows = compare("baseline", STAGE1, "(a)  limit", "(b) ", args, trainer, data, stages[1])
    for name in STAGE2:
        rows += compare(name, (name,), f"(a′) {name} limit", "(c) ", args, trainer, data, stages[2])
    print(
        "ratio: (b) over (a), (c) over its (a′); achieved: the limit's FLOPs per image × images/s"
    )
    print("\nwhere each Trainer fit's time went, shares of it (steps at the limit: the ratio):")
    print(f"{'':24}" + "".join(f"{part:>15}" for part in PARTS))
    for row in rows:
        if row.shares is not None:
            print(f"{row.label:24}" + "".join(f"{row.shares[p]:15.3f}" for p in PARTS))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": describe(args, trainer), "rows": [asdict(r) for r in rows]}, fh)


def compare(
    limit_of: str,
    fits: tuple[str, ...],
    limit_label: str,
    fit_label: str,
    args: argparse.Namespace,
    trainer: Trainer,
    data: DataModule,
    stage: StageConfig,
) -> list[Measured]:
    """The Trainer fits of ``fits`` against ``limit_of``'s limit, measured right before and
    right after them: the mean of the two is the reference, so a machine that speeds up or
    slows down during the fits (another process, clock boost) biases no ratio. Returns the
    rows it printed."""
    before, flops = limit(limit_of, args, trainer, stage)
    fits_done = [fitted(name, args, trainer, data, stage) for name in fits]
    after, _ = limit(limit_of, args, trainer, stage)
    reference = (before.images_per_s + after.images_per_s) / 2
    spread = f"before {before.images_per_s:.1f}, after {after.images_per_s:.1f}"
    rows = [Measured(limit_label, reference, flops, before.warmup_s, note=spread)]
    show(rows[0])
    for fit in fits_done:
        note = ", ".join(f"{k} {v:g}" for k, v in fit.summary.items())
        parts = shares(fit, reference, args, trainer, data, stage)
        row = Measured(
            f"{fit_label} {fit.name}",
            fit.images_per_s,
            flops,
            fit.warmup_s,
            fit.images_per_s / reference,
            note,
            parts,
        )
        show(row)
        rows.append(row)
    return rows


def describe(args: argparse.Namespace, trainer: Trainer) -> str:
    """The machine and what is measured, in one line."""
    device = trainer.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
    return (
        f"{name}; torch {torch.__version__}; {args.backbone} at {args.size} px, "
        f"batch {args.batch}, {'bf16 autocast' if trainer.mixed else 'fp32'}, "
        f"compile {'on' if args.compile else 'off'}, augmentation {augmentation(args).geometry}"
    )


def header(args: argparse.Namespace, trainer: Trainer, data: DataModule) -> None:
    print(describe(args, trainer))
    print(
        f"limits: {args.steps} steps after {args.warmup}; Trainer: {args.epochs} epoch(s) after "
        f"a warm-up epoch, {data.n_labeled} labeled + {data.pool_size - data.n_labeled} "
        f"unlabeled images, validation on {EVAL_IMAGES} after each epoch"
    )
    print(
        f"{'':24}{'images/s':>10}{'ratio':>8}{'GFLOP/image':>13}{'achieved':>14}{'warm-up s':>11}"
    )


def show(row: Measured) -> None:
    ratio = f"{row.ratio:.3f}" if row.ratio is not None else ""
    achieved = _flops(row.flops_per_image * row.images_per_s)
    print(
        f"{row.label:24}{row.images_per_s:10.1f}{ratio:>8}{row.flops_per_image / 1e9:13.4g}"
        f"{achieved:>14}{row.warmup_s:11.1f}  {row.note}",
        flush=True,
    )


def _flops(rate: float) -> str:
    """A FLOP/s figure with its SI prefix (GFLOP/s, TFLOP/s)."""
    if rate >= 1e12:
        return f"{rate / 1e12:.2f} TFLOP/s"
    return f"{rate / 1e9:.1f} GFLOP/s"


if __name__ == "__main__":
    main()
