"""The contract every method meets, exported for method authors (as scikit-learn's
``check_estimator``), and the tiny dataset it trains on.

``check_method(cls)`` is what ``tests/methods/test_contract.py`` runs over every registered
method (one contract for all of them, so that no method can skip a check); a plug-in package
calls it in its own tests. It needs no
pytest fixture and no registration: it builds the method on the ``tiny`` backbone over
:func:`make_imageset`'s 56 images of 16 px and trains on the CPU, in seconds.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from bmdbench.backbones import build_backbone
from bmdbench.config import PRESETS, AugmentConfig, SplitConfig, StageConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.imageset import ImageSet
from bmdbench.data.module import DataModule
from bmdbench.data.splits import make_split
from bmdbench.hooks import FitState, Hook
from bmdbench.methods import Method, Regressor
from bmdbench.trainer import FitResult, Trainer, seed_everything

__all__ = ["check_method", "make_imageset"]

STAGE = StageConfig(epochs=1, lr=1e-3, lr_drop_epoch=None, batch_size=8)
"""The stage :func:`check_method` trains: one epoch of batches of 8 (4 labeled in stage 2)."""

CPU = torch.device("cpu")


def make_imageset(
    n_labeled: int = 40, n_unlabeled: int = 16, size: int = 16, seed: int = 0
) -> ImageSet:
    """Bright squares whose side grows with the target (0.4–1.1 g/cm²), on noise: a target
    learnable from the pixels. Images ``n_labeled`` and on are unlabeled (their truth is
    kept for diagnostics)."""
    rng = np.random.default_rng(seed)
    n = n_labeled + n_unlabeled
    truth = rng.uniform(0.4, 1.1, n)
    images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
    for i, value in enumerate(truth):
        side = int(2 + value * (size - 4) / 1.1)
        images[i, :side, :side] += 150
    targets = truth.copy()
    targets[n_labeled:] = np.nan
    split = np.array([""] * n_labeled + ["unlabeled"] * n_unlabeled)
    return ImageSet(
        images=images,
        targets=targets,
        truth=truth,
        patient_ids=np.array([f"p{i}" for i in range(n)]),
        ids=np.array([f"img{i}" for i in range(n)]),
        given_split=split,
        source="test",
        unit="g/cm²",
        fingerprint=f"test-{seed}-{n}-{size}",
    )


def check_method(cls: type[Method], params: Any = None) -> None:
    """Check that ``cls`` meets the Method contract; raise :class:`AssertionError` naming the
    method and the rule it breaks.

    ``params``: an instance of ``cls.Params`` (default: its defaults). The rules:

    - ``Params`` is a frozen dataclass whose every field has a default, ``search_space``
      names its fields, ``presets`` known presets and its fields, ``stage`` is 1 or 2 and a
      stage-2 method's Params carry ``stage1``;
      the class has a docstring (``bmdbench list methods`` shows its first line);
    - ``trainable_parameters()`` yields exactly the method's parameters that require grad
      (a further network left out would never be stepped);
    - ``training_step`` returns finite scalar losses, ``"loss"`` among them, and its
      backward gives every trainable parameter a finite gradient, none of them all zero;
    - the losses named in ``unsupervised_terms`` (a stage-2 method must name some, a
      labeled-only control none) alone
      give the trainable parameters a non-zero gradient (a consistency term whose both
      sides come from a no-grad teacher trains nothing: USB's Mean Teacher bug);
    - two fits from the same seed give the same numbers;
    - no fit reads the test split's images or targets before training is over: checkpoint
      selection, pseudo-label refreshes and every hook see validation only;
    - a fit's checkpoint (``torch.save`` of its state dict) loads with ``weights_only=True``
      into a fresh method, which then predicts what the fitted one did.
    """
    params, stage = _check_declarations(cls, params)
    images = make_imageset()
    _check_gradients(cls, params, stage, images)
    first, data = _fit(cls, params, stage, images)
    second, _ = _fit(cls, params, stage, images)
    _require(
        _numbers(first) == _numbers(second),
        cls,
        "two fits from the same seed give different numbers",
    )
    _require(
        all(math.isfinite(v) for k, v in first.history[-1].items() if k.startswith("loss_")),
        cls,
        f"a fit's epoch losses are not finite: {first.history[-1]}",
    )
    buffer = io.BytesIO()
    torch.save(first.state_dict, buffer)
    buffer.seek(0)
    fresh = _build(cls, params)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    _, predictions = Trainer(CPU, show_progress=False).evaluate(fresh, data, "val")
    _require(
        np.array_equal(predictions, first.predictions["val"]),
        cls,
        "a fresh method loaded from the fit's checkpoint predicts differently",
    )


def _require(condition: object, cls: type[Method], broken: str) -> None:
    if not condition:
        raise AssertionError(f"{cls.__module__}.{cls.__qualname__}: {broken}")


def _numbers(fit: FitResult) -> str:
    """A fit's metrics and epoch records without their timings, as text (so that NaN
    equals NaN, and floats are compared to the last bit)."""
    history = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in fit.history]
    return repr((fit.val, fit.test, history))


def _check_declarations(cls: type[Method], params: Any) -> tuple[Any, StageConfig]:
    """The class-level contract; returns the Params instance to check with and the stage
    to train (:data:`STAGE`, with batches as large as the method needs)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise AssertionError(f"{cls!r} is not a Method subclass")
    _require((cls.__doc__ or "").strip(), cls, "has no docstring (its first line describes it)")
    spec = cls.Params
    _require(
        dataclasses.is_dataclass(spec) and spec.__dataclass_params__.frozen,  # type: ignore[attr-defined]
        cls,
        f"Params ({spec.__name__}) is not a frozen dataclass",
    )
    names = [f.name for f in dataclasses.fields(spec)]
    no_default = [
        f.name
        for f in dataclasses.fields(spec)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    _require(not no_default, cls, f"Params fields without a default: {', '.join(no_default)}")
    unknown = sorted(set(cls.search_space) - set(names))
    _require(not unknown, cls, f"search_space names no Params field: {', '.join(unknown)}")
    for preset, values in cls.presets.items():
        _require(preset in PRESETS, cls, f"presets names {preset!r}, not one of {list(PRESETS)}")
        unknown = sorted(set(values) - set(names))
        _require(not unknown, cls, f"presets[{preset!r}] names no Params field: {unknown}")
    _require(cls.stage in (1, 2), cls, f"stage is {cls.stage!r}, not 1 or 2")
    if cls.stage == 2:
        _require("stage1" in names, cls, "a stage-2 method's Params need a stage1 field")
        if cls.labeled_only:
            _require(
                not cls.unsupervised_terms,
                cls,
                "a labeled-only stage-2 method (a control) sees no unlabeled image: it has no "
                "unsupervised_terms",
            )
        else:
            _require(
                cls.unsupervised_terms,
                cls,
                "a stage-2 method learns from unlabeled images: name the loss parts that come "
                "from them in unsupervised_terms",
            )
    params = spec() if params is None else params
    _require(isinstance(params, spec), cls, f"params {params!r} is not a {spec.__name__}")
    size, why = cls.min_batch_size(params)
    _require(
        isinstance(size, int) and 2 <= size <= 24 and isinstance(why, str),
        cls,
        f"min_batch_size gives {(size, why)!r}, not (an int from 2 to 24, a reason): "
        "check_method trains on 24 labeled images",
    )
    return params, dataclasses.replace(STAGE, batch_size=max(STAGE.batch_size, size))


def _tiny_regressor() -> Regressor:
    return Regressor(build_backbone("tiny"))


def _build(cls: type[Method], params: Any) -> Method:
    """The method on the tiny backbone, seeded, as :func:`bmdbench.runner.build_method`
    builds it (random weights instead of a stage-1 checkpoint)."""
    seed_everything(0)
    return cls(_tiny_regressor(), params, new_regressor=_tiny_regressor)


def _data(images: ImageSet) -> _WatchedTest:
    """24 labeled training images and 16 unlabeled ones; 8 for validation, 8 for test."""
    data = _WatchedTest(images, make_split(images, SplitConfig(val=8, test=8)), CPU)
    data.watch(_TrainingOver())
    return data


def _check_gradients(cls: type[Method], params: Any, stage: StageConfig, images: ImageSet) -> None:
    method, data = _build(cls, params), _data(images)
    trainer = Trainer(CPU, show_progress=False)
    named = dict(method.named_parameters())
    trainable = list(method.trainable_parameters())
    trainable_ids = {id(p) for p in trainable}
    _require(trainable, cls, "trainable_parameters() is empty")
    _require(
        trainable_ids <= {id(p) for p in named.values()},
        cls,
        "trainable_parameters() yields parameters that are not the method's: assign every "
        "network to an attribute",
    )
    _require(
        all(p.requires_grad for p in trainable),
        cls,
        "trainable_parameters() yields parameters that do not require grad",
    )
    left_out = [n for n, p in named.items() if p.requires_grad and id(p) not in trainable_ids]
    _require(
        not left_out,
        cls,
        f"parameters that require grad are left out of trainable_parameters(): {left_out[:3]} "
        "(the optimiser would never step them; freeze them with requires_grad_(False))",
    )

    ctx = trainer.context(method, data, stage, BatchAugment(AugmentConfig()))
    ctx.val, _ = trainer.evaluate(method, data, "val")
    ctx.val["pearson_r"] = 0.5  # risen from none: self-training refreshes its pseudo labels
    method.on_stage_start(ctx)
    method.on_epoch_start(ctx)
    method.train()
    batch = next(data.train_batches(64, cls.stage == 2, torch.Generator().manual_seed(0)))
    method.training_step(batch, ctx)
    method.on_epoch_end(ctx)  # a target for temporal ensembling: one ensemble update

    losses = method.training_step(batch, ctx)
    _require("loss" in losses, cls, f"training_step returns no 'loss' (only {list(losses)})")
    not_scalar = [k for k, v in losses.items() if not (torch.is_tensor(v) and v.dim() == 0)]
    _require(not not_scalar, cls, f"losses that are not scalar tensors: {not_scalar}")
    _require(
        all(torch.isfinite(v) for v in losses.values()),
        cls,
        f"losses are not finite: { {k: v.detach().item() for k, v in losses.items()} }",
    )
    method.zero_grad(set_to_none=True)
    losses["loss"].backward()
    no_grad = [n for n, p in named.items() if id(p) in trainable_ids and p.grad is None]
    _require(not no_grad, cls, f"the loss gives no gradient to {no_grad[:3]}")
    not_finite = [n for n, p in named.items() if p.grad is not None and not p.grad.isfinite().all()]
    _require(not not_finite, cls, f"gradients are not finite for {not_finite[:3]}")
    zero = [n for n, p in named.items() if p.grad is not None and not p.grad.any()]
    _require(
        not zero,
        cls,
        f"the loss's gradient is zero for {zero[:3]} (a head or network the loss never reaches)",
    )

    if cls.unsupervised_terms:
        method.zero_grad(set_to_none=True)
        losses = method.training_step(batch, ctx)
        missing = [t for t in cls.unsupervised_terms if t not in losses]
        _require(not missing, cls, f"unsupervised_terms {missing} are not among its losses")
        unsupervised = torch.stack([losses[t] for t in cls.unsupervised_terms]).sum()
        if unsupervised.requires_grad:  # no graph at all: no gradient either
            unsupervised.backward()
        gradient = sum(float(p.grad.abs().sum()) for p in trainable if p.grad is not None)
        _require(
            gradient > 0,
            cls,
            f"the unsupervised terms {list(cls.unsupervised_terms)} alone give the trainable "
            "parameters no gradient",
        )


class _TrainingOver(Hook):
    """Marks the end of training: its ``after_stage`` fires before the final scoring."""

    over = False

    def after_stage(self, state: FitState) -> None:
        self.over = True


class _WatchedTest(DataModule):
    """A DataModule that records, for each read of the test split's images or targets,
    whether training was over at that moment."""

    def watch(self, clock: _TrainingOver) -> None:
        self.clock = clock
        self.test_reads: list[bool] = []

    def eval_chunks(self, split: str, chunk: int = 256) -> Iterator[torch.Tensor]:
        if split == "test":
            self.test_reads.append(self.clock.over)
        return super().eval_chunks(split, chunk)

    def eval_targets(self, split: str) -> np.ndarray:
        if split == "test":
            self.test_reads.append(self.clock.over)
        return super().eval_targets(split)


def _fit(
    cls: type[Method], params: Any, stage: StageConfig, images: ImageSet
) -> tuple[FitResult, DataModule]:
    """One seeded epoch of ``cls`` through the Trainer, which must not read the test split
    before training is over (selection, refreshes and hooks see validation only)."""
    method, data = _build(cls, params), _data(images)
    clock = _TrainingOver()
    data.watch(clock)
    generator = seed_everything(3)
    fit = Trainer(CPU, show_progress=False).fit(
        method, data, stage, BatchAugment(AugmentConfig()), generator, hooks=[clock]
    )
    _require(
        data.test_reads and all(data.test_reads),
        cls,
        "the test split was read before training was over (it is scored once, at the end)",
    )
    return fit, data
