"""The one training loop every method runs in.

The Trainer alone calls ``backward``, steps the optimiser, sets autocast and
moves tensors between devices: methods only return losses, so every method is optimised
the same way, and a change to the loop changes it for all. It validates after every
epoch (and once before the first, so a fine-tuning stage can keep its starting
weights), keeps the checkpoint with the highest validation Pearson R, and
scores the test split once, with that checkpoint, at the very end. Checkpoint
selection, the epoch log, the progress bars, the divergence check and a search's
pruning are hooks around the loop (:mod:`bmdbench.hooks`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.optim.swa_utils import update_bn

from bmdbench.config import StageConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import Batch, DataModule
from bmdbench.errors import ConfigError
from bmdbench.hooks import (
    BestCheckpoint,
    DivergenceGuard,
    EpochLog,
    FitState,
    Hook,
    Hooks,
    ProgressBars,
)
from bmdbench.methods.base import FitContext, Method, Regressor
from bmdbench.metrics import regression_metrics


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but CUDA is not available", "use --device cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name} names GPU {device.index} but this machine has "
            f"{torch.cuda.device_count()}",
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}",
        )
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNGs (augmentation, triplet sampling, init) and return a CPU
    generator for batch order. On CPU the same seed gives the same numbers."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class FitResult:
    """Everything a stage produced, all metrics from the selected checkpoint."""

    best_epoch: int  # epochs trained before the selected checkpoint (0: the starting weights)
    val: dict[str, float]
    test: dict[str, float]
    predictions: dict[str, np.ndarray]  # "val"/"test" → predictions in the target's unit
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0  # training images passed through the optimiser (not counting views)


class Trainer:
    """Runs one stage of one method. ``log_path`` receives one JSON line per epoch."""

    def __init__(
        self,
        device: torch.device,
        log_path: Path | None = None,
        console: Console | None = None,
        show_progress: bool = True,
        amp: str = "auto",
        compile: bool = False,
        precise_bn: bool = True,
    ) -> None:
        self.device = device
        self.precise_bn = precise_bn
        self.cuda = device.type == "cuda"
        self.mixed = amp == "bf16" or (amp == "auto" and self.cuda)
        self.compile = compile
        self.log_path = log_path
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress

    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast for the networks' forward passes (``amp``); the regression head and
        the losses run in fp32 (see :class:`~bmdbench.methods.base.Regressor`)."""
        if self.mixed:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def prepare(self, method: Method) -> Method:
        """Move the method to the device (channels_last on CUDA); with ``compile``, compile
        the backbone of each of its regressors (the student, a mean teacher's teacher).

        Compilation is in place (``nn.Module.compile``), so parameter names, checkpoints and
        ``state_dict`` stay as they are, and happens once per backbone: preparing a method
        again (a second ``fit``) keeps its compiled code. The fp32 head stays eager.
        """
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            method = method.to(memory_format=torch.channels_last)
        method = method.to(self.device)
        if self.compile:
            for module in method.modules():
                if isinstance(module, Regressor) and not _compiled(module.backbone):
                    module.backbone.compile()
        return method

    def optimiser(self, method: Method, stage: StageConfig) -> torch.optim.Optimizer:
        """Adam over the method's trainable parameters: fused on CUDA; on a CPU the
        multi-tensor implementation (torch's default there loops over the parameters in
        Python: 7 % of the tiny network's step on one core; both give the same numbers to the
        bit)."""
        return torch.optim.Adam(
            method.trainable_parameters(),
            lr=stage.lr,
            weight_decay=stage.weight_decay,
            fused=self.cuda or None,
            foreach=None if self.cuda else True,
        )

    def step(
        self, method: Method, batch: Batch, ctx: FitContext, optimiser: torch.optim.Optimizer
    ) -> dict[str, torch.Tensor]:
        """One optimiser step: the method's losses under autocast, backward, the optimiser
        step, then the method's ``after_step`` hook. Returns the losses (not synchronised)."""
        with self.autocast():
            losses = method.training_step(batch, ctx)
        optimiser.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimiser.step()
        ctx.step += 1
        method.after_step(ctx)
        return losses

    def fit(
        self,
        method: Method,
        data: DataModule,
        stage: StageConfig,
        augment: BatchAugment,
        generator: torch.Generator,
        select_initial: bool = False,
        hooks: Sequence[Hook] = (),
    ) -> FitResult:
        """Train ``method`` for ``stage.epochs`` epochs and score the selected checkpoint.

        ``select_initial``: the weights before the first epoch (stage-1 weights of a
        fine-tuning stage) are a candidate for selection too (epoch 0).
        ``hooks`` fire (see :class:`~bmdbench.hooks.Hook`) after the Trainer's own
        :class:`~bmdbench.hooks.BestCheckpoint`, :class:`~bmdbench.hooks.DivergenceGuard`
        and, with ``log_path``, :class:`~bmdbench.hooks.EpochLog`, and before its
        :class:`~bmdbench.hooks.ProgressBars`. An exception a hook raises
        (:class:`~bmdbench.errors.Pruned`, :class:`~bmdbench.errors.Diverged`) ends the fit.
        """
        method = self.prepare(method)
        ctx = self.context(method, data, stage, augment)
        steps = ctx.steps_per_epoch
        optimiser = self.optimiser(method, stage)
        best = BestCheckpoint(select_initial)
        log = [EpochLog(self.log_path)] if self.log_path is not None else []
        bars = [ProgressBars(self.console, best)] if self.show_progress else []
        fire = Hooks([best, DivergenceGuard(), *log, *hooks, *bars])
        state = FitState(method, ctx)
        history: list[dict[str, Any]] = []
        images_seen = 0
        self.refresh_batch_norm(method, data)
        ctx.val, _ = self.evaluate(method, data, "val")
        fire.before_stage(state)
        try:
            method.on_stage_start(ctx)
            started = time.perf_counter()
            for epoch in range(stage.epochs):
                ctx.epoch, ctx.log = epoch, {}
                lr = lr_at(stage, epoch * steps, steps)
                method.on_epoch_start(ctx)
                method.train()
                state.loss_sums, state.step_in_epoch = {}, 0
                fire.before_epoch(state)
                epoch_start = time.perf_counter()
                for i, batch in enumerate(self._batches(method, data, stage, generator)):
                    lr = lr_at(stage, epoch * steps + i, steps)
                    for group in optimiser.param_groups:
                        group["lr"] = lr
                    losses = self.step(method, batch, ctx, optimiser)
                    images_seen += len(batch.index)
                    accumulate(state.loss_sums, losses)
                    state.step_in_epoch = i + 1
                    fire.after_step(state)
                method.on_epoch_end(ctx)
                state.epoch_losses = {k: float(v) / steps for k, v in state.loss_sums.items()}
                fire.before_validation(state)
                self.refresh_batch_norm(method, data)
                ctx.val, _ = self.evaluate(method, data, "val")
                state.record = {
                    "epoch": epoch + 1,
                    "lr": lr,
                    "seconds": round(time.perf_counter() - epoch_start, 3),
                    **{f"loss_{k}": v for k, v in state.epoch_losses.items()},
                    **{f"val_{k}": v for k, v in ctx.val.items()},
                    **ctx.log,
                    **self._pseudo_label_error(method, ctx, data),
                }
                history.append(state.record)
                fire.after_epoch(state)
        finally:
            fire.after_stage(state)
        train_seconds = time.perf_counter() - started
        method.load_state_dict(best.weights)
        val, val_pred = self.evaluate(method, data, "val")
        test, test_pred = self.evaluate(method, data, "test")
        return FitResult(
            best_epoch=best.epoch,
            val=val,
            test=test,
            predictions={"val": val_pred, "test": test_pred},
            state_dict={k: v.cpu() for k, v in best.weights.items()},
            history=history,
            train_seconds=train_seconds,
            images_seen=images_seen,
        )

    def _batches(
        self, method: Method, data: DataModule, stage: StageConfig, generator: torch.Generator
    ) -> Iterator[Batch]:
        """Stage 1: shuffled labeled images. Stage 2: a fixed labeled share per batch for
        methods whose unlabeled images carry no target (``method.two_stream``), labeled images
        alone for the supervised control (``method.labeled_only``), otherwise labeled and
        pseudo-labeled images shuffled together (pseudo labels are labels)."""
        if method.stage == 1:
            return data.train_batches(stage.batch_size, False, generator)
        if method.labeled_only:
            return data.labeled_batches(stage.batch_size, generator)
        if method.two_stream:
            return data.two_stream_batches(stage.batch_size, stage.labeled_per_batch, generator)
        return data.train_batches(stage.batch_size, True, generator)

    def context(
        self, method: Method, data: DataModule, stage: StageConfig, augment: BatchAugment
    ) -> FitContext:
        """The FitContext of a stage: what ``method`` may ask of the Trainer and the data."""
        return FitContext(
            augment=self.augmenter(augment),
            predict_pool=lambda predictor: self._predict_pool(method, data, predictor),
            pool_size=data.pool_size,
            n_labeled=data.n_labeled,
            pool_targets=data.pool_targets,
            epochs=stage.epochs,
            steps_per_epoch=data.steps_per_epoch(stage.batch_size, method.stage == 2),
            pool_batch=data.batch,
        )

    def augmenter(self, augment: BatchAugment) -> Callable[[torch.Tensor], torch.Tensor]:
        """``ctx.augment``: ``augment`` on the device, in fp32 even when called under
        autocast, its output in the networks' layout."""
        augment = augment.to(self.device)

        def augment_fp32(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, enabled=False):
                return self.layout(augment(x.float()))

        return augment_fp32

    @torch.no_grad()
    def refresh_batch_norm(self, method: Method, data: DataModule) -> None:
        """With ``precise_bn``: recompute every batch-norm layer's running statistics over
        the labeled training images, un-augmented, with the current weights
        (``torch.optim.swa_utils.update_bn``: reset, then a cumulative average over chunks),
        for each regressor of ``method``. Without it, the running statistics an evaluation
        uses are a momentum-0.1 average over the last few training batches: augmented images,
        and weights that moved at every step, which at a high learning rate shifts every
        prediction by an amount that changes from epoch to epoch (README, "The supervised
        loop")."""
        if not self.precise_bn:
            return
        for module in method.modules():
            if isinstance(module, Regressor):
                with self.autocast():
                    update_bn((self.layout(chunk) for chunk in data.labeled_chunks()), module)

    @torch.no_grad()
    def evaluate(
        self, method: Method, data: DataModule, split: str
    ) -> tuple[dict[str, float], np.ndarray]:
        """Metrics (target's own unit) and predictions of ``method.predict`` on val or test."""
        method.eval()
        preds = []
        for chunk in data.eval_chunks(split):
            with self.autocast():
                preds.append(method.predict(self.layout(chunk)).float())
        pred = data.denormalise(torch.cat(preds).cpu().numpy().astype(np.float64))
        return regression_metrics(data.eval_targets(split), pred), pred

    @torch.no_grad()
    def _predict_pool(
        self,
        method: Method,
        data: DataModule,
        predictor: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        was_training = method.training
        method.eval()
        out = []
        for chunk in data.pool_chunks():
            with self.autocast():
                out.append(predictor(self.layout(chunk)).float())
        method.train(was_training)
        return torch.cat(out)

    def _pseudo_label_error(
        self, method: Method, ctx: FitContext, data: DataModule
    ) -> dict[str, float]:
        """RMSE and R of the method's targets for unlabeled images against their truth."""
        estimates = method.unlabeled_estimates(ctx)
        if estimates is None:
            return {}
        values = data.denormalise(estimates[data.n_labeled :].float().cpu().numpy())
        truth = data.pool_truth[data.n_labeled :]
        known = np.isfinite(truth) & np.isfinite(values)
        if known.sum() < 2:
            return {}
        m = regression_metrics(truth[known], values[known])
        return {"pseudo_rmse": m["rmse"], "pseudo_r": m["pearson_r"]}

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory format the networks are prepared in (channels_last on CUDA)."""
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x


@torch.no_grad()
def accumulate(sums: dict[str, torch.Tensor], losses: dict[str, torch.Tensor]) -> None:
    """Add a step's losses to their sums over the epoch, on the device, in place: one
    multi-tensor add for all of them (a sum starts at zero, in fp32, the first time its loss
    is seen), not two operations and a new tensor per loss and step."""
    for key, value in losses.items():
        if key not in sums:
            sums[key] = torch.zeros_like(value, dtype=torch.float32)
    torch._foreach_add_([sums[key] for key in losses], list(losses.values()))


def lr_at(stage: StageConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based, counted over the whole stage).

    ``step``: ``lr`` until epoch ``lr_drop_epoch``, ``lr_after_drop`` from then on.
    ``cosine``: ``lr · ½(1 + cos(π·t))``, t going from 0 at the first step after the warm-up
    towards 1 at the end. ``warmup``: over that fraction of the steps the lr rises linearly
    to ``lr`` (a fresh Adam at full lr would jolt the converged weights of stage 1).
    """
    total = max(1, stage.epochs * steps_per_epoch)
    warmup = round(stage.warmup * total)
    if step < warmup:
        return stage.lr * (step + 1) / (warmup + 1)
    if stage.schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return stage.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    epoch = step // max(1, steps_per_epoch)
    if stage.lr_drop_epoch is not None and epoch >= stage.lr_drop_epoch:
        return stage.lr_after_drop
    return stage.lr


def lr_budget(stage: StageConfig, steps_per_epoch: int) -> float:
    """The stage's optimisation budget: the sum of the learning rate over its steps."""
    return math.fsum(
        lr_at(stage, step, steps_per_epoch) for step in range(stage.epochs * steps_per_epoch)
    )


def _compiled(module: torch.nn.Module) -> bool:
    """Whether ``module.compile()`` has already run on ``module`` (torch keeps the compiled
    call in ``_compiled_call_impl``; compiling again would discard the compiled code)."""
    return module._compiled_call_impl is not None
