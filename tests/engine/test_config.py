from dataclasses import fields, is_dataclass

import pytest

from bmdbench.config import (
    PRESETS,
    RunConfig,
    Valid,
    load_config_file,
    parse_set,
    stable_hash,
    to_dict,
)
from bmdbench.errors import ConfigError
from bmdbench.methods import METHODS
from bmdbench.spec import resolve


def test_preset_then_overrides_then_set():
    cfg = resolve("atl", "tiny", "quick", {"stage1.epochs": "3", "atl.margin": "0.3"})
    assert cfg.image_size == PRESETS["quick"]["image_size"]
    assert cfg.stage1.epochs == 3
    assert cfg.stage1.batch_size == 16  # default kept
    assert cfg.stage1.weight_decay == 0.0  # the preset's
    assert cfg.hparams.margin == 0.3 and cfg.hparams.weight == 0.05  # the preset's λ


def test_stage2_method_resolves_its_parent_with_parent_keys():
    cfg = resolve(
        "proposed", "tiny", "smoke", {"atl.margin": "0.7", "proposed.consistency_weight": "0.5"}
    )
    assert cfg.parent is not None and cfg.parent.method == "atl"
    assert cfg.parent.hparams.margin == 0.7
    assert cfg.hparams.consistency_weight == 0.5
    assert resolve("pi_model", "tiny", "smoke").parent.method == "baseline"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: .*stage1.epochs"):
        resolve("atl", "tiny", "quick", {"stage1.epoch": "3"})
    with pytest.raises(ConfigError, match="valid keys: proposed.stage1, proposed.weight"):
        resolve("proposed", "tiny", "quick", {"proposed.nope": "1"})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="stage1.epochs='three' is not a valid int"):
        resolve("atl", "tiny", "quick", {"stage1.epochs": "three"})
    with pytest.raises(ConfigError, match="not a valid int"):
        resolve("atl", "tiny", "quick", {"seed": "1.5"})


def test_optional_fields_accept_none():
    cfg = resolve("atl", "tiny", "quick", {"stage1.lr_drop_epoch": "none", "split.train": "100"})
    assert cfg.stage1.lr_drop_epoch is None and cfg.split.train == 100.0


def test_unknown_method_and_preset_suggest_names():
    with pytest.raises(ConfigError, match="did you mean 'atl'"):
        resolve("alt", "tiny", "quick")
    with pytest.raises(ConfigError, match="paper, quick, smoke"):
        resolve("atl", "tiny", "fast")


def test_bad_target_norm():
    with pytest.raises(ConfigError, match="zscore"):
        resolve("atl", "tiny", "quick", {"target_norm": "minmax"})


def test_parse_set_and_config_file(tmp_path):
    assert parse_set(["a.b=1", " c = x "]) == {"a.b": "1", "c": "x"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["margin"])
    path = tmp_path / "c.toml"
    path.write_text("seed = 3\n[stage1]\nepochs = 4\n[atl]\nmargin = 0.25\n")
    cfg = resolve("atl", "tiny", "smoke", load_config_file(path))
    assert (cfg.seed, cfg.stage1.epochs, cfg.hparams.margin) == (3, 4, 0.25)


def test_hash_changes_with_settings():
    a = stable_hash(to_dict(resolve("atl", "tiny", "smoke")))
    b = stable_hash(to_dict(resolve("atl", "tiny", "smoke", {"atl.margin": "0.4"})))
    assert a != b and a == stable_hash(to_dict(resolve("atl", "tiny", "smoke")))


# --- declared ranges (issue 17) -------------------------------------------------------

UNRANGED = {"method", "backbone", "preset", "data", "unlabeled", "pretrained", "hparams", "parent"}
# ^ registry names and files: resolved before a run starts (tests/engine/test_fail_early.py)


def _settings(obj, prefix=""):
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value) and f.name not in UNRANGED:
            yield from _settings(value, f"{prefix}{f.name}.")
        elif f.name not in UNRANGED and not isinstance(value, bool):
            yield prefix + f.name, f


@pytest.mark.parametrize("method", list(METHODS))
def test_every_setting_declares_its_range(method):
    params = METHODS.get(method).Params()
    for key, f in [*_settings(RunConfig()), *_settings(params, f"{method}.")]:
        assert isinstance(f.metadata.get("valid"), Valid), f"{key} declares no valid range"


@pytest.mark.parametrize("method", list(METHODS))
def test_search_ranges_lie_inside_the_declared_ranges(method):
    from bmdbench.tune import search_space

    spec = METHODS.get(method)
    for kind in {r.kind for r in spec.search_space.values()} | {"lr"}:
        for key, r in search_space(method, kind).items():
            for value in (r.low, r.high):
                resolve(method, "tiny", "smoke", {key: str(value)})


@pytest.mark.parametrize(
    ("method", "key", "value", "wanted"),
    [
        ("atl", "stage1.lr", "-1", "stage1.lr=-1.0 is out of range — use a value > 0"),
        ("atl", "stage1.lr", "inf", "stage1.lr=inf is out of range"),
        ("atl", "stage1.lr", "nan", "stage1.lr=nan is out of range"),
        ("atl", "stage1.epochs", "0", "stage1.epochs=0 is out of range — use a value ≥ 1"),
        ("baseline", "stage1.batch_size", "1", "stage1.batch_size=1 is out of range"),
        ("atl", "stage1.batch_size", "2", "stage1.batch_size=2 is too small for atl — use 3"),
        ("triplet", "stage1.batch_size", "2", "too small for triplet — use 3"),
        (
            "proposed",
            "stage1.batch_size",
            "2",
            "too small for atl (the stage-1 method of proposed)",
        ),
        ("proposed", "stage2.batch_size", "2", "stage2.batch_size=2 is too small for proposed"),
        ("pseudo_label_atl", "stage2.batch_size", "2", "too small for pseudo_label_atl"),
        ("atl", "split.train", "0", "split.train=0.0 (--n-labeled) is out of range"),
        ("atl", "split.val", "12.5", "split.val=12.5 (--n-val) is out of range"),
        ("atl", "seed", "-1", "seed=-1 is out of range"),
        ("atl", "device", "meta", "device='meta' is not known — use auto, cpu, cuda or cuda:N"),
        ("atl", "image_size", "4", "image_size=4 is out of range"),
        ("atl", "stage1.weight_decay", "-0.1", "stage1.weight_decay=-0.1 is out of range"),
        ("atl", "stage1.schedule", "linear", "stage1.schedule='linear' is not known"),
        ("atl", "amp", "fp16", "amp='fp16' is not known — use one of: auto, bf16, off"),
        (
            "atl",
            "augment.hflip",
            "1.5",
            "augment.hflip=1.5 is out of range — use a value in [0, 1]",
        ),
        ("atl", "augment.scale_min", "1.5", "augment.scale_min=1.5 is above augment.scale_max"),
        ("atl", "synth.n_patients", "5000", "synth.n_patients=5000 is more than synth.n_labeled"),
        ("atl", "atl.margin", "-0.5", "atl.margin=-0.5 is out of range — use a value ≥ 0"),
        ("atl", "atl.weight", "-1", "atl.weight=-1.0 is out of range"),
        ("mean_teacher", "mean_teacher.ema_decay", "1", "use a value in (0, 1)"),
        ("temporal_ensembling", "temporal_ensembling.alpha", "0", "alpha=0.0 is out of range"),
        ("pi_model", "pi_model.stage1", "proposed", "is not a stage-1 method — use a stage-1"),
        ("proposed", "proposed.stage1", "proposed", "is not a stage-1 method"),
        ("pi_model", "stage2.labeled_per_batch", "8", "leaves no room in a batch of 8"),
        ("pi_model", "atl.margin", "-1", "atl.margin=-1.0 is out of range"),  # a grid-wide --set
    ],
)
def test_out_of_range_names_key_value_and_range(method, key, value, wanted):
    with pytest.raises(ConfigError) as info:
        resolve(method, "tiny", "smoke", {key: value})
    assert wanted in str(info.value)
    assert "\n" not in str(info.value)


def test_compile_is_a_switch_that_is_off_by_default():
    assert resolve("atl", "tiny", "smoke").compile is False
    assert resolve("atl", "tiny", "smoke", {"compile": "true"}).compile is True
    with pytest.raises(ConfigError, match="compile='sometimes' is not a valid bool"):
        resolve("atl", "tiny", "smoke", {"compile": "sometimes"})


def test_pseudo_label_without_triplet_takes_batches_of_two():
    cfg = resolve(
        "pseudo_label", "tiny", "smoke", {"stage2.batch_size": "2", "stage2.labeled_per_batch": "1"}
    )
    assert cfg.stage2.batch_size == 2


def test_config_file_goes_through_the_same_checks(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[stage1]\nepochs = 0\n")
    with pytest.raises(ConfigError, match="stage1.epochs=0 is out of range"):
        resolve("atl", "tiny", "smoke", load_config_file(path))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path)
