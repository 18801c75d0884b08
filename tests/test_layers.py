"""The package's import graph, read from its source: no import loop, not even through an
import inside a function, and the reports apart from what runs experiments."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bmdbench
import bmdbench.backbones
import bmdbench.methods

PACKAGES = {
    "bmdbench": Path(bmdbench.__file__).parent,
    "bmdbench.methods": Path(bmdbench.methods.__file__).parent,
    "bmdbench.backbones": Path(bmdbench.backbones.__file__).parent,
}

EXECUTION = {"grid", "dispatch", "runner", "trainer", "hooks", "speed", "tune", "testing"}
"""What runs experiments: grid workers and their queue, the runner, the training loop, its
hooks, searches, and the method checker's training."""

REPORTS = ("tables", "budgets", "plots", "report")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found.setdefault(name, path)  # bmdbench.methods from its own folder
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports anywhere (in a function too), except
    under ``if TYPE_CHECKING:``, which never runs."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in names if name in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_the_graph_is_read():
    assert "bmdbench.experiments" in GRAPH["bmdbench.tables"]
    assert "bmdbench.runner" in GRAPH["bmdbench.grid"]  # inside a function


def test_no_import_loop():
    """Counting imports inside functions, so that none of them hides a loop."""
    done: set[str] = set()

    def walk(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError("import loop: " + " → ".join((*path[path.index(name) :], name)))
        if name in done:
            return
        for imported in sorted(GRAPH[name]):
            walk(imported, (*path, name))
        done.add(name)

    for name in sorted(GRAPH):
        walk(name, ())


def _reached(start: str) -> set[str]:
    """Every module importing ``start`` runs, its packages' ``__init__`` included."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [name.rsplit(".", i)[0] for i in range(1, name.count("."))]
        todo += [*GRAPH[name], *(p for p in parents if p in MODULES)]
    return seen


@pytest.mark.parametrize("report", REPORTS)
def test_a_report_never_imports_what_runs_experiments(report):
    reached = {name.removeprefix("bmdbench.") for name in _reached(f"bmdbench.{report}")}
    assert "experiments" in reached or report == "plots"
    assert not reached & EXECUTION, f"{report} imports {sorted(reached & EXECUTION)}"
