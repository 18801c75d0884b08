import pytest

from bmdbench.config import PRESETS, load_config_file, parse_set, resolve, stable_hash, to_dict
from bmdbench.errors import ConfigError


def test_preset_then_overrides_then_set():
    cfg = resolve("atl", "tiny", "quick", {"stage1.epochs": "3", "atl.margin": "0.3"})
    assert cfg.image_size == PRESETS["quick"]["image_size"]
    assert cfg.stage1.epochs == 3
    assert cfg.stage1.weight_decay == 4e-4  # default kept
    assert cfg.hparams.margin == 0.3 and cfg.hparams.weight == 0.5


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
