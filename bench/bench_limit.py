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

    python bench/bench_limit.py --backbone vgg11_bn_se --size 32 [--batch 16] [--steps 20]
        [--device auto] [--amp auto] [--compile] [--train 512] [--unlabeled 512] [--epochs 1]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import torch

from bmdbench.config import AugmentConfig, SplitConfig, StageConfig, SynthConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import DataModule
from bmdbench.data.splits import make_split
from bmdbench.data.synthetic import load_synthetic
from bmdbench.methods import METHODS, Method
from bmdbench.runner import build_method
from bmdbench.spec import resolve
from bmdbench.speed import Speed, measure_limit, resident_batch, step_flops
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


def new_method(name: str, backbone: str) -> Method:
    """``name`` with its default hyperparameters, randomly initialised, as a run builds it."""
    return build_method(resolve(name, backbone, "quick"))


def limit(
    name: str, args: argparse.Namespace, trainer: Trainer, stage: StageConfig
) -> tuple[Speed, float]:
    """``name``'s limit, and the FLOPs per image of its step (counted once, uncompiled).
    A stage-2 batch holds ``stage.labeled_per_batch`` labeled images, as in a run."""
    labeled = args.batch if METHODS.get(name).stage == 1 else stage.labeled_per_batch
    batch = resident_batch(trainer, args.batch, (args.size, args.size), labeled)
    seed_everything(0)
    counter = Trainer(trainer.device, show_progress=False, amp=args.amp)
    flops = step_flops(counter, new_method(name, args.backbone), batch) / args.batch
    seed_everything(0)
    method = new_method(name, args.backbone)
    return measure_limit(trainer, method, batch, args.steps, args.warmup), flops


def fitted(
    name: str, args: argparse.Namespace, trainer: Trainer, data: DataModule, stage: StageConfig
) -> tuple[float, float, Method]:
    """Images/s of ``Trainer.fit`` over ``args.epochs`` epochs after a one-epoch warm-up fit,
    the warm-up's seconds, and the method (for its summary)."""
    seed_everything(0)
    method = new_method(name, args.backbone)
    augment = BatchAugment(augmentation(args))
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    trainer.fit(method, data, replace(stage, epochs=1), augment, generator)
    warmup_s = time.perf_counter() - started
    fit = trainer.fit(method, data, replace(stage, epochs=args.epochs), augment, generator)
    return fit.images_seen / fit.train_seconds, warmup_s, method


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
    compare("baseline", STAGE1, "(a)  limit", "(b) ", args, trainer, data, stages[1])
    for name in STAGE2:
        compare(name, (name,), f"(a′) {name} limit", "(c) ", args, trainer, data, stages[2])
    print(
        "ratio: (b) over (a), (c) over its (a′); achieved: the limit's FLOPs per image × images/s"
    )


def compare(
    limit_of: str,
    fits: tuple[str, ...],
    limit_label: str,
    fit_label: str,
    args: argparse.Namespace,
    trainer: Trainer,
    data: DataModule,
    stage: StageConfig,
) -> None:
    """The Trainer fits of ``fits`` against ``limit_of``'s limit, measured right before and
    right after them: the mean of the two is the reference, so a machine that speeds up or
    slows down during the fits (another process, clock boost) biases no ratio."""
    before, flops = limit(limit_of, args, trainer, stage)
    rows = []
    for name in fits:
        ips, warm, method = fitted(name, args, trainer, data, stage)
        note = ", ".join(f"{k} {v:g}" for k, v in method.summary().items())
        rows.append((name, ips, warm, note))
    after, _ = limit(limit_of, args, trainer, stage)
    reference = (before.images_per_s + after.images_per_s) / 2
    spread = f"before {before.images_per_s:.1f}, after {after.images_per_s:.1f}"
    show(Measured(limit_label, reference, flops, before.warmup_s, note=spread))
    for name, ips, warm, note in rows:
        show(Measured(f"{fit_label} {name}", ips, flops, warm, ips / reference, note))


def header(args: argparse.Namespace, trainer: Trainer, data: DataModule) -> None:
    device = trainer.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
    print(
        f"{name}; torch {torch.__version__}; {args.backbone} at {args.size} px, "
        f"batch {args.batch}, {'bf16 autocast' if trainer.mixed else 'fp32'}, "
        f"compile {'on' if args.compile else 'off'}, augmentation {augmentation(args).geometry}"
    )
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
