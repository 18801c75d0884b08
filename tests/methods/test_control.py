"""The equal-compute supervised controls: their batches, their losses, their parents."""

from __future__ import annotations

import torch

from bmdbench.config import AugmentConfig, SplitConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import Batch, DataModule, steps_per_epoch
from bmdbench.data.splits import make_split
from bmdbench.methods import METHODS
from bmdbench.methods.base import FitContext, Regressor
from bmdbench.methods.control import control_for
from bmdbench.methods.losses import batch_triplet_loss
from bmdbench.spec import resolve
from bmdbench.testing import make_imageset
from bmdbench.trainer import Trainer

CPU = torch.device("cpu")


class Pixels(torch.nn.Flatten):
    """A backbone whose embedding is the image's pixels."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim


def test_labeled_batches_take_stage_two_steps_of_labeled_images_only():
    images = make_imageset(n_labeled=21, n_unlabeled=30)  # 5 training images after val/test
    data = DataModule(images, make_split(images, SplitConfig(val=8, test=8)), CPU)
    assert (data.n_labeled, data.pool_size) == (5, 35)
    batches = list(data.labeled_batches(4, torch.Generator().manual_seed(0)))
    assert len(batches) == steps_per_epoch(35, 4) == 9  # as many steps as any stage-2 method
    for batch in batches:
        assert len(batch.index) == 4 and batch.labeled.all() and (batch.index < 5).all()
    seen = torch.cat([b.index for b in batches]).tolist()
    assert sorted(seen[:5]) == [0, 1, 2, 3, 4]  # back-to-back shuffles: each image once a lap


def test_each_parent_has_its_control_and_the_control_its_parents_loss():
    assert control_for("baseline") == "control" and control_for("atl") == "control_atl"
    assert control_for("triplet") is None
    for name, parent in (("control", "baseline"), ("control_atl", "atl")):
        cls = METHODS.get(name)
        assert cls.stage == 2 and cls.labeled_only and cls.unsupervised_terms == ()
        assert resolve(name, "tiny", "quick").parent.method == parent
    # under quick the ATL control's λ is its parent's (and its stage-2 methods')
    quick = resolve("control_atl", "tiny", "quick")
    assert quick.hparams.weight == quick.parent.hparams.weight == 0.05


def test_control_atl_loss_by_hand_on_labeled_images():
    torch.manual_seed(0)
    regressor = Regressor(Pixels(4))
    cls = METHODS.get("control_atl")
    method = cls(regressor, cls.Params(weight=0.5, margin=0.3))
    images = torch.rand(6, 1, 2, 2)
    targets = torch.tensor([0.1, 0.5, float("nan"), 0.9, 0.3, float("nan")])
    batch = Batch(images, targets, torch.isfinite(targets), torch.arange(6))
    ctx = FitContext(lambda x: x, lambda p: torch.empty(0), 6, 4, targets, 1, 1)
    torch.manual_seed(1)
    losses = method.training_step(batch, ctx)
    embedding, pred = regressor(images)
    known = torch.isfinite(targets)
    mse = ((pred[known] - targets[known]) ** 2).mean()
    torch.manual_seed(1)  # the same triplets, drawn among the four labeled images
    atl = batch_triplet_loss(embedding[known], targets[known], 0.3, adaptive=True)
    assert torch.allclose(losses["mse"], mse) and torch.allclose(losses["atl"], atl)
    assert torch.allclose(losses["loss"], mse + 0.5 * atl)


def test_a_control_fit_never_sees_an_unlabeled_image():
    images = make_imageset(n_labeled=30, n_unlabeled=20)
    data = DataModule(images, make_split(images, SplitConfig(val=8, test=8)), CPU)
    method = METHODS.get("control")(Regressor(Pixels(16 * 16)), None)
    seen: list[torch.Tensor] = []
    original = method.training_step

    def spy(batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        seen.append(batch.index.clone())
        return original(batch, ctx)

    method.training_step = spy  # type: ignore[method-assign]
    stage = resolve("control", "tiny", "smoke").stage2
    Trainer(CPU, show_progress=False).fit(
        method,
        data,
        stage,
        BatchAugment(AugmentConfig()),
        torch.Generator().manual_seed(0),
        select_initial=True,
    )
    assert len(seen) == stage.epochs * data.steps_per_epoch(stage.batch_size, True)
    assert all((index < data.n_labeled).all() for index in seen)
