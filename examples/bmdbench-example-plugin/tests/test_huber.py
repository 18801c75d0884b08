"""The plug-in's method meets bmdbench's contract, and its loss matches numbers by hand."""

from __future__ import annotations

import pytest
import torch
from bmdbench_example_plugin.huber import Huber, masked_huber

from bmdbench.testing import check_method


def test_huber_meets_the_method_contract():
    check_method(Huber)


def test_masked_huber_against_hand_numbers():
    pred = torch.tensor([1.0, 3.0, 0.0, 5.0])
    target = torch.tensor([1.5, 0.0, float("nan"), 5.0])
    labeled = torch.tensor([True, True, False, True])
    # δ = 1: |r| = 0.5 → ½·0.25 = 0.125; |r| = 3 → 1·(3 − 0.5) = 2.5; |r| = 0 → 0;
    # the unlabeled image is left out: (0.125 + 2.5 + 0) / 3 = 0.875
    assert masked_huber(pred, target, labeled, delta=1.0).item() == pytest.approx(0.875)
    # δ = 0.25: 0.25·(0.5 − 0.125) = 0.09375; 0.25·(3 − 0.125) = 0.71875 → 0.8125 / 3
    assert masked_huber(pred, target, labeled, 0.25).item() == pytest.approx(0.8125 / 3)


def test_no_labeled_image_no_loss():
    pred = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = masked_huber(pred, torch.full((2,), float("nan")), torch.zeros(2, dtype=torch.bool), 1.0)
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None and not pred.grad.any()
