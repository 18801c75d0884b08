"""The limit measurement, the paper estimate's arithmetic, and the estimate before a run."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from bmdbench.config import StageConfig
from bmdbench.data import sources
from bmdbench.runner import build_method, execute
from bmdbench.spec import resolve
from bmdbench.speed import (
    GIB,
    Speed,
    StageEstimate,
    describe_estimate,
    measure_limit,
    resident_batch,
    stage_images,
    step_flops,
)
from bmdbench.trainer import Trainer, seed_everything

CPU = torch.device("cpu")
SMALL = {"split.val": "8", "split.test": "8", "stage1.epochs": "1", "stage2.epochs": "1"}


def method(name: str):
    seed_everything(0)
    return build_method(resolve(name, "tiny", "smoke"))


def batch(labeled: int = 8):
    return resident_batch(Trainer(CPU, show_progress=False), 8, (16, 16), labeled)


def test_stage_images_counts_every_step_as_a_whole_batch():
    # the paper's stage 1: 440 images, batch 16 → 27 full steps + one of 8 = 28 steps
    assert stage_images(StageConfig(epochs=200, batch_size=16), 440) == 200 * 28 * 16
    # a last batch of a single image is dropped, as the Trainer drops it
    assert stage_images(StageConfig(epochs=1, batch_size=16), 33) == 2 * 16


def test_estimate_is_images_over_speed_plus_memory():
    stage1 = StageEstimate("stage 1 (atl)", 89_600, Speed(100.0, 1.0, 10 * GIB))
    stage2 = StageEstimate("stage 2 (proposed)", 867_200, Speed(50.0, 1.0, 12 * GIB))
    assert stage1.seconds == 896 and stage2.seconds == 17_344
    line = describe_estimate([stage1, stage2], 2 * GIB)
    assert line.startswith("estimate: stage 1 (atl) 89,600 images at 100.0 img/s, ")
    assert "stage 2 (proposed) 867,200 images at 50.0 img/s" in line
    assert "at least 5.1 h" in line  # (896 + 17,344) s
    assert "peak GPU memory ≈ 14.0 GiB (images 2.0 GiB)" in line  # the larger peak + images
    cpu = describe_estimate([StageEstimate("stage 1 (atl)", 540, Speed(1.0, 0.0, None))], GIB)
    assert "at least 9.0 min" in cpu and "images on the device 1.0 GiB" in cpu


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


@pytest.fixture
def tiny_data(monkeypatch, imageset_factory):
    monkeypatch.setattr(sources, "load_images", lambda cfg: imageset_factory())


def run_output(tmp_path, name: str, preset: str) -> str:
    text = io.StringIO()
    cfg = resolve(name, "tiny", preset, SMALL, device="cpu")
    execute(cfg, tmp_path, Console(file=text, width=400), show_progress=False)
    return text.getvalue()


def test_a_paper_run_prints_its_estimate_first(tmp_path, tiny_data):
    first = run_output(tmp_path, "proposed", "paper")
    # 24 training images in batches of 16: 2 steps; stage 2 adds 16 unlabeled: 3 steps
    assert first.startswith("estimate: stage 1 (atl) 32 images at ")
    assert "stage 2 (proposed) 48 images at " in first.splitlines()[0]
    assert first.count("estimate:") == 1  # the parent prints none of its own
    again = run_output(tmp_path, "proposed_no_consistency", "paper")
    assert again.startswith("estimate: stage 2 (proposed_no_consistency)")  # stage 1 reused
    assert "stage 1" not in again.splitlines()[0]


def test_other_presets_print_no_estimate(tmp_path, tiny_data):
    assert "estimate:" not in run_output(tmp_path, "atl", "smoke")
