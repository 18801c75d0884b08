"""What to run: a :class:`RunSpec`, resolved into its config, its stage-1 parent and its keys.

``bmdbench run``, grids, searches and tables all describe a run by a RunSpec: the method,
backbone, preset, data, seed, device and the dotted settings a user gave (config file,
``--n-*`` options, ``--set``, a search's values). The spec resolves them in one place
(:func:`resolve`), and answers "is this the same run?" by the one rule of
:mod:`bmdbench.identity`.

Importing this module imports no method, and so neither torch: resolving a spec checks
the preset and the run-wide settings first (:func:`bmdbench.config.run_settings`), and
imports the registries (:mod:`bmdbench.methods`, :mod:`bmdbench.backbones`, which import
torch) only for the names and the methods' own settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from bmdbench import identity
from bmdbench.config import RunConfig, apply, check_fields, run_settings, to_dict, valid_keys
from bmdbench.errors import ConfigError

if TYPE_CHECKING:
    from bmdbench.data.imageset import ImageSet
    from bmdbench.data.splits import Split

Setting = tuple[str, Any]


@dataclass(frozen=True)
class RunSpec:
    """One run as a user asks for it; hashable, and written to JSON as it is.

    ``settings``: dotted overrides (``("atl.margin", "0.3")``, ``("split.train", 100.0)``),
    sorted by key; values as given (strings from the command line, numbers from TOML).
    Build one with :meth:`of`, which sorts them.
    """

    method: str
    backbone: str
    preset: str
    data: str = "synthetic"
    unlabeled: str | None = None
    seed: int = 0
    device: str = "auto"
    settings: tuple[Setting, ...] = ()

    @classmethod
    def of(
        cls,
        method: str,
        backbone: str,
        preset: str,
        settings: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> RunSpec:
        return cls(
            method, backbone, preset, settings=tuple(sorted((settings or {}).items())), **fields
        )

    @cached_property
    def config(self) -> RunConfig:
        """The resolved config (:func:`resolve`); a mistake raises :class:`ConfigError`."""
        return resolve(self.method, self.backbone, self.preset, dict(self.settings), **self._top)

    @property
    def _top(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "unlabeled": self.unlabeled,
            "seed": self.seed,
            "device": self.device,
        }

    def check_inputs(self) -> None:
        """Check what the run needs before the engine is loaded, cheapest first, so that a
        mistake is told as soon as it can be: the run-wide settings and the rows of the
        data's manifests, without torch (:func:`bmdbench.config.run_settings`,
        :func:`bmdbench.data.sources.check_sources`); then the names and the methods'
        settings, from the registries, before any image is opened (:attr:`config`); then
        the images, the split and the label budget. The images stay decoded for the run
        (:func:`bmdbench.data.sources.load_images`)."""
        from bmdbench.data import sources

        cfg, _ = run_settings(
            self.method, self.backbone, self.preset, dict(self.settings), **self._top
        )
        sources.check_sources(cfg)
        sources.load_inputs(self.config)

    @property
    def stage(self) -> int:
        return 1 if self.config.parent is None else 2

    def parent(self) -> RunSpec | None:
        """The stage-1 run a stage-2 spec fine-tunes from (the method its ``stage1`` names)."""
        parent = self.config.parent
        return None if parent is None else self.but(method=parent.method)

    def but(self, **changes: Any) -> RunSpec:
        """This spec with ``changes`` (method, backbone, seed, ``settings`` as a mapping added
        to the current ones), keeping only the settings that concern its method: run-wide
        ones, its own and its stage-1 parent's (so that one grid-wide ``--set
        proposed.x=...`` does not split the stage-1 cells the grid's methods share)."""
        added = dict(changes.pop("settings", {}))
        spec = replace(self, settings=tuple(sorted({**dict(self.settings), **added}.items())))
        spec = replace(spec, **changes)
        from bmdbench.methods import METHODS  # not at the top: see the module's docstring

        own = {spec.method} | ({p.method} if (p := spec.config.parent) else set())
        others = set(METHODS) - own
        kept = tuple((k, v) for k, v in spec.settings if k.split(".", 1)[0] not in others)
        return replace(spec, settings=kept)

    @cached_property
    def key(self) -> str:
        """One run of a grid or a search (:func:`bmdbench.identity.run_key`)."""
        return identity.run_key(to_dict(self.config))

    @cached_property
    def signature(self) -> str:
        """The table cell this run belongs to (:func:`bmdbench.identity.signature`)."""
        return identity.signature(to_dict(self.config))

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.method} · {self.backbone} · seed {self.seed}" + (
            f" · {extra}" if extra else ""
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        fields = json.loads(text)
        return cls(**{**fields, "settings": tuple((k, v) for k, v in fields["settings"])})


def config_hash(cfg: RunConfig, images: ImageSet, split: Split) -> str:
    """A run directory's hash: the config's identity and the data the run read
    (:func:`bmdbench.identity.config_hash`). A stage-1 run reads only the labeled images, so
    its hash covers their split and pixels, and every stage-2 method can reuse it."""
    import hashlib

    import numpy as np

    if cfg.parent is None:
        labeled = np.concatenate([split.train, split.val, split.test])
        digest = hashlib.sha256(np.ascontiguousarray(images.images[labeled]).tobytes())
        digest.update(images.targets[labeled].tobytes())
        data = [split.labeled_fingerprint, digest.hexdigest()]
        return identity.config_hash(to_dict(cfg), data, None)
    data = [split.fingerprint, images.fingerprint]
    return identity.config_hash(to_dict(cfg), data, config_hash(cfg.parent, images, split))


def resolve(
    method: str,
    backbone: str,
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    **top: Any,
) -> RunConfig:
    """Build the config of one run: defaults < preset < ``overrides`` (file, then ``--set``),
    then check it. The run-wide part comes first and needs no method
    (:func:`bmdbench.config.run_settings`); then the method's hyperparameters, its stage-1
    parent's (each above the values its class declares for the preset, ``Method.presets``),
    and the rules between a method and the settings (:func:`validate`).

    ``top`` sets top-level fields given by their own CLI options (data, seed, device, ...).
    ``overrides`` maps dotted keys to values (strings are parsed to the field's type).
    """
    cfg, method_keys = run_settings(method, backbone, preset, overrides, **top)
    cfg = _with_method(cfg, method, method_keys)
    check_names((), [backbone])
    validate(cfg)
    return cfg


def check_names(methods: Iterable[str], backbones: Iterable[str]) -> None:
    """Raise :class:`ConfigError`, naming the closest, unless each of ``methods`` is a
    registered method and each of ``backbones`` a registered backbone or a timm model name.

    The registries are imported here, not with this module, and each only when a name of
    its kind is given: they import torch (and timm, for the backbones), which a mistake in
    the run-wide settings or a manifest does not wait for."""
    if methods := list(methods):
        from bmdbench.methods import METHODS

        for name in methods:
            METHODS.get(name)
    if backbones := list(backbones):
        from bmdbench.backbones import check_name

        for name in backbones:
            check_name(name)


def validate(cfg: RunConfig, child: str | None = None) -> None:
    """Check the rules between a resolved config's method and its settings, for its stage-1
    parent too (the run-wide ranges were checked by :func:`bmdbench.config.run_settings`,
    the hyperparameters' when they were set). ``child``: the stage-2 method whose stage-1
    parent ``cfg`` is."""
    from bmdbench.methods import METHODS

    spec = METHODS.get(cfg.method)
    lpb, batch = cfg.stage2.labeled_per_batch, cfg.stage2.batch_size
    if spec.two_stream and lpb >= batch:
        raise ConfigError(
            f"stage2.labeled_per_batch={lpb} leaves no room in a batch of {batch}",
            f"use 1 to {batch - 1}, or raise stage2.batch_size",
        )
    stage = f"stage{spec.stage}"
    batch = getattr(cfg, stage).batch_size
    needed, why = spec.min_batch_size(cfg.hparams)
    if batch < needed:
        raise ConfigError(
            f"{stage}.batch_size={batch} is too small for {cfg.method}"
            + (f" (the stage-1 method of {child})" if child else ""),
            f"use {needed} or more: {why}",
        )
    if cfg.parent is not None:
        validate(cfg.parent, cfg.method)


def _with_method(cfg: RunConfig, method: str, method_keys: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with ``method``'s hyperparameters (and its stage-1 parent's config), after
    every key of ``method_keys`` (``<method>.<field>``, those of other methods too: a
    grid's) is checked: its method, its field, the value's type and range."""
    from bmdbench.methods import METHODS  # imports torch: after the run-wide settings

    spec = METHODS.get(method)
    prefix = f"{method}."
    own = {k[len(prefix) :]: v for k, v in method_keys.items() if k.startswith(prefix)}
    for key, value in method_keys.items():
        name, _, rest = key.partition(".")
        if name not in METHODS or not rest:
            raise ConfigError(
                f"unknown setting {key!r}",
                f"valid keys: {', '.join(valid_keys(RunConfig()))}, "
                "or <method>.<field> for a method's hyperparameters (bmdbench list methods)",
            )
        params = apply(METHODS.get(name).Params(), {rest: value}, prefix=f"{name}.")
        check_fields(params, f"{name}.")
    hparams = apply(spec.Params(), {**spec.presets.get(cfg.preset, {}), **own}, prefix=prefix)
    check_fields(hparams, prefix)  # before following hparams.stage1
    parent = _with_method(cfg, hparams.stage1, method_keys) if spec.stage == 2 else None
    return replace(cfg, method=method, hparams=hparams, parent=parent)
