"""Supervised regression with the Huber loss (Huber, "Robust estimation of a location
parameter", 1964): quadratic for residuals within δ of the target, linear beyond, so that a
few badly labeled images pull the fit less than under the MSE.

Not decorated with ``@METHODS.register``: the entry point in pyproject.toml registers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bmdbench.config import above
from bmdbench.data.module import Batch
from bmdbench.methods import FitContext, Method


@dataclass(frozen=True)
class HuberParams:
    # δ, where the loss turns from quadratic to linear, in the loss's target space
    # (g/cm² of BMD; standard deviations of the targets with target_norm=zscore)
    delta: float = field(default=0.1, metadata=above(0))


def masked_huber(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, delta: float
) -> torch.Tensor:
    """Mean over ``mask`` of torch's Huber loss, ½r² for |r| ≤ δ and δ(|r| − ½δ) beyond, of the
    residual r = pred − target (B,); 0 (with a graph) if the mask is empty."""
    target = torch.where(mask, target, pred.detach())  # unlabeled images: no residual
    per_image = F.huber_loss(pred, target, reduction="none", delta=delta)
    return per_image.sum() / mask.sum().clamp(min=1)


class Huber(Method):
    """Supervised regression with the Huber loss (quadratic within δ, linear beyond)."""

    Params = HuberParams

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, pred = self.regressor(ctx.augment(batch.images))
        huber = masked_huber(pred, batch.targets, batch.labeled, self.params.delta)
        return {"loss": huber, "huber": huber}
