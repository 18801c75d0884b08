"""The contract every registered method must meet, run by
:func:`bmdbench.testing.check_method`, and the checker's own tests: it catches what it is
there to catch."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from bmdbench.backbones import build_backbone
from bmdbench.data.module import Batch
from bmdbench.methods import METHODS, FitContext, Method, Regressor
from bmdbench.methods.consistency_regularisation import ConsistencyParams, MeanTeacher
from bmdbench.methods.losses import masked_mse
from bmdbench.runner import build_method
from bmdbench.spec import resolve
from bmdbench.testing import check_method

BUILT_IN = [name for name in METHODS if METHODS.get(name).__module__.startswith("bmdbench.")]


def test_every_method_is_tested():
    # every Method class of the package's modules that no other one extends is registered (a
    # forgotten decorator), so the parametrised check below covers it; the paper's are there
    import inspect
    import pkgutil

    import bmdbench.methods as package

    defined = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"bmdbench.methods.{info.name}")
        defined |= {
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, Method) and cls is not Method and cls.__module__ == module.__name__
        }
    defined = {cls for cls in defined if not cls.__subclasses__()}  # not a shared base class
    registered = {METHODS.get(name) for name in BUILT_IN}
    assert defined <= registered, f"not registered: {defined - registered}"
    assert set(BUILT_IN) >= {
        "baseline", "triplet", "atl", "pi_model", "temporal_ensembling", "mean_teacher",
        "pseudo_label", "pseudo_label_atl", "proposed", "proposed_no_consistency",
    }  # fmt: skip


# Parameters a method is checked with where its defaults train nothing in the checker's one
# step: RankUp's confidence threshold τ = 0.95 lets no pair of a fresh ranking head through
# (FixMatch before its classifier is confident), so its unsupervised term has no gradient yet.
CONTRACT_PARAMS = {"rankup": {"threshold": 0.6}}


@pytest.mark.parametrize("name", BUILT_IN)
def test_method_meets_the_contract(name):
    cls = METHODS.get(name)
    check_method(cls, cls.Params(**CONTRACT_PARAMS.get(name, {})))


class CoTraining(Method):
    """Two co-trained regressors: MSE for each, consistency between their predictions."""

    Params = ConsistencyParams
    stage = 2
    unsupervised_terms = ("consistency",)

    def __init__(self, regressor: Regressor, params: ConsistencyParams, new_regressor=None):
        super().__init__(regressor, params, new_regressor)
        self.second = self.new_regressor()

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, pred_first = self.regressor(ctx.augment(batch.images))
        _, pred_second = self.second(ctx.augment(batch.images))
        mse = masked_mse(pred_first, batch.targets, batch.labeled) + masked_mse(
            pred_second, batch.targets, batch.labeled
        )
        consistency = (pred_first - pred_second).pow(2).mean()
        return {"loss": mse + consistency, "mse": mse, "consistency": consistency}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.regressor(x)[1] + self.second(x)[1]) / 2


def test_a_method_with_two_networks_meets_the_contract():
    check_method(CoTraining)


def test_build_method_gives_a_method_further_networks_of_the_runs_backbone(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "co_training", CoTraining)
    method = build_method(resolve("co_training", "tiny", "smoke"))
    assert isinstance(method.second, Regressor)
    assert type(method.second.backbone) is type(method.regressor.backbone)
    assert not torch.equal(method.second.head.weight, method.regressor.head.weight)  # fresh
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable == {id(p) for p in method.parameters()}


def test_a_method_without_a_factory_says_how_to_build_one():
    with pytest.raises(TypeError, match="new_regressor="):
        CoTraining(Regressor(build_backbone("tiny")), ConsistencyParams())


class ForgetsTheSecondNetwork(CoTraining):
    """Co-training whose optimiser would step the first regressor only."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.regressor.parameters()


def test_check_method_catches_a_network_left_out_of_the_optimiser():
    with pytest.raises(AssertionError, match=r"left out of trainable_parameters\(\).*second\."):
        check_method(ForgetsTheSecondNetwork)


class TeacherOnBothSides(MeanTeacher):
    """USB's Mean Teacher bug: the consistency term's both sides come from the teacher."""

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, student = self.regressor(ctx.augment(batch.images))
        with torch.no_grad():
            _, teacher_view1 = self.teacher(ctx.augment(batch.images))
            _, teacher_view2 = self.teacher(ctx.augment(batch.images))
        mse = masked_mse(student, batch.targets, batch.labeled)
        consistency = (teacher_view1 - teacher_view2).pow(2).mean()
        return {"loss": mse + consistency, "mse": mse, "consistency": consistency}


def test_check_method_catches_an_unsupervised_term_that_trains_nothing():
    with pytest.raises(AssertionError, match="alone give the trainable parameters no gradient"):
        check_method(TeacherOnBothSides)


class DeadSecondNetwork(CoTraining):
    """Co-training whose second network's prediction enters the loss multiplied by zero."""

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        _, pred = self.regressor(ctx.augment(batch.images))
        _, pred_second = self.second(ctx.augment(batch.images))
        mse = masked_mse(pred, batch.targets, batch.labeled)
        consistency = (pred - 0.0 * pred_second).pow(2).mean()
        return {"loss": mse + consistency, "mse": mse, "consistency": consistency}


def test_check_method_catches_a_network_whose_gradient_is_zero():
    with pytest.raises(AssertionError, match=r"gradient is zero for \['second\."):
        check_method(DeadSecondNetwork)


def test_check_method_catches_a_trainer_that_peeks_at_test(monkeypatch):
    """A loop that scores test after every epoch (and could select on it) is caught."""
    from bmdbench.trainer import Trainer

    evaluate = Trainer.evaluate

    def peeking(self, method, data, split):
        if split == "val":
            evaluate(self, method, data, "test")
        return evaluate(self, method, data, split)

    monkeypatch.setattr(Trainer, "evaluate", peeking)
    with pytest.raises(AssertionError, match="test split was read before training was over"):
        check_method(METHODS.get("baseline"))
