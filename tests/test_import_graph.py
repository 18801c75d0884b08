"""No import loop among bmdbench's modules (issue 31).

A loop makes a module's names depend on which module of the loop was imported first.
(``methods/base.py`` took its stage-1 rule from the catalogue, which imported
``bmdbench.methods`` by ``importlib.import_module`` of a variable: a loop no reading of the
source sees, gone with the catalogue.) The graph is read from the source with ``ast``:
what each module imports when it is imported (its top level, class bodies, ``if``/``try``
blocks; not ``if TYPE_CHECKING:``, which never runs, nor function bodies, which run later),
``importlib.import_module("literal")`` calls included. Importing ``a.b.c`` runs the
packages ``a`` and ``a.b`` first, so they count as imported too, except those that hold the
importing module (a package's modules import it while it runs).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

PACKAGES = ("bmdbench", "bmdbench.methods", "bmdbench.backbones")


def modules() -> dict[str, Path]:
    """Every module of bmdbench's three package folders, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        spec = find_spec(package)
        assert spec is not None and spec.submodule_search_locations is not None
        for folder in map(Path, spec.submodule_search_locations):
            for file in folder.rglob("*.py"):
                parts = file.relative_to(folder).with_suffix("").parts
                name = ".".join([package, *(p for p in parts if p != "__init__")])
                found.setdefault(name, file)
    return found


def run_at_import(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """The nodes of ``body`` that run when the module is imported."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            yield from run_at_import(node.orelse)
            continue
        children = [c for c in ast.iter_child_nodes(node) if not isinstance(c, ast.stmt)]
        yield node
        for child in children:
            yield from ast.walk(child)
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None) or []
            statements = [s for h in block for s in h.body] if field == "handlers" else block
            yield from run_at_import(statements)


def imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    if (
        isinstance(node, ast.Call)
        and ast.unparse(node.func) in ("import_module", "importlib.import_module")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    return []


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, file in known.items():
        tree = ast.parse(file.read_text(), str(file))
        targets = set()
        for node in run_at_import(tree.body):
            for target in imported_names(node):
                parts = target.split(".")
                for end in range(1, len(parts) + 1):
                    run = ".".join(parts[:end])
                    if run in known and not (name == run or name.startswith(f"{run}.")):
                        targets.add(run)
        graph[name] = targets
    return graph


def find_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop of ``graph`` (its modules in import order, the first again at the end)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (loop := visit(target)):
                return loop
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (loop := visit(module)):
            return loop
    return None


def test_the_graph_covers_the_three_packages_and_sees_their_imports():
    graph = import_graph()
    assert {"bmdbench.cli", "bmdbench.methods.base", "bmdbench.backbones.vgg"} <= set(graph)
    assert {"bmdbench.methods", "bmdbench.spec"} <= graph["bmdbench.runner"]  # from … import
    assert "bmdbench.methods.base" in graph["bmdbench.methods.mixmatch"]
    assert "bmdbench.methods" not in graph["bmdbench.methods.mixmatch"]  # its own package
    assert "bmdbench.methods.control" not in graph["bmdbench.budgets"]  # in its functions
    assert "bmdbench.data" in graph["bmdbench.runner"]  # from bmdbench.data import sources
    assert "bmdbench.data.sources" in graph["bmdbench.runner"]


def test_a_loop_is_found_through_import_module_too():
    source = "import importlib\nX = importlib.import_module('bmdbench.b')\n"
    nodes = run_at_import(ast.parse(source).body)
    assert [t for node in nodes for t in imported_names(node)] == ["importlib", "bmdbench.b"]
    assert find_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_loop({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_loop_among_bmdbenchs_modules():
    assert find_loop(import_graph()) is None
