"""The Method contract and the regressor every method trains.

How the Trainer drives a method (the only loop; methods never call backward,
step an optimiser, set autocast or move tensors between devices)::

    method.on_stage_start(ctx)             # after stage-1 weights are loaded; ctx.val is set
    for epoch in range(epochs):
        method.on_epoch_start(ctx)         # ctx.val: validation metrics of the current weights
        for batch in epoch's batches:
            losses = method.training_step(batch, ctx)   # {"loss": total, part: value, ...}
            losses["loss"].backward(); optimiser.step()
            method.after_step(ctx)         # e.g. the mean teacher's EMA update
        method.on_epoch_end(ctx)           # e.g. temporal ensembling's ensemble update
        ctx.val = evaluate(method.predict on val); keep the best checkpoint by Pearson R
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bmdbench.config import Range, Valid
from bmdbench.data.module import Batch
from bmdbench.registry import Registry


class Regressor(nn.Module):
    """backbone → embedding (B, D) → Linear(D, 1) → prediction (B,)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.embed_dim), 1)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (embedding (B, D), prediction (B,)), both fp32, in the loss's target space.

        The backbone may run under autocast; the head always runs in fp32, so a prediction
        is not quantised to bf16's 8 bits (0.004 at a BMD of 0.75 g/cm²) and the losses,
        which see only these two tensors, are computed in fp32 too.
        """
        embedding = self.backbone(x).float()
        with torch.autocast(embedding.device.type, enabled=False):
            return embedding, self.head(embedding).squeeze(1)


RegressorFactory = Callable[[], Regressor]
"""``new_regressor()``: a fresh :class:`Regressor` of the run's backbone (:meth:`Method.new_regressor`)."""


def _no_pool_batch(index: torch.Tensor) -> Batch:
    raise TypeError(
        "this FitContext holds no training pool to draw images from: build it with "
        "pool_batch=... (Trainer.context does)"
    )


@dataclass
class FitContext:
    """What the Trainer tells a method while it trains (read-only for methods, except ``log``)."""

    augment: Callable[[torch.Tensor], torch.Tensor]  # a fresh random augmentation per call
    predict_pool: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
    # ^ runs a predictor (eval mode, no grad, no augmentation) over the whole training pool
    pool_size: int  # training-pool size; pool positions < n_labeled are labeled
    n_labeled: int
    pool_targets: torch.Tensor  # (pool_size,) loss-space targets, NaN for unlabeled images
    epochs: int
    steps_per_epoch: int
    epoch: int = 0  # current epoch, 0-based
    step: int = 0  # optimiser steps taken in this stage
    val: dict[str, float] = field(default_factory=dict)  # metrics of the current weights
    log: dict[str, float] = field(default_factory=dict)  # extra per-epoch values to log
    pool_batch: Callable[[torch.Tensor], Batch] = _no_pool_batch
    # ^ pool positions → those images, un-augmented, with their targets, for a method that draws
    # images of its own beside the Trainer's batches (RankUp's labeled images for its ranking pairs)

    @property
    def progress(self) -> float:
        """Fraction of the stage's optimiser steps done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.epochs * self.steps_per_epoch))


MARGIN = Range("margin", 0.05, 1.5)  # covers Table 3's margins 0.1–1.0
TRIPLET_WEIGHT = Range("lambda", 0.05, 2.0, log=True)
CONSISTENCY_WEIGHT = Range("consistency", 0.1, 10.0, log=True)

TRIPLET_PRESETS: dict[str, dict[str, Any]] = {"quick": {"weight": 0.05}}
"""The ``presets`` of a method whose loss has a triplet term weighted by ``weight`` (λ): λ
under ``quick``, chosen by measurement (README, "The quick preset"): in stage 1's 140 steps
the paper's 0.5 collapses the embedding (validation R 0.22–0.26 on 3 seeds, 0.41 at 0.15);
0.05 leaves it near the baseline's (0.68–0.70)."""


@dataclass(frozen=True)
class NoParams:
    """This method has no hyperparameters."""


def _stage1_names() -> list[str]:
    return [name for name in METHODS if METHODS.get(name).stage == 1]


STAGE1 = {
    "valid": Valid(
        lambda name: name in _stage1_names(),
        lambda: f"a stage-1 method: {', '.join(_stage1_names())}",
        "is not a stage-1 method",
    )
}
"""Metadata of a stage-2 method's ``stage1`` field: the method whose checkpoint it starts from
(asked of the registry when a value is checked, so plug-ins' stage-1 methods count too)."""


class Method(nn.Module):
    """A training objective around a :class:`Regressor`.

    Subclasses set ``Params`` (a frozen dataclass, one comment per field) and
    implement :meth:`training_step`. ``stage`` is 1 for supervised pre-training
    methods, 2 for methods that fine-tune a stage-1 checkpoint (their Params then
    carry ``stage1``, the method whose checkpoint they start from).
    ``two_stream``: the stage-2 batches of a method whose unlabeled images have no
    target hold ``stage2.labeled_per_batch`` labeled images each (consistency methods);
    otherwise labeled and pseudo-labeled images are shuffled together; ``labeled_only``:
    batches of labeled images alone, as many steps as any stage-2 method (the supervised
    controls, :mod:`bmdbench.methods.control`).
    ``unsupervised_terms`` names the returned loss parts that come from unlabeled
    images (before weighting): the contract test checks they alone give the
    student a gradient.

    What else is about a method is declared here too, so that adding one touches no other
    module: ``presets``, the values a preset gives its Params fields (applied when a run of
    that preset is resolved, above the defaults and below a config file and ``--set``);
    ``search_space``, its ranges for ``bmdbench tune``, whose kinds are the searches tune
    knows; ``tune_default``, the searches that tune it when no ``--method`` is given; and
    :meth:`raw_scale`, its triplet term on the raw target scale (Table 3).

    ``regressor`` is the run's network (stage-1 weights loaded for a stage-2 method);
    ``new_regressor`` builds further networks of the run's backbone for a method that
    trains several (see :meth:`new_regressor`). A subclass that overrides ``__init__``
    takes and passes on all three arguments.
    """

    Params: ClassVar[type] = NoParams
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # preset → Params field → its value there
    search_space: ClassVar[dict[str, Range]] = {}  # Params field → its search range
    tune_default: ClassVar[tuple[str, ...]] = ()  # kinds of `bmdbench tune` it is the default of
    stage: ClassVar[int] = 1
    two_stream: ClassVar[bool] = False  # stage 2: a fixed number of labeled images per batch
    labeled_only: ClassVar[bool] = False  # stage 2: batches of labeled images only (controls)
    unsupervised_terms: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, regressor: Regressor, params: Any, new_regressor: RegressorFactory | None = None
    ) -> None:
        super().__init__()
        self.regressor = regressor
        self.params = params
        self._new_regressor = new_regressor

    def new_regressor(self) -> Regressor:
        """A further regressor of the run's backbone, freshly initialised (random weights, or
        the run's ``--pretrained`` file; never the stage-1 checkpoint, which only
        ``self.regressor`` holds: copy that for it). A method that trains several networks
        (co-training, UCVME) calls this in ``__init__`` and assigns each network to an
        attribute, so that it is trained (:meth:`trainable_parameters`), moved to the
        device, compiled and checkpointed with the rest."""
        if self._new_regressor is None:
            raise TypeError(
                f"{type(self).__name__} builds further regressors: construct it with "
                "new_regressor=... (bmdbench.runner.build_method and "
                "bmdbench.testing.check_method pass one)"
            )
        return self._new_regressor()

    @classmethod
    def min_batch_size(cls, params: Any) -> tuple[int, str]:
        """The smallest training batch this method's loss is defined on with ``params``,
        and why (checked by :func:`bmdbench.spec.validate` before a run starts)."""
        return 2, "batch norm needs two images"

    @classmethod
    def raw_scale(cls, hparams: Mapping[str, Any], target_sd: float) -> tuple[float, float] | None:
        """The (λ, m) of this method's triplet term on raw targets that give the loss it had
        with ``hparams`` on z-scored targets of SD ``target_sd`` (Table 3's λ raw and m raw);
        None for a method without a triplet term."""
        return None

    def training_step(self, batch: Batch, ctx: FitContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction that is evaluated and selected on validation (B,)."""
        return self.regressor(x)[1]

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimiser steps: every parameter of the method that requires grad (the
        regressor's and those of every further network). A network that is not trained by
        gradients, as the mean teacher's teacher, is frozen with ``requires_grad_(False)``."""
        return (p for p in self.parameters() if p.requires_grad)

    def on_stage_start(self, ctx: FitContext) -> None:
        """Before the first epoch, after stage-1 weights are loaded."""

    def on_epoch_start(self, ctx: FitContext) -> None:
        """Before each epoch; ``ctx.val`` holds the current weights' validation metrics."""

    def after_step(self, ctx: FitContext) -> None:
        """After each optimiser step."""

    def on_epoch_end(self, ctx: FitContext) -> None:
        """After each epoch's last step, before validation."""

    def unlabeled_estimates(self, ctx: FitContext) -> torch.Tensor | None:
        """What this method currently uses as targets of the training pool (pool_size,),
        loss space, or None. The Trainer scores its unlabeled part against the truth."""
        return None

    def summary(self) -> dict[str, float]:
        """Method-specific numbers for the run record (e.g. pseudo-label refreshes)."""
        return {}


METHODS: Registry[type[Method]] = Registry(
    "method",
    "bmdbench.methods",  # plug-ins: NAME = "module:MethodSubclass"
    lambda obj: isinstance(obj, type) and issubclass(obj, Method),
    "a Method subclass",
)
