"""Trainer hooks: what :meth:`Trainer.fit <bmdbench.trainer.Trainer.fit>` does around its loop.

The loop itself (steps, validation, the epoch's record) is the Trainer's; checkpoint
selection, the epoch log, the progress bars, the divergence check and a search's pruning are
hooks (:class:`Hook`, detectron2's ``HookBase``), each a few lines that read a
:class:`FitState`. Hooks never call ``backward``, step the optimiser or set autocast: only
the Trainer optimises, so no hook can change what is trained. The method's own hooks
(``method.on_stage_start`` and the rest, :mod:`bmdbench.methods.base`) are the method
contract, not these.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bmdbench.errors import Diverged
from bmdbench.methods.base import FitContext, Method

DISPLAY_EVERY = 25  # steps between progress-bar updates of the running loss (a host sync)

EpochCallback = Callable[[int, dict[str, float]], None]
# ^ told (epochs trained, validation metrics) after every epoch; may raise Pruned


@dataclass
class FitState:
    """A fit as its hooks see it. The loop writes every field; a hook reads them, except that
    an ``after_epoch`` hook may add keys to ``record`` (hooks after it see them)."""

    method: Method
    ctx: FitContext  # ctx.epoch (0-based), ctx.val (the latest validation metrics), ctx.epochs
    step_in_epoch: int = 0  # optimiser steps taken in the current epoch
    loss_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    # ^ each loss of the method summed over this epoch's steps so far, on the device
    epoch_losses: dict[str, float] = field(default_factory=dict)  # this epoch's mean losses
    record: dict[str, Any] = field(default_factory=dict)  # this epoch's line of the history

    @property
    def display_step(self) -> bool:
        """Whether the step just taken shows (and checks) the running loss: every
        ``DISPLAY_EVERY``-th step of an epoch and its last."""
        steps = self.step_in_epoch
        return steps % DISPLAY_EVERY == 0 or steps == self.ctx.steps_per_epoch

    def running_loss(self) -> float:
        """The mean total loss of this epoch's steps so far (synchronises with the device)."""
        return float(self.loss_sums["loss"]) / self.step_in_epoch


class Hook:
    """Something done around the Trainer's loop. Each method does nothing unless overridden.

    Where each fires in :meth:`Trainer.fit <bmdbench.trainer.Trainer.fit>`::

        ctx.val = validate(starting weights)
        hook.before_stage(state)
        try:
            method.on_stage_start(ctx)
            for ctx.epoch in range(epochs):               # 0-based
                method.on_epoch_start(ctx); method.train()
                hook.before_epoch(state)
                for batch in the epoch's batches:
                    losses = method.training_step(batch, ctx)   # under autocast
                    backward; optimiser step; method.after_step(ctx)
                    state.loss_sums += losses; state.step_in_epoch += 1
                    hook.after_step(state)
                method.on_epoch_end(ctx)
                state.epoch_losses = state.loss_sums / steps
                hook.before_validation(state)
                ctx.val = validate(current weights)
                state.record = {"epoch": ctx.epoch + 1, "lr", "seconds", "loss_*", "val_*", ...}
                history.append(state.record)
                hook.after_epoch(state)
        finally:
            hook.after_stage(state)
        load the selected checkpoint; score it on val and test

    Hooks fire in the order the Trainer lists them (see ``Trainer.fit``). One that raises
    (:class:`~bmdbench.errors.Diverged`, :class:`~bmdbench.errors.Pruned`) ends the fit:
    hooks after it in the list are skipped at that point, ``after_stage`` still fires, and
    the exception propagates out of ``fit``.
    """

    def before_stage(self, state: FitState) -> None:
        """Once, after the starting weights are validated (``ctx.val``), before
        ``method.on_stage_start``."""

    def before_epoch(self, state: FitState) -> None:
        """At the start of each epoch, after ``method.on_epoch_start``, before its first step."""

    def after_step(self, state: FitState) -> None:
        """After every optimiser step (and ``method.after_step``), its losses in ``loss_sums``."""

    def before_validation(self, state: FitState) -> None:
        """After each epoch's last step and ``method.on_epoch_end``, ``epoch_losses`` set,
        before the epoch's validation."""

    def after_epoch(self, state: FitState) -> None:
        """After each epoch's validation: ``ctx.val`` and ``record`` are the epoch's."""

    def after_stage(self, state: FitState) -> None:
        """Once, when the loop ends: after the last epoch, or as a hook, a method or the loop
        raises (like ``finally``). Not when a ``before_stage`` hook raised."""


class Hooks(Hook):
    """Several hooks as one: each method calls that method of every hook, in order."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = hooks

    def before_stage(self, state: FitState) -> None:
        for hook in self.hooks:
            hook.before_stage(state)

    def before_epoch(self, state: FitState) -> None:
        for hook in self.hooks:
            hook.before_epoch(state)

    def after_step(self, state: FitState) -> None:
        for hook in self.hooks:
            hook.after_step(state)

    def before_validation(self, state: FitState) -> None:
        for hook in self.hooks:
            hook.before_validation(state)

    def after_epoch(self, state: FitState) -> None:
        for hook in self.hooks:
            hook.after_epoch(state)

    def after_stage(self, state: FitState) -> None:
        for hook in self.hooks:
            hook.after_stage(state)


class BestCheckpoint(Hook):
    """Keeps the weights with the highest validation Pearson R (NaN ranks last; a tie keeps
    the earlier) and adds ``best_epoch`` to each epoch's record.

    ``select_initial``: the starting weights (epoch 0; the stage-1 weights of a fine-tuning
    stage) compete too. Without it they are kept only when no epoch has a finite R.
    Set from ``before_stage`` on: ``epoch`` (epochs trained before the kept weights),
    ``score`` (their R, −∞ when none ranks) and ``weights`` (a copy of their state dict).
    """

    epoch: int
    score: float
    weights: dict[str, torch.Tensor]

    def __init__(self, select_initial: bool = False) -> None:
        self.select_initial = select_initial

    def before_stage(self, state: FitState) -> None:
        self.epoch, self.weights = 0, _snapshot(state.method)
        self.score = _score(state.ctx.val) if self.select_initial else -math.inf

    def after_epoch(self, state: FitState) -> None:
        score = _score(state.ctx.val)
        if score > self.score:
            self.epoch, self.score = state.ctx.epoch + 1, score
            self.weights = _snapshot(state.method)
        state.record["best_epoch"] = self.epoch


class DivergenceGuard(Hook):
    """Raises :class:`~bmdbench.errors.Diverged` (with the epoch numbered from 1, as the log
    numbers it) when the running loss is not finite at a display step, or when any of an
    epoch's mean losses is not finite (before that epoch's validation)."""

    def after_step(self, state: FitState) -> None:
        if state.display_step:
            running = state.running_loss()
            if not math.isfinite(running):
                raise Diverged(state.ctx.epoch + 1, {"loss": running})

    def before_validation(self, state: FitState) -> None:
        if not all(math.isfinite(v) for v in state.epoch_losses.values()):
            raise Diverged(state.ctx.epoch + 1, state.epoch_losses)


class EpochLog(Hook):
    """Appends each epoch's record to ``path`` as one JSON line, opening the file for each
    line, so the lines of a run that stops stay written. Sees the keys added by the hooks
    listed before it (``best_epoch``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def after_epoch(self, state: FitState) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(state.record) + "\n")


class Pruning(Hook):
    """Tells ``report`` (epochs trained, validation metrics) after every epoch; ``report``
    raising :class:`~bmdbench.errors.Pruned` ends the run (a search's pruner)."""

    def __init__(self, report: EpochCallback) -> None:
        self.report = report

    def after_epoch(self, state: FitState) -> None:
        self.report(state.ctx.epoch + 1, state.ctx.val)


class ProgressBars(Hook):
    """Two rich progress bars on ``console``: the epochs (the latest validation R and
    ``best``'s) and the current epoch's steps (the running loss at each display step)."""

    bars: Progress
    epochs: TaskID
    steps: TaskID

    def __init__(self, console: Console, best: BestCheckpoint) -> None:
        self.console = console
        self.best = best

    def before_stage(self, state: FitState) -> None:
        self.bars = Progress(
            TextColumn("{task.description:>6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.bars.start()
        self.epochs = self.bars.add_task("epochs", total=state.ctx.epochs, info="")
        self.steps = self.bars.add_task("steps", total=state.ctx.steps_per_epoch, info="")

    def before_epoch(self, state: FitState) -> None:
        self.bars.reset(self.steps, total=state.ctx.steps_per_epoch)

    def after_step(self, state: FitState) -> None:
        if state.display_step:
            info = f"loss {state.running_loss():.4g}"
            self.bars.update(self.steps, completed=state.step_in_epoch, info=info)

    def after_epoch(self, state: FitState) -> None:
        info = f"val R {state.ctx.val['pearson_r']:.4f} (best {self.best.score:.4f})"
        self.bars.update(self.epochs, advance=1, info=info)

    def after_stage(self, state: FitState) -> None:
        self.bars.stop()


def _snapshot(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _score(metrics: dict[str, float]) -> float:
    """Selection score: validation Pearson R (NaN, e.g. a constant prediction, ranks last)."""
    r = metrics["pearson_r"]
    return r if math.isfinite(r) else -math.inf
