"""The one identity rule: which fields make two runs the same run, for every key built on it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bmdbench import identity
from bmdbench.config import PRESETS, to_dict
from bmdbench.spec import RunSpec, config_hash

BASE = RunSpec("proposed", "tiny", "smoke", device="cpu")


def keys(spec: RunSpec) -> tuple[str, str]:
    return spec.key, spec.signature


def test_how_a_run_executes_is_not_what_it_is(monkeypatch):
    same = [
        BASE,
        RunSpec("proposed", "tiny", "smoke", device="cuda"),
        RunSpec("proposed", "tiny", "smoke", device="cpu", settings=(("compile", "true"),)),
    ]
    assert len({keys(s) for s in same}) == 1
    # the preset's name is not the run, its values are: a copy under another name is the same
    monkeypatch.setitem(PRESETS, "smoke-copy", PRESETS["smoke"])
    assert keys(RunSpec("proposed", "tiny", "smoke-copy", device="cpu")) == keys(BASE)
    monkeypatch.setitem(PRESETS, "smoke-copy", {**PRESETS["smoke"], "image_size": 48})
    assert RunSpec("proposed", "tiny", "smoke-copy", device="cpu").key != BASE.key


def test_the_seed_is_a_run_but_not_a_cell():
    other = RunSpec("proposed", "tiny", "smoke", seed=1, device="cpu")
    assert other.key != BASE.key
    assert other.signature == BASE.signature


@pytest.mark.parametrize(
    "setting",
    [("proposed.margin", "0.3"), ("stage2.lr", "0.001"), ("atl.margin", "0.3"), ("seed", "4")],
)
def test_every_setting_a_stage2_run_reads_is_its_identity(setting):
    # its own hyperparameters, its stage-2 schedule, and its stage-1 parent's settings
    changed = BASE.but(settings=dict([setting]))
    assert changed.key != BASE.key


def test_a_stage1_run_ignores_what_only_stage2_reads():
    atl = RunSpec("atl", "tiny", "smoke", device="cpu")
    for setting in ({"stage2.lr": "0.001"}, {"synth.n_unlabeled": "30"}, {"proposed.margin": "1"}):
        assert atl.but(settings=setting).key == atl.key
    assert atl.but(settings={"stage1.lr": "0.001"}).key != atl.key
    # so every stage-2 method of a grid names the same parent
    parents = {
        BASE.but(method=m, settings={"stage2.lr": "0.001"}).parent().key
        for m in ("proposed", "pseudo_label_atl", "proposed_no_consistency")
    }
    assert parents == {atl.key}


def test_one_rule_for_records_and_specs():
    # a table finds a record's runs by the same signature as the spec that names the cell
    assert identity.signature(to_dict(BASE.config)) == BASE.signature
    assert identity.run_key(to_dict(BASE.config)) == BASE.key


def test_config_hash_adds_the_data_and_names_the_parent_by_its_hash(imageset):
    from bmdbench.data.splits import make_split

    split = make_split(imageset, BASE.config.split)
    chash = config_hash(BASE.config, imageset, split)
    assert chash == config_hash(
        RunSpec("proposed", "tiny", "smoke", device="cuda").config, imageset, split
    )
    parent = config_hash(BASE.config.parent, imageset, split)
    assert parent != chash
    other_split = make_split(imageset, replace(BASE.config.split, seed=5))
    assert config_hash(BASE.config, imageset, other_split) != chash


def test_a_record_without_later_keys_still_has_an_identity():
    config = to_dict(BASE.config)
    del config["compile"], config["parent"]["compile"]  # written before `compile` existed
    assert identity.signature(config) == BASE.signature


def test_records_written_before_runspec_keep_their_identity():
    # record.json of `bmdbench run -m pi_model -b tiny -p smoke --device cpu` at 0d81f48. Its
    # directory hash also covers the pixels of its parent's images, which the image library
    # renders differently across versions (Pillow 13 resamples otherwise than 12): what must
    # stay is the identity the hash is made of.
    written = json.loads(
        (Path(__file__).with_name("records") / "format1-pi_model.json").read_text()
    )
    # the loop of then had no batch-norm refresh: precise_bn=false is that run, the default
    # (precise_bn=true) is another one
    then = RunSpec.of("pi_model", "tiny", "smoke", {"precise_bn": "false"}, device="cpu")
    assert identity.identity(to_dict(then.config)) == identity.identity(written["config"])
    now = RunSpec("pi_model", "tiny", "smoke", device="cpu")
    assert identity.identity(to_dict(now.config)) != identity.identity(written["config"])


def quick_records() -> dict[str, dict]:
    path = Path(__file__).with_name("records") / "quick-configs.json"
    return json.loads(path.read_text())


@pytest.mark.parametrize("method", list(quick_records()))
def test_every_methods_quick_config_is_the_one_its_runs_were_recorded_with(method):
    # the resolved config of each method under `quick` (vgg11_bn_se, synthetic) as the code
    # of the published tables resolved it (97eb9a5; ucvme, rankup and rankup_rda as their
    # authors' set-up changed them at 308c680, and the new hpl and clss there): wherever a
    # preset's values are declared, every run keeps its config, its keys and its run
    # directory's hash
    now = to_dict(RunSpec(method, "vgg11_bn_se", "quick").config)
    assert json.loads(json.dumps(now)) == quick_records()[method]
