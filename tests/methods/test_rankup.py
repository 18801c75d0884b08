"""RankUp and RankUp + RDA (bmdbench.methods.rankup): the ARC's pairs and losses against
numbers computed by hand, the strong view, the contract, and smoke-preset runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bmdbench.backbones import build_backbone
from bmdbench.data import sources
from bmdbench.data.module import Batch
from bmdbench.methods import FitContext, Regressor, rankup
from bmdbench.methods.rankup import (
    PassRate,
    RankUp,
    RankUpRDA,
    _brightness,
    _contrast,
    _equalize,
    _posterize,
    confident_pseudo_labels,
    cutout,
    distinct_pairs,
    draw_labeled,
    masked_cross_entropy,
    pair_logits,
    pair_targets,
    soft_cross_entropy,
    strong_view,
)
from bmdbench.runner import execute
from bmdbench.spec import resolve
from bmdbench.testing import make_imageset

NAN = float("nan")


def test_pair_logits_are_score_differences_of_every_ordered_pair():
    scores = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # row i·2 + j = scores[i] − scores[j]: (0,0) 0; (0,1) [1, −2]; (1,0) [−1, 2]; (1,1) 0
    assert pair_logits(scores).tolist() == [[0, 0], [1, -2], [-1, 2], [0, 0]]


def test_pair_labels():
    # y = [1, 3, 3]; class 0 is "y_i > y_j"; ties and i = j are 0.5 / 0.5
    assert pair_targets(torch.tensor([1.0, 3.0, 3.0])).tolist() == [
        [0.5, 0.5], [0.0, 1.0], [0.0, 1.0],  # i = 0: 1 vs 1, 3, 3
        [1.0, 0.0], [0.5, 0.5], [0.5, 0.5],  # i = 1: 3 vs 1, 3, 3
        [1.0, 0.0], [0.5, 0.5], [0.5, 0.5],  # i = 2: 3 vs 1, 3, 3
    ]  # fmt: skip


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    # row 0: −(½ log ½ + ½ log ½) = log 2; row 1: softmax [¾, ¼], −log ¾ = log(4/3)
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected)


def test_pairs_of_an_image_with_itself_never_count():
    # pool positions [3, 5, 3]: rows i·3 + j; (0, 0), (1, 1), (2, 2) and the two (0, 2), (2, 0)
    # pairs of image 3 with itself are left out
    assert distinct_pairs(torch.tensor([3, 5, 3])).tolist() == [
        False, True, False,
        True, False, True,
        False, True, False,
    ]  # fmt: skip


def test_labeled_pairs_of_two_images_by_hand():
    # scores s0 = [ln 3, 0], s1 = [0, 0], y = [2, 1]; the pairs (0,0), (1,1) (log 2 each) do
    # not count; (0,1): logits [ln 3, 0], target [1, 0] → log(4/3); (1,0): [−ln 3, 0], [0, 1]
    # → log(4/3); mean over the 2 pairs
    scores = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]])
    pairs = distinct_pairs(torch.tensor([0, 1]))
    logits, targets = pair_logits(scores)[pairs], pair_targets(torch.tensor([2.0, 1.0]))[pairs]
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(math.log(4 / 3))


def test_draw_labeled_takes_other_labeled_images_without_replacement():
    torch.manual_seed(0)
    taken = torch.tensor([1, 4])
    drawn = draw_labeled(6, taken, 3)
    assert len(drawn) == 3 and len(set(drawn.tolist())) == 3
    assert set(drawn.tolist()) <= {0, 2, 3, 5}
    assert sorted(draw_labeled(6, taken, 10).tolist()) == [0, 2, 3, 5]  # all that are left
    assert draw_labeled(6, taken, -2).tolist() == []
    torch.manual_seed(0)
    assert torch.equal(draw_labeled(6, taken, 3), drawn)  # torch's global RNG


def test_pass_rate_per_epoch_and_over_the_stage():
    rate, ctx = PassRate(), context(TARGETS)
    rate.add(torch.tensor([1.0, 0.0, 1.0, 0.0]))
    rate.add(torch.tensor([1.0, 1.0]))
    rate.epoch_end(ctx)
    assert ctx.log["arc_pass_rate"] == pytest.approx(4 / 6)
    rate.add(torch.tensor([0.0, 0.0]))
    rate.epoch_end(ctx)
    assert ctx.log["arc_pass_rate"] == 0.0
    assert rate.rate == pytest.approx(4 / 8)
    assert math.isnan(PassRate().rate)


def test_confidence_mask():
    # softmax: [0.99, 0.01], [0.01, 0.99], [0.9, 0.1], [0.5, 0.5]; τ = 0.95
    logits = torch.tensor(
        [[math.log(99), 0.0], [0.0, math.log(99)], [math.log(9), 0.0], [0.0, 0.0]],
        requires_grad=True,
    )
    labels, mask = confident_pseudo_labels(logits, 0.95)
    assert labels.tolist() == [0, 1, 0, 0]
    assert mask.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert not mask.requires_grad and not labels.requires_grad
    assert confident_pseudo_labels(logits, 0.85)[1].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_masked_cross_entropy_by_hand():
    logits = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [0.0, math.log(3)]])
    labels = torch.tensor([0, 1, 0])
    mask = torch.tensor([1.0, 0.0, 1.0])
    # row 0: −log ¾ = log(4/3); row 1 masked; row 2: softmax [¼, ¾], −log ¼ = log 4; over 3 rows
    expected = (math.log(4 / 3) + math.log(4)) / 3
    assert masked_cross_entropy(logits, labels, mask).item() == pytest.approx(expected)


def test_empty_pair_sets_give_zero_losses_with_a_graph():
    scores = torch.zeros(0, 2, requires_grad=True)
    assert soft_cross_entropy(pair_logits(scores), pair_targets(torch.zeros(0))).item() == 0
    labels, mask = confident_pseudo_labels(pair_logits(scores), 0.95)
    loss = masked_cross_entropy(pair_logits(scores), labels, mask)
    assert loss.item() == 0 and loss.requires_grad


def test_intensity_operations_by_hand():
    half = torch.full((1, 1, 2, 2), 0.5)
    # brightness: factor 0.05 + 0.9·u; u = 0.5 → 0.5 · 0.5 = 0.25
    assert _brightness(half, torch.tensor([0.5])).flatten().tolist() == [0.25] * 4
    # contrast: mean 0.5 + 0.05 · (x − 0.5) at u = 0: 0 → 0.475, 1 → 0.525
    ramp = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 2, 2)
    assert _contrast(ramp, torch.tensor([0.0])).flatten().tolist() == pytest.approx(
        [0.475, 0.525] * 2
    )
    # posterize at u = 0 keeps 4 bits: 200 → 192 (of 255); u = 0.99 keeps 7: 201 → 200
    x = torch.tensor([200 / 255, 201 / 255]).view(2, 1, 1, 1)
    out = _posterize(x, torch.tensor([0.0, 0.99])) * 255
    assert out.flatten().tolist() == pytest.approx([192.0, 200.0])


def test_equalize_by_hand():
    # 512 pixels: 256 at level 10, 255 at 20, 1 at 200; step = (512 − 1) // 255 = 2, and level i
    # maps to (step // 2 + pixels below i) // step: 10 → 1 // 2 = 0, 20 → 257 // 2 = 128,
    # 200 → 512 // 2 = 256, at most 255
    levels = torch.tensor([10.0] * 256 + [20.0] * 255 + [200.0]).view(1, 1, 16, 32)
    out = _equalize(levels / 255, torch.zeros(1)) * 255
    assert out.flatten().unique().tolist() == pytest.approx([0.0, 128.0, 255.0])
    assert (out.flatten()[:256] == 0).all() and (out.flatten()[256:511].round() == 128).all()
    # fewer than 256 pixels below the brightest level: step 0, the image is left as it was
    few = torch.tensor([0.1, 0.5, 0.9, 0.2]).view(1, 1, 2, 2)
    assert torch.equal(_equalize(few, torch.zeros(1)), few)


def test_equalize_is_pils():
    from PIL import Image, ImageOps

    generator = torch.Generator().manual_seed(3)
    levels = (torch.rand(3, 1, 24, 24, generator=generator) ** 2 * 200).floor()
    out = (_equalize(levels / 255, torch.zeros(3)) * 255).round().to(torch.uint8)
    for image, ours in zip(levels.to(torch.uint8), out, strict=True):
        pil = np.asarray(ImageOps.equalize(Image.fromarray(image[0].numpy())))
        assert np.array_equal(ours[0].numpy(), pil)


def test_cutout_fills_a_box_with_gray():
    torch.manual_seed(0)
    out = cutout(torch.ones(64, 1, 16, 16))
    filled = (out == 0.5).flatten(1).sum(dim=1)
    assert set(out.unique().tolist()) <= {0.5, 1.0}
    assert filled.max() <= 8 * 8  # at most half of each side
    assert (filled > 0).float().mean() > 0.5


def test_strong_view_stays_in_range_differs_from_weak_and_is_seeded():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(16, 1, 16, 16, generator=generator)

    def weak(x: torch.Tensor) -> torch.Tensor:  # a weak view that leaves [0, 1], as the run's may
        return x * 1.2 - 0.1

    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = strong_view(images, weak)
    torch.manual_seed(0)
    second = strong_view(images, weak)
    assert first.dtype == torch.float32 and first.shape == images.shape
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, second)
    differs = (first != weak(images).clamp(0, 1)).flatten(1).any(dim=1)
    assert differs.sum() >= 14  # three identities and an empty cutout are rare


def tiny_method(cls, **params):
    torch.manual_seed(0)
    return cls(Regressor(build_backbone("tiny")), cls.Params(**params))


def batch_of(targets: torch.Tensor, index: torch.Tensor | None = None) -> Batch:
    """The pool images at ``index`` (all of them by default) of the pool of ``targets``."""
    images = torch.rand(len(targets), 1, 16, 16, generator=torch.Generator().manual_seed(2))
    index = torch.arange(len(targets)) if index is None else index
    return Batch(images[index], targets[index], torch.isfinite(targets[index]), index)


def context(targets: torch.Tensor, **fields) -> FitContext:
    """A context over the pool of ``targets`` (labeled ones first), its images those of
    :func:`batch_of`."""
    fields.setdefault("pool_batch", lambda index: batch_of(targets, index))
    return FitContext(
        augment=lambda x: x,
        predict_pool=lambda predictor: torch.linspace(0, 1, len(targets)),
        pool_size=len(targets),
        n_labeled=int(torch.isfinite(targets).sum()),
        pool_targets=targets,
        epochs=1,
        steps_per_epoch=1,
        **fields,
    )


TARGETS = torch.tensor([0.5, 0.9, 0.7, 0.6, NAN, NAN, NAN, NAN])


def test_rankup_loss_and_its_head():
    method = tiny_method(RankUp, threshold=0.5)  # every unlabeled pair confident
    ctx = context(TARGETS)
    losses = method.training_step(batch_of(TARGETS), ctx)
    # MSE + λ_arc (CE_labeled + w_u CE_unlabeled), λ_arc = 0.2, w_u = 1
    expected = losses["mse"] + 0.2 * (losses["arc_labeled"] + losses["arc_unlabeled"])
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # 4 unlabeled images: 4 · 3 = 12 pairs of two different images, all passing τ = 0.5
    method.on_epoch_end(ctx)
    assert ctx.log["arc_pass_rate"] == 1.0 and method.pass_rate.pairs == 12
    assert method.summary() == {"arc_pass_rate": 1.0}
    losses["loss"].backward()
    assert method.arc.weight.grad.abs().sum() > 0 and method.arc.bias.grad is not None
    assert {"arc.weight", "arc.bias"} <= set(method.state_dict())  # checkpointed
    assert {id(p) for p in method.arc.parameters()} <= {
        id(p) for p in method.trainable_parameters()
    }


# a pool of 8 labeled and 4 unlabeled images, and a batch of 2 labeled and the 4 unlabeled ones
POOL = torch.tensor([0.1, 0.9, 0.7, 0.6, 0.3, 0.2, 0.4, 0.8, NAN, NAN, NAN, NAN])
BATCH = torch.tensor([0, 5, 8, 9, 10, 11])


def test_labeled_pairs_span_the_batchs_and_the_drawn_labeled_images(monkeypatch):
    # arc_labeled_images = 6: the batch's 2 labeled images and 4 drawn of the 6 others
    targets, index = POOL, BATCH
    seen = []

    def recording(logits, soft_targets):
        seen.append(soft_targets.clone())
        return soft_cross_entropy(logits, soft_targets)

    monkeypatch.setattr(rankup, "soft_cross_entropy", recording)
    method = tiny_method(RankUp, arc_labeled_images=6)
    torch.manual_seed(4)
    method.training_step(batch_of(targets, index), context(targets))
    torch.manual_seed(4)
    drawn = draw_labeled(8, torch.tensor([0, 5]), 4)  # the method's draw, replayed
    ranked = torch.cat([torch.tensor([0, 5]), drawn])
    (labels,) = seen  # 6 · 5 = 30 ordered pairs of different images, in pair_targets' order
    assert torch.equal(labels, pair_targets(targets[ranked])[distinct_pairs(ranked)])
    assert labels.shape == (30, 2) and not set(drawn.tolist()) & {0, 5}
    assert method.pass_rate.epoch_pairs == 4 * 3  # the unlabeled images' distinct pairs


def test_drawing_labeled_images_needs_the_trainers_pool():
    method = tiny_method(RankUp)  # 32 labeled images per step, 2 in the batch
    ctx = context(POOL, pool_batch=FitContext.pool_batch)  # a context built without the pool
    with pytest.raises(TypeError, match="no training pool"):
        method.training_step(batch_of(POOL, BATCH), ctx)
    # with no labeled image to draw (arc_labeled_images = the batch's 2), it needs none
    method = tiny_method(RankUp, arc_labeled_images=2)
    method.training_step(batch_of(POOL, BATCH), ctx)


def test_rankup_rda_loss():
    method = tiny_method(RankUpRDA, rampup=0.0, unsup_weight=2.0)
    ctx = context(TARGETS)
    method.on_stage_start(ctx)
    losses = method.training_step(batch_of(TARGETS), ctx)
    expected = (
        losses["mse"]
        + 2.0 * losses["rda"]
        + 0.2 * (losses["arc_labeled"] + losses["arc_unlabeled"])
    )
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["rda"].item() > 0


def test_rankup_methods_on_the_smoke_preset(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "load_images", lambda cfg: make_imageset(size=32))
    overrides = {"split.val": "8", "split.test": "8", "stage1.epochs": "1"}
    for name in ("rankup", "rankup_rda"):  # one stage-1 run, reused
        cfg = resolve(name, "tiny", "smoke", overrides, device="cpu")
        outcome = execute(cfg, tmp_path, show_progress=False)
        record = outcome.record
        assert record.status == "ok" and record.method == name
        assert np.isfinite(record.metrics["test"]["rmse"])
        (epoch,) = [json.loads(line) for line in (outcome.run_dir / "epochs.jsonl").open()]
        assert 0 <= epoch["arc_pass_rate"] <= 1
        assert record.diagnostics["arc_pass_rate"] == epoch["arc_pass_rate"]  # one epoch
