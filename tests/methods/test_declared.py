"""What a method declares about itself, and that nothing else names it: a method added in one
file gets its preset values, its searches and its Table 3 columns from that file alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import ClassVar

import pytest

import bmdbench
from bmdbench import tune
from bmdbench.config import Range
from bmdbench.errors import ConfigError
from bmdbench.methods import METHODS, Method
from bmdbench.methods.supervised import TripletParams
from bmdbench.spec import resolve
from bmdbench.statistics import KINDS
from bmdbench.testing import check_method


class SteepTriplet(Method):
    """A triplet method of this test only, with a λ of its own under quick."""

    Params = TripletParams
    presets: ClassVar = {"quick": {"weight": 0.02}}
    search_space: ClassVar = {"weight": Range("steepness", 0.01, 0.1)}
    tune_default = ("steepness",)


@pytest.fixture
def steep(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "steep_triplet", SteepTriplet)


def test_a_methods_own_preset_values_apply_below_the_users(steep):
    assert resolve("steep_triplet", "tiny", "quick").hparams.weight == 0.02
    assert resolve("steep_triplet", "tiny", "paper").hparams.weight == 0.5  # no paper values
    given = resolve("steep_triplet", "tiny", "quick", {"steep_triplet.weight": "0.3"})
    assert given.hparams.weight == 0.3  # a config file or --set above the preset
    # a stage-2 method's parent gets its own preset values, whatever the child declares
    child = resolve("proposed", "tiny", "quick", {"proposed.stage1": "steep_triplet"})
    assert (child.hparams.weight, child.parent.hparams.weight) == (0.05, 0.02)


def test_a_new_kind_of_range_is_a_new_search(steep):
    assert "steepness" in tune.kinds()
    assert tune.default_method("steepness") == "steep_triplet"
    assert tune.search_space("steep_triplet", "steepness") == {
        "steep_triplet.weight": Range("steepness", 0.01, 0.1)
    }


def test_the_built_in_searches_and_their_defaults():
    assert tune.kinds() == ["margin", "lambda", "consistency", "ema", "lr", "all"]
    defaults = {kind: tune.default_method(kind) for kind in tune.kinds()}
    assert defaults == {
        "margin": "atl", "lambda": "atl", "consistency": "proposed", "ema": "mean_teacher",
        "lr": "proposed", "all": "proposed",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="unknown search 'nope'"):
        tune.default_method("nope")


def test_a_kind_no_method_is_the_default_of_asks_for_a_method(monkeypatch):
    class Unclaimed(Method):
        """A search of its own that it is not the default of."""

        Params = TripletParams
        search_space: ClassVar = {"margin": Range("width", 0.1, 1.0)}

    monkeypatch.setitem(METHODS._entries, "unclaimed", Unclaimed)
    with pytest.raises(ConfigError, match="give --method"):
        tune.default_method("width")


def test_check_method_catches_a_preset_value_for_no_field():
    class Misspelt(Method):
        """Declares a quick value for a field it does not have."""

        Params = TripletParams
        presets: ClassVar = {"quick": {"wieght": 0.05}}

    with pytest.raises(AssertionError, match="presets\\['quick'\\] names no Params field"):
        check_method(Misspelt)


# Modules that know no method: configuration, searches, statistics, store loading and the
# reports; a method's values live in its own file, which of them are in a table in
# bmdbench.experiments.
KNOW_NO_METHOD = (
    "config",
    "tune",
    "tables",
    "results",
    "statistics",
    "rendering",
    "budgets",
    "plots",
    "grid",
)


@pytest.mark.parametrize("module", KNOW_NO_METHOD)
def test_modules_that_know_no_method_name_none(module):
    """No string of the module's code is a method's name or names one in a command
    (``--methods baseline,atl``, ``-m atl``), and none of its text holds a setting of one
    (``atl.margin``). A word of prose may name one (the baseline); a string naming a
    comparison (``control``, :data:`bmdbench.statistics.KINDS`) is that comparison, not the
    method of the same name."""
    source = (Path(bmdbench.__file__).parent / f"{module}.py").read_text()
    strings = {
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    } - set(KINDS)
    for name in METHODS:
        command = re.compile(rf"(?:--methods? |-m |[,=]){name}(?!\w)|(?<![\w.-]){name},(?=\w)")
        named = [s for s in strings if s == name or command.search(s)]
        assert not named, f"{module}.py names {name}: {named}"
        setting = re.search(rf"(?<![\w.]){name}\.[a-z_]", source)
        assert setting is None, f"{module}.py names a setting of {name}: {setting}"
