"""The CUDA path: bf16 autocast with an fp32 head and losses, channels_last, cuDNN autotuning,
fused Adam, data resident on the GPU, and a ``smoke`` run end to end. Skipped without CUDA
(tests/methods/test_precision.py runs the same bf16 code path on the CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bmdbench.backbones import build_backbone
from bmdbench.config import AugmentConfig, SplitConfig, StageConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import DataModule
from bmdbench.data.splits import make_split
from bmdbench.methods import Regressor
from bmdbench.methods.consistency_regularisation import ConsistencyParams, PiModel
from bmdbench.methods.supervised import Baseline
from bmdbench.runner import execute
from bmdbench.spec import resolve
from bmdbench.speed import measure_limit, resident_batch
from bmdbench.trainer import Trainer, seed_everything

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CUDA = torch.device("cuda")
TOLERANCE = 0.02  # bf16 backbone vs fp32: |Δprediction| in the target's unit (g/cm²)


class Embedding(nn.Module):
    """A stand-in backbone that returns its input as the embedding."""

    embed_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def trainer(amp: str = "auto") -> Trainer:
    return Trainer(CUDA, show_progress=False, amp=amp)


def baseline() -> Baseline:
    seed_everything(0)
    return Baseline(Regressor(build_backbone("tiny")), None)


def on_gpu(imageset) -> DataModule:
    return DataModule(imageset, make_split(imageset, SplitConfig(val=8, test=8)), CUDA)


def test_cuda_defaults_bf16_channels_last_cudnn_autotune_fused_adam():
    t = trainer()
    assert t.mixed  # amp=auto: bf16 on CUDA
    method = t.prepare(baseline())
    assert torch.backends.cudnn.benchmark
    assert all(p.is_cuda for p in method.parameters())
    convs = [m.weight for m in method.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert t.optimiser(method, StageConfig()).defaults["fused"] is True


def test_backbone_runs_in_bf16_head_augmentation_and_losses_in_fp32(imageset):
    t = trainer()
    method = t.prepare(baseline())
    data = on_gpu(imageset)
    ctx = t.context(method, data, StageConfig(), BatchAugment(AugmentConfig()))
    conv = next(m for m in method.modules() if isinstance(m, nn.Conv2d))
    conv_dtypes = []
    conv.register_forward_hook(lambda module, inputs, out: conv_dtypes.append(out.dtype))
    batch = next(data.train_batches(8, False, torch.Generator().manual_seed(0)))
    with t.autocast():
        view = ctx.augment(batch.images)
        embedding, pred = method.regressor(view)
        losses = method.training_step(batch, ctx)
    assert view.is_cuda and view.dtype == torch.float32
    assert view.is_contiguous(memory_format=torch.channels_last)
    assert conv_dtypes[0] == torch.bfloat16
    assert embedding.dtype == pred.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_head_and_consistency_see_a_1e_3_difference_under_cuda_bf16():
    regressor = Regressor(Embedding()).to(CUDA)
    with torch.no_grad():
        regressor.head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        regressor.head.bias.fill_(0.75)
    view1 = torch.tensor([[0.0, 0.3]], device=CUDA)
    view2 = torch.tensor([[1e-3, 0.3]], device=CUDA)
    with trainer().autocast():
        _, pred1 = regressor(view1)
        _, pred2 = regressor(view2)
    # a bf16 head would round 0.75 and 0.751 to the same value (its step at 0.75 is 0.004)
    assert pred1.dtype == torch.float32
    assert abs((pred2 - pred1).item() - 1e-3) < 1e-6


def test_bf16_predictions_match_fp32_within_tolerance(imageset):
    method = baseline()
    predictions = {}
    for amp in ("off", "bf16"):
        t = trainer(amp)
        predictions[amp] = t.evaluate(t.prepare(method), on_gpu(imageset), "test")[1]
    assert abs(predictions["bf16"] - predictions["off"]).max() < TOLERANCE
    assert (predictions["bf16"] != predictions["off"]).any()  # bf16 really ran


def test_data_stays_resident_on_the_gpu(imageset):
    data = on_gpu(imageset)
    generator = torch.Generator().manual_seed(0)
    batches = [
        next(data.train_batches(8, False, generator)),
        next(data.two_stream_batches(8, 2, generator)),
    ]
    for batch in batches:
        assert batch.images.is_cuda and batch.targets.is_cuda
        assert batch.labeled.is_cuda and batch.index.is_cuda
    assert data.pool_targets.is_cuda
    assert next(data.eval_chunks("val")).is_cuda and next(data.pool_chunks()).is_cuda


def test_a_stage_2_method_trains_on_cuda(imageset):
    seed_everything(0)
    method = PiModel(Regressor(build_backbone("tiny")), ConsistencyParams())
    stage = StageConfig(epochs=2, lr=1e-3, batch_size=8, labeled_per_batch=2)
    augment = BatchAugment(AugmentConfig())
    fit = trainer().fit(method, on_gpu(imageset), stage, augment, seed_everything(0))
    assert all(torch.isfinite(torch.tensor(list(fit.test.values()))))
    assert fit.history[-1]["loss_consistency"] > 0
    assert fit.images_seen > 0 and all(not v.is_cuda for v in fit.state_dict.values())


def test_limit_reports_peak_gpu_memory():
    t = trainer()
    speed = measure_limit(t, baseline(), resident_batch(t, 8, (32, 32), 8), 2, 1)
    assert speed.images_per_s > 0
    assert speed.peak_bytes is not None and speed.peak_bytes > 0


def test_smoke_run_end_to_end_on_cuda(tmp_path):
    cfg = resolve("proposed", "tiny", "smoke", device="cuda")
    outcome = execute(cfg, tmp_path, show_progress=False)
    record = outcome.record
    assert record.status == "ok"
    assert record.device == torch.cuda.get_device_name(CUDA)
    assert record.parent_run.startswith("atl-tiny-smoke-s0-")
    assert record.timings["images_per_s"] > 0
    assert all(math.isfinite(v) for v in record.metrics["test"].values())
