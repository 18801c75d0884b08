"""Mixed precision on the CPU: the same autocast code path as CUDA's bf16, run on 2 cores."""

from __future__ import annotations

import torch
from torch import nn

from bmdbench.backbones import build_backbone
from bmdbench.config import AugmentConfig, SplitConfig, StageConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import DataModule
from bmdbench.data.splits import make_split
from bmdbench.methods import Regressor
from bmdbench.methods.consistency_regularisation import ConsistencyParams, PiModel
from bmdbench.trainer import Trainer, seed_everything

CPU = torch.device("cpu")
TOLERANCE = 0.02  # bf16 backbone vs fp32: |Δprediction| in the target's unit (g/cm²)


class Embedding(nn.Module):
    """A stand-in backbone that returns its input as the embedding."""

    embed_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def test_head_and_consistency_see_a_1e_3_difference_under_bf16():
    regressor = Regressor(Embedding())
    with torch.no_grad():
        regressor.head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        regressor.head.bias.fill_(0.75)
    view1 = torch.tensor([[0.0, 0.3]])
    view2 = torch.tensor([[1e-3, 0.3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedding, pred1 = regressor(view1)
        _, pred2 = regressor(view2)
    assert embedding.dtype == pred1.dtype == torch.float32
    # a bf16 head would round 0.75 and 0.751 to the same value (its step at 0.75 is 0.004)
    assert abs((pred2 - pred1).item() - 1e-3) < 1e-6
    assert (pred1 - pred2).pow(2).mean().item() > 0.9e-6


def data_and_trainer(imageset, amp: str) -> tuple[DataModule, Trainer]:
    split = make_split(imageset, SplitConfig(val=8, test=8))
    return DataModule(imageset, split, CPU), Trainer(CPU, show_progress=False, amp=amp)


def test_bf16_predictions_match_fp32_within_tolerance(imageset):
    seed_everything(0)
    regressor = Regressor(build_backbone("tiny"))
    method = PiModel(regressor, ConsistencyParams())
    predictions = {}
    for amp in ("off", "bf16"):
        data, trainer = data_and_trainer(imageset, amp)
        assert trainer.mixed == (amp == "bf16")
        predictions[amp] = trainer.evaluate(method, data, "test")[1]
    assert abs(predictions["bf16"] - predictions["off"]).max() < TOLERANCE
    assert (predictions["bf16"] != predictions["off"]).any()  # bf16 really ran


def test_a_stage_2_method_trains_under_cpu_bf16_autocast(imageset):
    seed_everything(0)
    method = PiModel(Regressor(build_backbone("tiny")), ConsistencyParams())
    data, trainer = data_and_trainer(imageset, "bf16")
    stage = StageConfig(epochs=2, lr=1e-3, batch_size=8, labeled_per_batch=2)
    augment_dtypes = []
    augment = BatchAugment(AugmentConfig())
    original = augment.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        augment_dtypes.append(torch.is_autocast_enabled("cpu"))
        return original(x)

    augment.forward = spy  # type: ignore[method-assign]
    fit = trainer.fit(method, data, stage, augment, seed_everything(0), select_initial=True)
    assert all(torch.isfinite(torch.tensor(list(fit.test.values()))))
    assert fit.history[-1]["loss_consistency"] > 0
    assert augment_dtypes and not any(augment_dtypes)  # augmentation runs outside autocast
