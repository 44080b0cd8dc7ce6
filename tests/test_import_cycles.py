"""The package's modules import one another without cycles (issue 26).

The graph is built statically (`ast`, nothing is imported), so the test is fast and sees code paths
no other test runs. What counts as an edge ``a -> b`` (both modules of ``dakpn_jax``):

- every ``import``/``from ... import`` statement in ``a``, at module level *and* inside functions.
  A lazy in-function import that closes a cycle is still a cycle: it only moves the failure from
  import time to the first call, and it usually exists only to dodge the cycle, so it counts.
- ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``.

What does not count:

- the implicit import of a target's parent packages (``import dakpn_jax.data.gta5`` runs
  ``dakpn_jax/data/__init__.py`` first): a package's ``__init__`` re-exporting its own submodules
  would otherwise read as a cycle with every sibling import;
- ``importlib.import_module(name)`` on a name looked up at run time: that is the registries'
  deliberate seam (`dakpn_jax.methods`, the dataset table of `dakpn_jax.data.sources`), which lets
  a dispatcher reach modules that import the base layer beneath it.
"""

from __future__ import annotations

import ast
import os

PACKAGE = "dakpn_jax"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# No cycle is allowed (protocol/report <-> protocol/stages, the last one, went with protocol/layout.py).
ALLOWED: set[frozenset] = set()


def _modules() -> dict[str, str]:
    """module name -> file path, for every .py file of the package."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(ROOT))[:-3].split(
                os.sep
            )
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join(rel)] = os.path.join(dirpath, f)
    return out


def _target(name: str, modules) -> str | None:
    """The deepest module of the package that the dotted `name` names (or lies in)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for name in names:
                if name.split(".")[0] != PACKAGE:
                    continue
                target = _target(name, modules)
                if target is not None and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path(graph, comp) -> list[str]:
    """One concrete cycle through the first module of `comp` (breadth-first back to it)."""
    start, members = comp[0], set(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def test_graph_sees_lazy_imports():
    # inference imports the trainer only inside functions; the graph must still hold the edge.
    assert "dakpn_jax.training.trainer" in import_graph()["dakpn_jax.inference"]


def test_no_import_cycles():
    graph = import_graph()
    found = [c for c in cycles(graph) if frozenset(c) not in ALLOWED]
    assert not found, "import cycles in the package:\n" + "\n".join(
        "  " + " -> ".join(_path(graph, c)) for c in found
    )
