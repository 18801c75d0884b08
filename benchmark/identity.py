"""When two runs are the same run: the one identity rule, over resolved configs as plain data.

A run *is* its resolved configuration (:func:`bmdbench.config.to_dict`): method, backbone,
every setting, the method's hyperparameters and, for a stage-2 method, its stage-1
parent's identity. Left out:

- how a run executes, not what it computes: ``device``, ``compile``, and the ``preset``
  name (its values are in the config; two presets that set the same values give the same
  run);
- for a stage-1 method, what only stage 2 reads: ``stage2``, ``unlabeled`` and
  ``synth.n_unlabeled``, so that every stage-2 method of a grid shares one stage-1 run;
- ``split.allow_overlap``: what it drops from the unlabeled pool is in the split's
  fingerprint, which :func:`config_hash` covers;
- a setting of :data:`BEFORE` at the value every run had before it existed.

Three keys follow from it (:class:`bmdbench.spec.RunSpec` exposes them for a spec):

- :func:`run_key`: the identity with its seed: one run of a grid or a search;
- :func:`signature`: the identity without the seed: one cell of a table, whose runs are
  its seeds;
- :func:`config_hash`: the identity and the data the run saw (image and split
  fingerprints): the name of its run directory, which a later run reuses.

Torch-free: run records are read with this module alone (``bmdbench list runs``, tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bmdbench.config import stable_hash

EXECUTION_ONLY = ("device", "compile", "preset")
"""Config keys that say how a run executes, never what it is."""

STAGE2_ONLY = ("stage2", "unlabeled")
"""Config keys a stage-1 run never reads (and ``synth.n_unlabeled``)."""

BEFORE = {"precise_bn": False}
"""Settings added after runs were recorded, with the value that reproduces those runs: at
that value a setting is left out of the identity, so an earlier run keeps its identity (and
its run directory), and a run at the new default gets a new one."""


def identity(config: dict[str, Any], with_seed: bool = True) -> dict[str, Any]:
    """The part of a resolved config (as :func:`bmdbench.config.to_dict` writes it) that
    defines a run; a stage-2 config's ``parent`` is replaced by the parent's identity.
    Keys a config lacks (records written before a setting existed) are simply absent."""
    dropped = EXECUTION_ONLY if with_seed else (*EXECUTION_ONLY, "seed")
    ident = {
        k: v for k, v in config.items() if k not in dropped and not (k in BEFORE and v == BEFORE[k])
    }
    if "split" in ident:
        ident["split"] = {k: v for k, v in ident["split"].items() if k != "allow_overlap"}
    if config.get("parent") is None:
        for key in STAGE2_ONLY:
            ident.pop(key, None)
        if "synth" in ident:
            ident["synth"] = {k: v for k, v in ident["synth"].items() if k != "n_unlabeled"}
    else:
        ident["parent"] = identity(config["parent"], with_seed)
    return ident


def run_key(config: dict[str, Any]) -> str:
    """One run, before its data is read: the identity with the seed (16 hex digits)."""
    return stable_hash(identity(config))[:16]


def signature(config: dict[str, Any]) -> str:
    """One table cell: the identity without the seed (16 hex digits)."""
    return stable_hash(identity(config, with_seed=False))[:16]


def config_hash(config: dict[str, Any], data: Sequence[str], parent_hash: str | None) -> str:
    """The run directory's hash: the identity and ``data``, the fingerprints of what the run
    read (a stage-1 run: its labeled images only). A stage-2 run names its parent by the
    parent's own hash (``parent_hash``), which covers the parent's data too."""
    ident = identity(config)
    if parent_hash is not None:
        ident["parent"] = None
        data = [*data, parent_hash]
    return stable_hash({"config": ident, "data": list(data)})
