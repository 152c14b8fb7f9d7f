"""How the two packages are laid out: no import circles, torch never in the add-on, the add-on's
``__init__`` only registers and every operator lives in a module named after its feature.

The import graph comes from grimp (import-linter's graph library), which reads every import
statement, the lazy ones inside functions included; the add-on's classes are read from the source
with ``ast`` (bpy is imported only in the Blender driver subprocesses).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"


@pytest.fixture(scope="module")
def graphs():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return {pkg: grimp.build_graph(pkg, include_external_packages=True) for pkg in ("fastavatar_engine", "blender_addon")}


def import_circles(graph, package: str) -> list[list[str]]:
    """Strongly connected components (more than one module) of ``package``'s direct-import graph
    (Tarjan), leaving out the edges between a package and its own submodules (``from . import x``)."""
    mods = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))

    def related(a, b):
        return a.startswith(b + ".") or b.startswith(a + ".")

    adj = {m: [t for t in graph.find_modules_directly_imported_by(m) if t in mods and not related(m, t)]
           for m in mods}
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in mods:
        if m not in index:
            visit(m)
    return out


def test_the_circle_finder_finds_a_planted_circle():
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c", "p.sub", "p.sub.x"):
        g.add_module(m)
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.c")
    g.add_import(importer="p.c", imported="p.a")  # a -> b -> c -> a
    g.add_import(importer="p.sub.x", imported="p.sub")  # a submodule importing its package is no circle
    g.add_import(importer="p.sub", imported="p.sub.x")
    assert import_circles(g, "p") == [["p.a", "p.b", "p.c"]]


@pytest.mark.parametrize("package", ["fastavatar_engine", "blender_addon"])
def test_no_import_circles(graphs, package):
    assert import_circles(graphs[package], package) == []


def test_the_addon_never_imports_torch(graphs):
    g = graphs["blender_addon"]
    assert "numpy" in g.modules and g.find_modules_that_directly_import("numpy")  # external imports are seen
    assert "torch" not in g.modules  # nothing in the add-on imports it, lazily or not


def _classes(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    return [(n.name, [ast.unparse(b) for b in n.bases]) for n in tree.body if isinstance(n, ast.ClassDef)]


def test_addon_init_only_registers():
    tree = ast.parse((ADDON / "__init__.py").read_text())
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert sorted(defs) == ["_unregister_at_exit", "register", "unregister"]


def test_every_operator_lives_in_a_feature_module_and_is_registered():
    operators = {}
    for path in sorted(ADDON.rglob("*.py")):
        for name, bases in _classes(path):
            if "bpy.types.Operator" in bases:
                operators[name] = path.relative_to(ADDON).as_posix()
    assert len(operators) >= 13
    assert all(p.startswith("operators/") and p != "operators/__init__.py" for p in operators.values()), operators
    init = ast.parse((ADDON / "operators" / "__init__.py").read_text())
    registered = next(ast.unparse(n.value) for n in init.body
                      if isinstance(n, ast.Assign) and n.targets[0].id == "CLASSES")
    assert all(name in registered for name in operators), sorted(set(operators) - set(registered.split()))
