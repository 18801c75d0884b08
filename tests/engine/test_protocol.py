"""The stage-2 batches, the learning-rate schedules and the presets' compression rule."""

from __future__ import annotations

import math

import pytest
import torch

from bmdbench.config import PRESETS, SplitConfig, StageConfig
from bmdbench.data.module import DataModule, steps_per_epoch
from bmdbench.data.splits import make_split
from bmdbench.methods import METHODS
from bmdbench.spec import resolve
from bmdbench.trainer import lr_at, lr_budget

CPU = torch.device("cpu")


def test_two_stream_batches_hold_a_fixed_labeled_share(imageset_factory):
    images = imageset_factory(n_labeled=19, n_unlabeled=9)  # 3 train after val/test below
    data = DataModule(images, make_split(images, SplitConfig(val=8, test=8)), CPU)
    assert (data.n_labeled, data.pool_size) == (3, 12)
    batches = list(data.two_stream_batches(4, 1, torch.Generator().manual_seed(0)))
    # one pass over the pool of 12 is 3 steps of 4: 1 labeled + 3 unlabeled each
    assert len(batches) == steps_per_epoch(12, 4) == 3
    for batch in batches:
        assert batch.labeled.tolist() == [True, False, False, False]
    labeled = sorted(int(b.index[0]) for b in batches)
    unlabeled = sorted(int(i) for b in batches for i in b.index[1:])
    assert labeled == [0, 1, 2]  # each labeled image once
    assert unlabeled == list(range(3, 12))  # each unlabeled image once


def test_two_stream_labeled_stream_cycles_with_fresh_shuffles(imageset_factory):
    images = imageset_factory(n_labeled=18, n_unlabeled=30)  # 2 train
    data = DataModule(images, make_split(images, SplitConfig(val=8, test=8)), CPU)
    batches = list(data.two_stream_batches(8, 2, torch.Generator().manual_seed(1)))
    assert len(batches) == 4  # pool 32 / 8
    for batch in batches:  # the 2 labeled images, in some order, in every batch
        assert sorted(batch.index[:2].tolist()) == [0, 1]
        assert batch.labeled.sum() == 2


def test_supervised_term_averages_over_the_labeled_images_of_the_batch(imageset_factory):
    from bmdbench.methods.losses import masked_mse

    pred = torch.tensor([1.0, 0.0, 5.0, 7.0])
    target = torch.tensor([3.0, 1.0, float("nan"), float("nan")])
    # two labeled images: ((3−1)² + (1−0)²) / 2 = 2.5; the unlabeled ones do not count
    assert masked_mse(pred, target, torch.isfinite(target)).item() == pytest.approx(2.5)


def test_cosine_and_step_schedules():
    cosine = StageConfig(epochs=2, lr=1.0, schedule="cosine")
    assert [lr_at(cosine, s, 2) for s in range(4)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    )
    step = StageConfig(epochs=3, lr=1.0, lr_drop_epoch=1, lr_after_drop=0.1)
    assert [lr_at(step, s, 2) for s in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.1])
    assert lr_budget(step, 2) == pytest.approx(2.4)
    warm = StageConfig(epochs=1, lr=1.0, schedule="cosine", warmup=0.5)
    # 2 warm-up steps of 4: 1/3, 2/3; then cosine over the last 2 steps: 1, ½(1 + cos(π/2))
    assert [lr_at(warm, s, 4) for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5])


def train_and_pool(cfg) -> tuple[int, int]:
    """Labeled training images and the stage-2 pool of a preset's set sizes (no label budget)."""
    n_train = cfg.synth.n_labeled - cfg.split.val - cfg.split.test
    if cfg.split.val < 1:  # the paper's fractions of the labeled images
        n_train = cfg.synth.n_labeled - round(cfg.split.val * cfg.synth.n_labeled)
        n_train -= round(cfg.split.test * cfg.synth.n_labeled)
    return int(n_train), int(n_train) + cfg.synth.n_unlabeled


def budget_ratio(preset: str) -> float:
    """Stage 2's Σ lr·steps over stage 1's."""
    cfg = resolve("proposed", "tiny", preset)
    n_train, pool = train_and_pool(cfg)
    stage1 = lr_budget(cfg.stage1, steps_per_epoch(n_train, cfg.stage1.batch_size))
    stage2 = lr_budget(cfg.stage2, steps_per_epoch(pool, cfg.stage2.batch_size))
    return stage2 / stage1


def test_paper_stage2_budget_is_1_75_times_stage1():
    assert budget_ratio("paper") == pytest.approx(1.757, abs=0.01)


def stage2_steps(preset: str) -> int:
    cfg = resolve("mean_teacher", "tiny", preset)
    return cfg.stage2.epochs * steps_per_epoch(train_and_pool(cfg)[1], cfg.stage2.batch_size)


def teacher_share(preset: str) -> float:
    """The mean teacher's EMA horizon, 1/(1 − decay) steps, as a share of stage 2's steps."""
    decay = resolve("mean_teacher", "tiny", preset).hparams.ema_decay
    return 1 / (1 - decay) / stage2_steps(preset)


def test_quick_keeps_the_papers_mean_teacher_horizon():
    assert teacher_share("paper") == pytest.approx(1000 / 54_200)  # 100 epochs of 542 steps
    assert teacher_share("quick") == pytest.approx(teacher_share("paper"), rel=0.1)


def test_every_preset_keeps_the_teachers_ramp_up_decay_below_its_later_decay():
    for preset in ("paper", "quick"):
        params = resolve("mean_teacher", "tiny", preset).hparams
        assert params.ema_decay_rampup < params.ema_decay, preset


def test_quick_gives_every_triplet_term_one_weight_and_paper_the_authors():
    # the methods with a triplet term: those that say what it is on raw targets (Table 3)
    triplet = [n for n in METHODS if METHODS.get(n).raw_scale({"weight": 1, "margin": 1}, 1)]
    for name in METHODS:
        assert hasattr(METHODS.get(name).Params(), "weight") == (name in triplet), name
    for name in triplet:
        paper = resolve(name, "tiny", "paper").hparams.weight
        assert paper == (0.0 if name == "pseudo_label" else 0.5), name  # the authors'
        assert resolve(name, "tiny", "quick").hparams.weight == (0.05 if paper else 0.0), name


def test_a_preset_sets_a_methods_hyperparameters_below_set():
    assert resolve("mean_teacher", "tiny", "quick").hparams.ema_decay == 0.8
    assert resolve("mean_teacher", "tiny", "paper").hparams.ema_decay == 0.999  # the authors'
    cfg = resolve("mean_teacher", "tiny", "quick", {"mean_teacher.ema_decay": "0.995"})
    assert cfg.hparams.ema_decay == 0.995


def test_quick_keeps_the_papers_ratios():
    assert budget_ratio("quick") == pytest.approx(1.75, rel=0.05)
    quick = resolve("proposed", "tiny", "quick")
    n_train, _ = train_and_pool(quick)
    assert quick.synth.n_unlabeled >= 10 * n_train
    assert set(PRESETS) == {"paper", "quick", "smoke"}
