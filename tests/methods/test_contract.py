"""The contract every registered method must meet (STYLE.md, principle 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bmdbench.backbones import build_backbone
from bmdbench.config import AugmentConfig, SplitConfig, StageConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import DataModule
from bmdbench.data.splits import make_split
from bmdbench.methods import METHODS, Method, Regressor
from bmdbench.spec import resolve
from bmdbench.trainer import Trainer, seed_everything

STAGE = StageConfig(epochs=1, lr=1e-3, lr_drop_epoch=None, batch_size=8)
CPU = torch.device("cpu")


def build(name: str, imageset) -> tuple[Method, DataModule, Trainer]:
    seed_everything(0)
    cfg = resolve(name, "tiny", "smoke")
    method = METHODS.get(name)(Regressor(build_backbone("tiny")), cfg.hparams)
    split = make_split(imageset, SplitConfig(val=8, test=8))
    return method, DataModule(imageset, split, CPU), Trainer(CPU, show_progress=False)


def test_every_method_is_tested():
    assert set(METHODS) == {
        "baseline", "triplet", "atl", "pi_model", "temporal_ensembling", "mean_teacher",
        "pseudo_label", "pseudo_label_atl", "proposed", "proposed_no_consistency",
    }  # fmt: skip


@pytest.mark.parametrize("name", list(METHODS))
def test_gradients_reach_every_parameter_and_unsupervised_terms_train_the_student(name, imageset):
    method, data, trainer = build(name, imageset)
    ctx = trainer.context(method, data, STAGE, BatchAugment(AugmentConfig()))
    ctx.val, _ = trainer.evaluate(method, data, "val")
    ctx.val["pearson_r"] = 0.5  # let self-training refresh its pseudo labels at epoch start
    method.on_stage_start(ctx)
    method.on_epoch_start(ctx)
    method.train()
    batch = next(data.train_batches(64, method.stage == 2, torch.Generator().manual_seed(0)))
    if method.stage == 2:
        assert (~batch.labeled).any(), "stage-2 batches mix in unlabeled images"
    method.training_step(batch, ctx)
    method.on_epoch_end(ctx)  # temporal ensembling needs one ensemble update for a target

    losses = method.training_step(batch, ctx)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    method.zero_grad()
    losses["loss"].backward()
    for pname, p in method.regressor.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), (
            f"{name}: no gradient for {pname}"
        )
    assert any(p.grad.abs().sum() > 0 for p in method.regressor.parameters())

    if method.unsupervised_terms:
        method.zero_grad()
        losses = method.training_step(batch, ctx)
        unsupervised = sum(losses[t] for t in method.unsupervised_terms)
        unsupervised.backward()
        student = sum(
            p.grad.abs().sum() for p in method.regressor.parameters() if p.grad is not None
        )
        assert student > 0, f"{name}: the unsupervised terms alone give the student no gradient"


@pytest.mark.parametrize("name", list(METHODS))
def test_same_seed_same_numbers(name, imageset):
    results = []
    for _ in range(2):
        method, data, trainer = build(name, imageset)
        generator = seed_everything(3)
        fit = trainer.fit(method, data, STAGE, BatchAugment(AugmentConfig()), generator)
        results.append((fit.val, fit.test, fit.history[-1]["loss_loss"]))
    assert results[0] == results[1]
    assert np.isfinite(results[0][2])
