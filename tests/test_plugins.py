"""Methods and backbones from installed packages (entry points), and the example plug-in
installed, listed, checked and run end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bmdbench.errors import PluginError
from bmdbench.registry import Registry

GROUP = "bmdbench.test_plugins"  # a group of these tests' own: the real registries stay as they are
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bmdbench-example-plugin"


def distribution(root: Path, name: str, entry_points: str, module: str, source: str) -> None:
    """An installed distribution as importlib.metadata finds it on ``sys.path``: its
    ``.dist-info`` (metadata and entry points) beside one module."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{entry_points}\n")
    (root / f"{module}.py").write_text(source)


def registry_with_plugin(tmp_path, monkeypatch, entry_points: str, module: str, source: str):
    """A registry of callables that loads ``GROUP``, one built-in entry registered."""
    distribution(tmp_path, "plugin-dist", entry_points, module, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[object] = Registry("thing", GROUP)
    registry.register("built_in")(len)
    return registry


def test_a_plugin_is_registered_under_its_entry_points_name_after_the_built_ins(
    tmp_path, monkeypatch
):
    registry = registry_with_plugin(
        tmp_path, monkeypatch, "extra = plugin_ok:factory", "plugin_ok", "def factory(): ..."
    )
    assert registry.names() == ["built_in", "extra"]
    assert registry.get("extra").__module__ == "plugin_ok"


@pytest.mark.parametrize(
    ("entry_points", "source", "problem", "fix"),
    [
        ("extra = plugin_broken:factory", "import not_installed_anywhere", "does not import", "pip uninstall plugin-dist"),
        ("extra = plugin_value:factory", "factory = 3", "is 3, not a callable", "point the entry point at a callable"),
        ("built_in = plugin_dup:factory", "def factory(): ...", "'built_in' exists already", "rename the entry point"),
        ("extra.x = plugin_dotted:factory", "def factory(): ...", "not an identifier", "rename the entry point"),
    ],
)  # fmt: skip
def test_a_broken_plugin_is_an_error_naming_its_distribution_and_the_fix(
    tmp_path, monkeypatch, entry_points, source, problem, fix
):
    module = entry_points.split("= ")[1].split(":")[0]
    registry = registry_with_plugin(tmp_path, monkeypatch, entry_points, module, source)
    with pytest.raises(PluginError, match="plugin-dist") as info:
        registry.get("built_in")
    assert problem in info.value.what and fix in info.value.fix


def test_a_groups_plugins_are_all_registered_or_none(tmp_path, monkeypatch):
    registry = registry_with_plugin(
        tmp_path,
        monkeypatch,
        "first = plugin_pair:factory\nsecond = plugin_pair:factory\nthird = plugin_pair:three",
        "plugin_pair",
        "def factory(): ...\nthree = 3",
    )
    for _ in range(2):  # had first and second been kept, the second lookup would say so
        with pytest.raises(PluginError, match="'third' = 'plugin_pair:three' .* is 3"):
            registry.names()


def test_a_plugin_that_registers_itself_too_is_told_to_drop_the_decorator(tmp_path, monkeypatch):
    registry: Registry[object] = Registry("thing", GROUP)
    holder = types.ModuleType("plugin_registry")
    holder.REGISTRY = registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "plugin_registry", holder)
    source = (
        "from plugin_registry import REGISTRY\n\n@REGISTRY.register('extra')\ndef factory(): ..."
    )
    distribution(tmp_path, "plugin-dist", "extra = plugin_self:factory", "plugin_self", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="registers itself too"):
        registry.names()


def run(*args: str, env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_the_example_plugin_installs_lists_passes_its_tests_and_runs(tmp_path):
    source, site = tmp_path / "plugin", tmp_path / "site"
    shutil.copytree(EXAMPLE, source)  # pip builds in the source folder: not in the repository's
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    run(
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "--target", str(site), str(source), env=env,
    )  # fmt: skip
    assert "huber" in run(sys.executable, "-m", "bmdbench.cli", "list", "methods", env=env)
    # its own tests: check_method and the loss against hand numbers
    run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", env=env, cwd=source)
    out = tmp_path / "out"
    run(
        sys.executable, "-m", "bmdbench.cli", "run", "--method", "huber", "--backbone", "tiny",
        "--preset", "smoke", "--device", "cpu", "--out", str(out), "--quiet",
        "--set", "huber.delta=0.5", env=env,
    )  # fmt: skip
    (record_file,) = out.glob("runs/huber-*/record.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "ok" and record["config"]["hparams"] == {"delta": 0.5}
