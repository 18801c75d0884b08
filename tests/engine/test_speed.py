"""The limit measurement: a method's own step on a resident batch, and its FLOPs."""

from __future__ import annotations

import pytest
import torch

from bmdbench.config import resolve
from bmdbench.runner import build_method
from bmdbench.speed import measure_limit, resident_batch, step_flops
from bmdbench.trainer import Trainer, seed_everything

CPU = torch.device("cpu")


def method(name: str):
    seed_everything(0)
    return build_method(resolve(name, "tiny", "smoke"))


def batch(labeled: int = 8):
    return resident_batch(Trainer(CPU, show_progress=False), 8, (16, 16), labeled)


def test_limit_trains_the_method_on_its_resident_batch():
    baseline = method("baseline")
    before = [p.detach().clone() for p in baseline.parameters()]
    speed = measure_limit(Trainer(CPU, show_progress=False), baseline, batch(), 2, 1)
    assert speed.images_per_s > 0 and speed.warmup_s > 0 and speed.peak_bytes is None
    assert any(not torch.equal(a, b) for a, b in zip(before, baseline.parameters(), strict=True))


def test_proposed_limit_trains_on_refreshed_pseudo_labels():
    proposed = method("proposed")
    measure_limit(Trainer(CPU, show_progress=False), proposed, batch(labeled=4), 1, 0)
    assert proposed.refreshes == 1 and torch.isfinite(proposed.pseudo).all()


def test_flops_count_the_passes_each_method_makes():
    trainer = Trainer(CPU, show_progress=False)
    baseline = step_flops(trainer, method("baseline"), batch())
    assert baseline > 0
    proposed = step_flops(trainer, method("proposed"), batch(4))
    assert proposed / baseline == pytest.approx(2, rel=0.05)  # two forward + backward passes
    # a student forward + backward and a teacher forward (backward ≈ 2 forwards, less the
    # first convolution's input gradient)
    ratio = step_flops(trainer, method("mean_teacher"), batch(4)) / baseline
    assert 1.25 < ratio < 1.45
