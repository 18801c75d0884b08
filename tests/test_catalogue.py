"""The registries' catalogues: what they hold, when the file on disk is used and when it is
rebuilt, and that a name is accepted from a catalogue exactly when the registry accepts it."""

from __future__ import annotations

import os

import pytest
import timm

from bmdbench import catalogue
from bmdbench.backbones import build_backbone, check_name, count_parameters
from bmdbench.catalogue import Catalogue, _from_folder, _Registry
from bmdbench.config import apply, check_fields
from bmdbench.errors import ConfigError
from bmdbench.methods import METHODS


@pytest.fixture(autouse=True)
def _fresh():
    _from_folder.cache_clear()
    yield
    _from_folder.cache_clear()


def test_the_method_catalogue_lists_every_method_with_its_stage_parent_and_defaults():
    rows = catalogue.load("method").rows
    assert list(rows) == list(METHODS)
    assert rows["baseline"] == {
        "stage": 1,
        "parent": None,
        "description": "Supervised regression with the MSE loss alone.",
        "hyperparameters": {},
        "checks": {},
        "search_space": {},
        "tune_default": [],
    }
    assert rows["proposed"]["stage"] == 2 and rows["proposed"]["parent"] == "atl"
    assert rows["proposed"]["hyperparameters"] == {
        "stage1": "atl",
        "weight": 0.5,
        "margin": 0.5,
        "consistency_weight": 1.0,
    }
    assert rows["proposed"]["checks"]["margin"] == {"type": "float", "rule": ["at_least", [0]]}
    assert rows["proposed"]["checks"]["stage1"] == {"type": "str", "rule": ["stage1", []]}
    assert rows["proposed"]["search_space"]["margin"] == {
        "kind": "margin",
        "low": 0.05,
        "high": 1.5,
        "log": False,
    }


def test_a_catalogue_survives_its_json():
    listing = catalogue.load("method")
    assert Catalogue.from_json(listing.to_json()) == listing


def test_the_file_is_written_once_then_read_while_the_code_is_unchanged(tmp_path, monkeypatch):
    built = _from_folder("method", tmp_path)
    (file,) = tmp_path.glob("catalogue-method-*.json")
    _from_folder.cache_clear()

    def no_import(name: str) -> None:
        raise AssertionError(f"{name} imported although its catalogue is fresh")

    monkeypatch.setattr(catalogue, "import_module", no_import)
    assert _from_folder("method", tmp_path) == built
    assert list(tmp_path.glob("catalogue-method-*.json")) == [file]


def test_an_unwritable_cache_folder_costs_only_the_import(tmp_path):
    folder = tmp_path / "a-file"
    folder.write_text("")  # a folder below a file cannot be made
    assert _from_folder("method", folder) == catalogue.load("method")


def test_only_the_newest_files_of_a_registry_are_kept(tmp_path, monkeypatch):
    for state in range(catalogue.KEEP + 2):
        monkeypatch.setattr(catalogue, "_fingerprint", lambda registry, state=state: f"{state:032}")
        _from_folder.cache_clear()
        _from_folder("method", tmp_path)
        stamp = 1_000_000 + state  # distinct modification times, oldest first
        os.utime(tmp_path / f"catalogue-method-{state:032}.json", (stamp, stamp))
    kept = sorted(p.name for p in tmp_path.glob("catalogue-method-*.json"))
    assert kept == [f"catalogue-method-{s:032}.json" for s in range(2, catalogue.KEEP + 2)]


def test_the_fingerprint_follows_the_package_its_libraries_and_its_plugins(tmp_path, monkeypatch):
    package = tmp_path / "fake_registry_pkg"
    package.mkdir()
    module = package / "__init__.py"
    module.write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = _Registry("fake_registry_pkg", "bmdbench.test_catalogue", ("timm",))
    seen = {catalogue._fingerprint(registry)}

    def changed() -> bool:
        new = catalogue._fingerprint(registry)
        fresh = new not in seen
        seen.add(new)
        return fresh

    assert not changed()  # nothing touched: the same
    module.write_text("x = 22\n")  # a module's size
    assert changed()
    os.utime(module, ns=(0, 0))  # its modification time
    assert changed()
    (package / "extra.py").write_text("")  # a new module
    assert changed()
    monkeypatch.setattr(catalogue, "_version", lambda library: "99.0")  # timm upgraded
    assert changed()
    info = tmp_path / "a_plugin-1.0.dist-info"  # a plug-in installed in the group
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: a-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[bmdbench.test_catalogue]\nthing = a_plugin:make\n")
    (tmp_path / "a_plugin.py").write_text("def make(): ...\n")
    assert changed()
    (tmp_path / "a_plugin.py").write_text("def make(): return 1\n")  # the plug-in edited
    assert changed()
    plugin = tmp_path / "b_plugin"  # a plug-in package, its class in a submodule
    plugin.mkdir()
    (plugin / "__init__.py").write_text("")
    (plugin / "impl.py").write_text("from b_plugin.params import P\ndef make(): ...\n")
    (plugin / "params.py").write_text("P = 1\n")
    (info / "entry_points.txt").write_text(
        "[bmdbench.test_catalogue]\nthing = a_plugin:make\nother = b_plugin.impl:make\n"
    )
    assert changed()
    (plugin / "params.py").write_text("P = 22\n")  # a module its class imports, edited
    assert changed()


def test_a_backbone_name_is_accepted_from_the_catalogue_exactly_when_the_registry_takes_it():
    listing = catalogue.load("backbone")  # the live registry's: the package is imported here
    assert listing.rows["tiny"] == {
        "embedding": 16,
        "parameters": count_parameters(build_backbone("tiny")),
    }
    names = [
        *listing.rows,
        *timm.list_models(),
        *timm.models.get_deprecated_models(),  # old names timm still takes
        "resnet50.a1_in1k",  # a pretrained tag
        "vgg11_bn_se.x",
        "nope",
        "resnet5",
        "",
    ]
    for name in names:
        errors = []
        for accept in (check_name, listing.check):
            try:
                accept(name)
                errors.append(None)
            except ConfigError as error:
                errors.append(str(error))
        assert errors[0] == errors[1], name
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        listing.check("resnet5")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("propsed.margin", "unknown setting 'propsed.margin' — valid keys: data, "),
        ("proposed", "unknown setting 'proposed' — valid keys: data, "),
        ("proposed.margn", "unknown setting 'proposed.margn' — valid keys: proposed.stage1, "),
    ],
)
def test_a_methods_unknown_setting_is_named_with_the_keys_it_could_be(key, message):
    with pytest.raises(ConfigError) as caught:
        catalogue.check_method_settings({key: "1"})
    assert str(caught.value).startswith(message)
    catalogue.check_method_settings({"proposed.margin": "0.3", "atl.weight": 1})  # no error


BAD_VALUES = ("-1", "0", "1", "2", "1e9", "nan", "abc", "none", "atl", "pi_model")


def _error(check, *args) -> str | None:
    try:
        check(*args)
    except ConfigError as error:
        return str(error)
    return None


def _real(name: str, field_name: str, value: str) -> None:
    params = apply(METHODS.get(name).Params(), {field_name: value}, prefix=f"{name}.")
    check_fields(params, f"{name}.")


def test_a_methods_setting_is_judged_from_the_catalogue_as_its_own_class_judges_it(monkeypatch):
    on_disk = Catalogue.from_json(catalogue.load("method").to_json())  # what a file holds
    monkeypatch.setattr(catalogue, "load", lambda kind: on_disk)
    checked = 0
    for name, row in on_disk.rows.items():
        for field_name in row["hyperparameters"]:
            for value in BAD_VALUES:
                key = f"{name}.{field_name}"
                real = _error(_real, name, field_name, value)
                assert _error(catalogue.check_method_settings, {key: value}) == real, key
                checked += real is not None
    assert checked > 100  # most of those values are wrong for most fields


def test_a_name_no_registry_holds_is_the_registrys_own_error():
    with pytest.raises(ConfigError) as caught:
        catalogue.check("method", "propsed")
    with pytest.raises(ConfigError) as from_file:
        Catalogue.from_json(catalogue.load("method").to_json()).check("propsed")
    assert str(caught.value) == str(from_file.value)
    assert "did you mean 'proposed'?" in str(caught.value)


def test_a_name_is_checked_by_the_registry_itself_once_its_package_is_imported(monkeypatch):
    # a method a test registers is known although no catalogue file lists it
    monkeypatch.setitem(METHODS._entries, "registered_here", METHODS.get("baseline"))
    catalogue.check("method", "registered_here")
    assert "registered_here" in catalogue.load("method").rows
