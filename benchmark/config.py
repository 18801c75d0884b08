"""Configuration: frozen dataclasses, the presets, and ``--set key=value`` overrides.

Precedence, lowest first: dataclass defaults < preset < config file < ``--set``.
Keys are dotted paths into :class:`RunConfig` (``seed``, ``stage1.epochs``,
``augment.rotation_deg``, ``split.val``) or ``<method>.<field>`` for a method's
hyperparameters. An unknown key or a value of the wrong type is a
:class:`~bmdbench.errors.ConfigError` that lists the valid keys.

A preset here sets run-wide values only; what a preset gives a method's hyperparameters
the method declares itself (``Method.presets``), and :func:`bmdbench.spec.resolve`
applies it with the rest of the method's part.

Every setting declares the values it accepts next to its field
(``field(default=..., metadata=above(0))``, see :class:`Valid`). This is the bottom
layer: it knows no method. :func:`run_settings` applies and checks the run-wide part;
:func:`bmdbench.spec.resolve` adds the method's hyperparameters and its rules.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import tomllib

from bmdbench.errors import ConfigError


@dataclass(frozen=True)
class Valid:
    """The values a setting accepts, declared in its field's metadata (key ``"valid"``).

    ``accepts`` tests a value (``None`` of an optional setting is never tested);
    ``wanted`` completes "use ..." in the error; ``problem`` says what a rejected value is.
    """

    accepts: Callable[[Any], bool]
    wanted: Callable[[], str]
    problem: str = "is out of range"


@dataclass(frozen=True)
class Range:
    """A hyperparameter's search range for ``bmdbench tune`` (a method's ``search_space``)."""

    # the search (`bmdbench tune KIND`) that covers it: margin, lambda, ...; a new kind is a
    # new search
    kind: str
    low: float
    high: float
    log: bool = False  # sample on a log scale


def _valid(accepts: Callable[[Any], bool], wanted: str) -> dict[str, Valid]:
    def finite_and(v: Any) -> bool:  # ints need no test (and may exceed a float's range)
        return (isinstance(v, int) or math.isfinite(v)) and accepts(v)

    return {"valid": Valid(finite_and, lambda: wanted)}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def above(low: float) -> dict[str, Valid]:
    """A number > ``low``."""
    return _valid(lambda v: v > low, f"a value > {_num(low)}")


def at_least(low: float) -> dict[str, Valid]:
    """A number ≥ ``low``."""
    return _valid(lambda v: v >= low, f"a value ≥ {_num(low)}")


def between(low: float, high: float, open_: bool = False) -> dict[str, Valid]:
    """A number in [low, high], or in (low, high) with ``open_``."""
    if open_:
        return _valid(lambda v: low < v < high, f"a value in ({_num(low)}, {_num(high)})")
    return _valid(lambda v: low <= v <= high, f"a value in [{_num(low)}, {_num(high)}]")


def from_up_to(low: float, high: float) -> dict[str, Valid]:
    """A number in [low, high)."""
    return _valid(lambda v: low <= v < high, f"a value in [{_num(low)}, {_num(high)})")


def one_of(*names: str) -> dict[str, Valid]:
    """One of ``names``."""
    wanted = f"one of: {', '.join(names)}"
    valid = Valid(lambda v: v in names, lambda: wanted, "is not known")
    return {"valid": valid}


def count_or_fraction() -> dict[str, Valid]:
    """An image count (a whole number ≥ 1) or a fraction in (0, 1)."""
    return _valid(
        lambda v: 0 < v < 1 or (v >= 1 and (isinstance(v, int) or v.is_integer())),
        "a count (a whole number ≥ 1) or a fraction in (0, 1)",
    )


SEED = between(0, 2**32 - 1)  # numpy and torch both take seeds in this range
DEVICE = {
    "valid": Valid(
        lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
        lambda: "auto, cpu, cuda or cuda:N",
        "is not known",
    )
}


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the embedded synthetic hip-phantom dataset (see ``bmdbench.data.synthetic``)."""

    n_labeled: int = field(default=1090, metadata=at_least(1))  # labeled images (DEXA BMD)
    # distinct patients among the labeled images (some have several); at most n_labeled
    n_patients: int = field(default=819, metadata=at_least(1))
    # unlabeled images, one patient each, true BMD kept for diagnostics
    n_unlabeled: int = field(default=8219, metadata=at_least(0))
    # generator seed: fixes the dataset, independent of the training seed
    seed: int = field(default=0, metadata=SEED)
    # relative SD of the DEXA measurement error on labels
    label_noise: float = field(default=0.015, metadata=at_least(0))


@dataclass(frozen=True)
class SplitConfig:
    """How labeled images are split, grouped by patient.

    ``val`` and ``test`` are image counts when >= 1 and fractions of the labeled
    images when < 1. ``train`` is the label budget: ``None`` keeps every remaining
    labeled image for training; a count (or a fraction of the remaining images)
    keeps that many and turns the rest into unlabeled images whose targets are
    hidden from methods but kept for diagnostics. The training images must fill at
    least one stage-1 batch (checked where the split is made).
    """

    # label budget (None: all remaining labeled images)
    train: float | None = field(default=None, metadata=count_or_fraction())
    # validation images: count (>=1) or fraction (<1)
    val: float = field(default=150 / 1090, metadata=count_or_fraction())
    # test images: count (>=1) or fraction (<1)
    test: float = field(default=500 / 1090, metadata=count_or_fraction())
    # split seed: fixed, so every method and training seed sees the same test set
    seed: int = field(default=0, metadata=SEED)
    use_column: bool = True  # obey the manifest's `split` column when it has one
    # draw the labeled training subset and validation split anew for each training seed;
    # the test set stays fixed
    redraw: bool = False
    # unlabeled images of validation or test patients, or with the content of a validation
    # or test image: False, an error naming them; True, dropped from the pool with a warning
    allow_overlap: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training batches, per-sample parameters, on the device."""

    # affine: rotation, shift and scale, resampled bilinearly (the paper's, at 512 px);
    # shift: whole-pixel shifts only, no resampling (README, "The quick preset": at 32 px
    # bilinear resampling blurs the texture that carries the target)
    geometry: str = field(default="affine", metadata=one_of("affine", "shift"))

    # rotation drawn from [-r, r] degrees
    rotation_deg: float = field(default=10.0, metadata=between(0, 180))
    # shift drawn from [-t, t] of the image size, per axis (geometry=shift: whole pixels)
    translate: float = field(default=0.05, metadata=between(0, 1))
    # isotropic scale drawn from [scale_min, scale_max]
    scale_min: float = field(default=0.9, metadata=above(0))
    scale_max: float = field(default=1.1, metadata=above(0))
    # additive brightness drawn from [-b, b] (images in [0, 1])
    brightness: float = field(default=0.1, metadata=between(0, 1))
    # contrast factor drawn from [1 - c, 1 + c]
    contrast: float = field(default=0.1, metadata=between(0, 1))
    hflip: float = field(default=0.5, metadata=between(0, 1))  # probability of a horizontal flip


@dataclass(frozen=True)
class StageConfig:
    """Optimiser, schedule and batches of one training stage (Adam)."""

    epochs: int = field(default=200, metadata=at_least(1))  # epochs; validation after each one
    # learning rate (the peak, under the cosine schedule)
    lr: float = field(default=1e-4, metadata=above(0))
    # step: lr, then lr_after_drop from lr_drop_epoch; cosine: per step to 0
    schedule: str = field(default="step", metadata=one_of("step", "cosine"))
    # step schedule: from this epoch on (0-based) use lr_after_drop; None: constant
    lr_drop_epoch: int | None = field(default=100, metadata=at_least(0))
    lr_after_drop: float = field(default=1e-5, metadata=above(0))
    # fraction of the stage's steps over which lr rises linearly from 0
    warmup: float = field(default=0.0, metadata=between(0, 1))
    weight_decay: float = field(default=4e-4, metadata=at_least(0))  # Adam's (L2) weight decay
    # images per batch (batch norm needs 2; a method may need more, see Method.min_batch_size)
    batch_size: int = field(default=16, metadata=at_least(2))
    # stage 2, two-stream methods: labeled images in every batch (< batch_size)
    labeled_per_batch: int = field(default=4, metadata=at_least(1))


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run, except the method's hyperparameters.

    ``hparams`` holds the method's own frozen dataclass; ``parent`` the resolved
    config of the stage-1 run a stage-2 method fine-tunes from.
    """

    method: str = ""  # registered method name (set by `resolve`)
    backbone: str = "vgg11_bn_se"  # registered backbone name or any timm model name
    preset: str = "quick"  # the preset these values started from
    data: str = "synthetic"  # "synthetic" or a manifest CSV path
    unlabeled: str | None = None  # extra unlabeled images: a manifest CSV or a folder
    seed: int = field(default=0, metadata=SEED)  # training seed: init, batch order, augmentation
    device: str = field(default="auto", metadata=DEVICE)  # auto | cpu | cuda | cuda:N
    pretrained: str | None = None  # local backbone weights (timm or torchvision format)
    # none: losses see raw targets (the paper); zscore: standardised
    target_norm: str = field(default="none", metadata=one_of("none", "zscore"))
    # auto: bf16 autocast on CUDA, fp32 on CPU; bf16: autocast on any device; off
    amp: str = field(default="auto", metadata=one_of("auto", "bf16", "off"))
    # torch.compile the networks (Trainer.prepare); off until measured to help (README, Speed)
    compile: bool = False
    # before every validation, recompute batch-norm statistics over the labeled training
    # images with the current weights (Trainer.refresh_batch_norm)
    precise_bn: bool = True
    image_size: int = field(default=64, metadata=between(16, 4096))  # ROI side, pixels
    synth: SynthConfig = field(default_factory=SynthConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(epochs=100, lr=1e-5, lr_drop_epoch=None)
    )
    hparams: Any = None  # the method's hyperparameter dataclass (set by `resolve`)
    parent: RunConfig | None = None  # stage-1 config for stage-2 methods (set by `resolve`)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "image_size": 512,
        "synth": {"n_labeled": 1090, "n_patients": 819, "n_unlabeled": 8219},
        "stage1": {"epochs": 200, "lr_drop_epoch": 100},
        "stage2": {"epochs": 100},
    },
    "quick": {
        # The paper's protocol compressed for 2 CPU cores, keeping its ratios (README, "The
        # quick preset"): unlabeled pool 10× the labeled training set (paper 19×); stage 1
        # trained until validation R levels off; stage 2's budget Σ lr·steps 1.75× stage 1's,
        # as in the paper (tests/engine/test_protocol.py computes both ratios from this
        # preset). 32 px buys stage 2 the steps that keep its peak rate below stage 1's.
        "image_size": 32,
        "target_norm": "zscore",
        # whole-pixel shifts and flips instead of the affine warp (docs/protocol.md, trial
        # S), with the paper's brightness and contrast jitter; no weight decay in stage 1.
        # Chosen on validation R (trial U′, 3 seeds): jitter beat none on the phantoms
        # (0.704 vs 0.681) and on RSNA bone age (0.527 vs 0.507); decay beside jitter lost
        # (0.699)
        "augment": {"geometry": "shift"},
        "synth": {"n_labeled": 440, "n_patients": 340, "n_unlabeled": 1000},
        "split": {"val": 90, "test": 250},
        "stage1": {"epochs": 20, "lr": 3e-4, "schedule": "cosine", "weight_decay": 0.0},
        "stage2": {"epochs": 4, "lr": 2.67e-4, "schedule": "cosine", "warmup": 0.1},
        # the methods' own values under quick: declared by each method (Method.presets)
    },
    "smoke": {
        "image_size": 32,
        "synth": {"n_labeled": 48, "n_patients": 40, "n_unlabeled": 24},
        "split": {"val": 12, "test": 12},
        "stage1": {"epochs": 2, "lr_drop_epoch": None, "batch_size": 8},
        "stage2": {"epochs": 1, "batch_size": 8},
    },
}

PRESET_HELP = {
    "paper": "the paper's protocol at full size: 512 px, 200 + 100 epochs (needs a GPU)",
    "quick": "the same protocol compressed for a CPU by its ratios: 32 px, fewer images and epochs",
    "smoke": "every code path in seconds: 32 px, a few dozen images, 2 + 1 epochs",
}


def default_preset() -> str:
    """``paper`` where a CUDA GPU is available, ``quick`` elsewhere.

    Asked of the CUDA driver itself (``cuInit``, ``cuDeviceGetCount``), so that the CLI
    can resolve and check a run before it imports torch; torch then finds the same GPUs.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "quick"
    count = ctypes.c_int(0)
    ok = driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0
    return "paper" if ok and count.value > 0 else "quick"


def run_settings(
    method: str,
    backbone: str,
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    **top: Any,
) -> tuple[RunConfig, dict[str, Any]]:
    """The first half of resolving a run (:func:`bmdbench.spec.resolve`), without the method
    registry: the preset, then ``overrides`` (file, then ``--set``) on the run-wide
    settings, every range and rule between them checked.

    Returns that config (its ``hparams`` and ``parent`` not yet set) and the overrides left
    for the methods (keys that do not start with a run-wide setting: ``<method>.<field>``).
    ``top`` sets top-level fields given by their own CLI options (data, seed, device, ...).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", f"use one of: {', '.join(PRESETS)}")
    overrides = {**flatten(PRESETS[preset]), **dict(overrides or {})}
    run_wide = {k.split(".", 1)[0] for k in valid_keys(RunConfig())}
    run_keys = {k: v for k, v in overrides.items() if k.split(".", 1)[0] in run_wide}
    method_keys = {k: v for k, v in overrides.items() if k not in run_keys}
    cfg = replace(RunConfig(), preset=preset, method=method, backbone=backbone, **top)
    cfg = apply(cfg, run_keys)
    check_fields(cfg, "")
    if cfg.augment.scale_min > cfg.augment.scale_max:
        raise ConfigError(
            f"augment.scale_min={cfg.augment.scale_min} is above "
            f"augment.scale_max={cfg.augment.scale_max}",
            "use scale_min ≤ scale_max",
        )
    if cfg.synth.n_patients > cfg.synth.n_labeled:
        raise ConfigError(
            f"synth.n_patients={cfg.synth.n_patients} is more than "
            f"synth.n_labeled={cfg.synth.n_labeled}",
            "use at most one patient per labeled image",
        )
    return cfg, method_keys


OPTIONS = {"split.train": "--n-labeled", "split.val": "--n-val", "split.test": "--n-test"}
"""Settings that have a command-line option of their own, named in errors beside the key."""


def check_fields(obj: Any, prefix: str) -> None:
    """Check every declared range (:class:`Valid`) of a config dataclass and the dataclasses
    it nests (not ``hparams`` or ``parent``); the first problem is a :class:`ConfigError`
    naming the key (``prefix`` + field), the value and what is valid."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if is_dataclass(value) and f.name not in ("hparams", "parent"):
            check_fields(value, f"{key}.")
            continue
        valid: Valid | None = f.metadata.get("valid")
        if valid is None or value is None or valid.accepts(value):
            continue
        option = f" ({OPTIONS[key]})" if key in OPTIONS else ""
        raise ConfigError(f"{key}={value!r}{option} {valid.problem}", f"use {valid.wanted()}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of overrides (tables nest like dotted keys) into dotted keys."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist", "check the --config path") from None
    except OSError as exc:  # a folder, or a file that cannot be read
        raise ConfigError(
            f"cannot read config file {p}: {exc.strerror}", "give --config a readable TOML file"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not text", "give --config a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}", "fix its syntax") from None
    return flatten(data)


def parse_set(items: Sequence[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` → ``{"a.b": "1", "c": "x"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {item!r} is not key=value", "write it as --set stage1.lr=0.001"
            )
        out[key.strip()] = value.strip()
    return out


def valid_keys(obj: Any, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config dataclass (nested dataclasses expanded)."""
    keys: list[str] = []
    for f in fields(obj):
        if f.name in ("hparams", "parent", "method", "backbone", "preset"):
            continue
        value = getattr(obj, f.name)
        if is_dataclass(value):
            keys += valid_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def apply(obj: Any, flat: Mapping[str, Any], prefix: str = "") -> Any:
    """Return ``obj`` with the dotted keys of ``flat`` replaced, type-checked."""
    settable = valid_keys(obj)
    for key, value in flat.items():
        if key not in settable:
            raise ConfigError(
                f"unknown setting {prefix + key!r}",
                f"valid keys: {', '.join(prefix + k for k in settable)}",
            )
        obj = _replace_path(obj, key.split("."), value, prefix + key)
    return obj


def _replace_path(obj: Any, path: list[str], value: Any, full_key: str) -> Any:
    name = path[0]
    if len(path) > 1:
        return replace(obj, **{name: _replace_path(getattr(obj, name), path[1:], value, full_key)})
    hint = typing.get_type_hints(type(obj))[name]
    return replace(obj, **{name: _coerce(value, hint, full_key)})


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` (a string from the CLI, or a TOML/preset value) to ``hint``."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in options:
            return None
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce_one(value, option)
        except (TypeError, ValueError):
            continue
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{key}={value!r} is not a valid {names}", f"give {key} a {names} value")


def _coerce_one(value: Any, kind: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value) if not isinstance(value, str) else int(value, 10)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    raise TypeError(kind)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (``hparams`` and ``parent`` expanded)."""
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("hparams", "parent")}
    out = {k: _asdict(v) for k, v in out.items()}
    out["hparams"] = _asdict(cfg.hparams) if cfg.hparams is not None else {}
    out["parent"] = to_dict(cfg.parent) if cfg.parent is not None else None
    return out


def _asdict(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def stable_hash(data: Any) -> str:
    """SHA-256 of the canonical JSON of ``data``."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
