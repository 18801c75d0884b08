"""Trainer hooks: when each fires, and the built-in ones (selection, divergence, log, pruning)."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from bmdbench.backbones import build_backbone
from bmdbench.config import AugmentConfig, SplitConfig, StageConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import DataModule
from bmdbench.data.splits import make_split
from bmdbench.errors import Diverged, Pruned
from bmdbench.hooks import DISPLAY_EVERY, BestCheckpoint, DivergenceGuard, FitState, Hook, Pruning
from bmdbench.methods import METHODS, Regressor
from bmdbench.spec import resolve
from bmdbench.trainer import FitResult, Trainer, seed_everything

CPU = torch.device("cpu")
STEPS = 3  # 24 training images (40 less 8 val and 8 test) in batches of 8


class Recorder(Hook):
    """Writes down each hook call it gets, with what the state says at that moment."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def before_stage(self, state: FitState) -> None:
        self.calls.append("before_stage")

    def before_epoch(self, state: FitState) -> None:
        self.calls.append(f"before_epoch {state.ctx.epoch}")

    def after_step(self, state: FitState) -> None:
        self.calls.append(f"after_step {state.ctx.epoch}.{state.step_in_epoch}")

    def before_validation(self, state: FitState) -> None:
        self.calls.append(f"before_validation {state.ctx.epoch}")

    def after_epoch(self, state: FitState) -> None:
        self.calls.append(f"after_epoch {state.record['epoch']} best {state.record['best_epoch']}")

    def after_stage(self, state: FitState) -> None:
        self.calls.append("after_stage")


def fit(imageset, calls, epochs=2, hooks=(), nan_loss=False, log_path=None, console=None):
    """A baseline fit on the tiny backbone, progress bars only with a ``console``; the
    method's own stage and epoch hooks are written down in ``calls`` too."""
    seed_everything(0)
    method = METHODS.get("baseline")(
        Regressor(build_backbone("tiny")), resolve("baseline", "tiny", "smoke").hparams
    )
    for name in ("on_stage_start", "on_epoch_start", "on_epoch_end"):

        def spy(ctx, real=getattr(method, name), name=name):
            calls.append(f"method.{name}")
            real(ctx)

        setattr(method, name, spy)
    if nan_loss:
        real_step = method.training_step

        def nan_step(batch, ctx):
            losses = real_step(batch, ctx)
            return {**losses, "loss": losses["loss"] * math.nan}

        method.training_step = nan_step
    data = DataModule(imageset, make_split(imageset, SplitConfig(val=8, test=8)), CPU)
    trainer = Trainer(CPU, log_path, console, show_progress=console is not None)
    stage = StageConfig(epochs=epochs, lr=1e-3, lr_drop_epoch=None, batch_size=8)
    hooks = [*hooks, Recorder(calls)]
    return trainer.fit(
        method, data, stage, BatchAugment(AugmentConfig()), seed_everything(1), hooks=hooks
    )


def epoch_calls(epoch: int, best: int) -> list[str]:
    return [
        "method.on_epoch_start",
        f"before_epoch {epoch}",
        *(f"after_step {epoch}.{i}" for i in range(1, STEPS + 1)),
        "method.on_epoch_end",
        f"before_validation {epoch}",
        f"after_epoch {epoch + 1} best {best}",
    ]


def test_hooks_fire_in_the_documented_order(imageset):
    calls: list[str] = []
    result = fit(imageset, calls)
    assert isinstance(result, FitResult)
    bests = [record["best_epoch"] for record in result.history]
    assert calls == [
        "before_stage",
        "method.on_stage_start",
        *epoch_calls(0, bests[0]),
        *epoch_calls(1, bests[1]),
        "after_stage",
    ]
    assert result.best_epoch == bests[-1]


def test_progress_bars_show_epochs_steps_and_validation_r(imageset):
    text = io.StringIO()
    fit(imageset, [], console=Console(file=text, width=120))
    shown = text.getvalue()
    assert "epochs" in shown and "2/2" in shown and "val R" in shown and "(best " in shown
    assert f"{STEPS}/{STEPS}" in shown and "loss " in shown


def test_a_nan_loss_raises_diverged_at_the_first_display_step(imageset):
    calls: list[str] = []
    with pytest.raises(Diverged) as diverged:
        fit(imageset, calls, nan_loss=True)
    assert diverged.value.epoch == 1 and math.isnan(diverged.value.losses["loss"])
    # the epoch's last step is its first display step; hooks after the guard miss it
    assert calls[-3:] == ["after_step 0.1", "after_step 0.2", "after_stage"]


def state_after(steps: int, sums: dict[str, float]) -> FitState:
    ctx = SimpleNamespace(epoch=4, steps_per_epoch=2 * DISPLAY_EVERY + 1, val={})
    state = FitState(method=None, ctx=ctx, step_in_epoch=steps)  # type: ignore[arg-type]
    state.loss_sums = {k: torch.tensor(v) for k, v in sums.items()}
    return state


def test_the_guard_checks_the_running_loss_only_at_display_steps():
    guard = DivergenceGuard()
    for steps in (1, DISPLAY_EVERY - 1, DISPLAY_EVERY + 1):
        guard.after_step(state_after(steps, {"loss": math.inf}))
    for steps in (DISPLAY_EVERY, 2 * DISPLAY_EVERY, 2 * DISPLAY_EVERY + 1):
        with pytest.raises(Diverged) as diverged:
            guard.after_step(state_after(steps, {"loss": math.inf}))
        assert diverged.value.epoch == 5 and diverged.value.losses == {"loss": math.inf}
    guard.after_step(state_after(DISPLAY_EVERY, {"loss": 1e30, "mse": math.nan}))


def test_the_guard_checks_every_mean_loss_of_an_epoch():
    guard = DivergenceGuard()
    state = state_after(3, {})
    state.epoch_losses = {"loss": 1.0, "mse": 0.5}
    guard.before_validation(state)
    state.epoch_losses = {"loss": 1.0, "triplet": math.inf}
    with pytest.raises(Diverged) as diverged:
        guard.before_validation(state)
    assert diverged.value.losses == {"loss": 1.0, "triplet": math.inf}


def select(start: float, rs: list[float], select_initial: bool) -> tuple[int, list[int]]:
    """BestCheckpoint over validation R ``start`` (the starting weights) then ``rs``; each
    epoch's weights are its number, so the kept weights tell which epoch they are."""
    net = torch.nn.Linear(1, 1, bias=False)
    ctx = SimpleNamespace(epoch=0, val={"pearson_r": start})
    state = FitState(method=net, ctx=ctx)  # type: ignore[arg-type]
    best = BestCheckpoint(select_initial)
    with torch.no_grad():
        net.weight.fill_(0)
        best.before_stage(state)
        marks = []
        for epoch, r in enumerate(rs):
            net.weight.fill_(epoch + 1)
            ctx.epoch, ctx.val, state.record = epoch, {"pearson_r": r}, {}
            best.after_epoch(state)
            marks.append(state.record["best_epoch"])
    assert best.weights["weight"].item() == best.epoch
    return best.epoch, marks


NAN = math.nan


@pytest.mark.parametrize(
    ("start", "rs", "select_initial", "epoch", "marks"),
    [
        (0.9, [0.3, 0.7, NAN, 0.6], False, 2, [1, 2, 2, 2]),  # the start is no candidate
        (0.9, [0.3, 0.7, NAN, 0.6], True, 0, [0, 0, 0, 0]),  # the start stays the best
        (0.5, [0.3, 0.7, NAN, 0.6], True, 2, [0, 2, 2, 2]),
        (0.2, [0.4, 0.4], False, 1, [1, 1]),  # a tie keeps the earlier epoch
        (NAN, [0.1], True, 1, [1]),  # a NaN R ranks last, the start's too
        (0.3, [NAN, NAN], False, 0, [0, 0]),  # nothing ranks: the starting weights
    ],
)
def test_best_checkpoint_keeps_the_highest_validation_r(start, rs, select_initial, epoch, marks):
    assert select(start, rs, select_initial) == (epoch, marks)


def test_a_pruning_hook_stops_the_run_after_the_epoch_is_logged(imageset, tmp_path):
    seen: list[int] = []

    def report(epoch: int, val: dict[str, float]) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise Pruned(f"pruned at epoch {epoch}")

    calls: list[str] = []
    log = tmp_path / "epochs.jsonl"
    with pytest.raises(Pruned):
        fit(imageset, calls, epochs=3, hooks=[Pruning(report)], log_path=log)
    assert seen == [1, 2]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert {"lr", "seconds", "loss_loss", "val_pearson_r", "best_epoch"} <= set(lines[0])
    assert calls[-2:] == ["before_validation 1", "after_stage"]  # the Recorder came after
