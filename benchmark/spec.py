"""What to run: a :class:`RunSpec`, resolved into its config, its stage-1 parent and its keys.

``bmdbench run``, grids, searches and tables all describe a run by a RunSpec: the method,
backbone, preset, data, seed, device and the dotted settings a user gave (config file,
``--n-*`` options, ``--set``, a search's values). The spec resolves them in one place
(:func:`resolve`), and answers "is this the same run?" by the one rule of
:mod:`bmdbench.identity`.

Importing this module imports no method, and so neither torch: resolving a spec checks
the preset and the run-wide settings first (:func:`bmdbench.config.run_settings`), and
loads the method registry only for the method's own part.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from bmdbench import catalogue, identity
from bmdbench.config import RunConfig, apply, check_fields, run_settings, to_dict
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
        return resolve(
            self.method,
            self.backbone,
            self.preset,
            dict(self.settings),
            data=self.data,
            unlabeled=self.unlabeled,
            seed=self.seed,
            device=self.device,
        )

    def check_inputs(self) -> None:
        """Resolve the run-wide settings, check the names and the methods' settings
        (:func:`check_names`), read the images and the split, all without torch: a mistake
        in the settings, a name, the manifest, the split or the label budget is found
        before the engine is loaded. The images stay decoded for the run
        (:func:`bmdbench.data.sources.load_images`)."""
        from bmdbench.data import sources

        cfg, method_keys = run_settings(
            self.method,
            self.backbone,
            self.preset,
            dict(self.settings),
            data=self.data,
            unlabeled=self.unlabeled,
            seed=self.seed,
            device=self.device,
        )
        check_names(self.method, self.backbone, method_keys)
        sources.load_inputs(cfg)

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
        own = {spec.method} | ({p.method} if (p := spec.config.parent) else set())
        others = set(catalogue.load("method").rows) - own
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
    check_names(method, backbone, method_keys)
    cfg = _with_method(cfg, method, method_keys)
    validate(cfg)
    return cfg


def check_names(method: str, backbone: str, method_settings: Mapping[str, Any]) -> None:
    """The method and the backbone exist, and so does each method setting's key
    (``atl.margn``), whose value fits its field's type and declared rule: checked from the
    registries' catalogues, so without torch (:mod:`bmdbench.catalogue`)."""
    catalogue.check("method", method)
    catalogue.check_method_settings(method_settings)
    catalogue.check("backbone", backbone)


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
    from bmdbench.methods import METHODS

    spec = METHODS.get(method)
    prefix = f"{method}."
    own = {k[len(prefix) :]: v for k, v in method_keys.items() if k.startswith(prefix)}
    for key in method_keys:  # settings of other methods (a grid's): type- and range-checked
        name, _, rest = key.partition(".")
        params = apply(METHODS.get(name).Params(), {rest: method_keys[key]}, prefix=f"{name}.")
        check_fields(params, f"{name}.")
    hparams = apply(spec.Params(), {**spec.presets.get(cfg.preset, {}), **own}, prefix=prefix)
    check_fields(hparams, prefix)  # before following hparams.stage1
    parent = _with_method(cfg, hparams.stage1, method_keys) if spec.stage == 2 else None
    return replace(cfg, method=method, hparams=hparams, parent=parent)
