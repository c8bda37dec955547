"""The package's import graph and its layer rules, as pure functions (tests/test_layers.py; docs/architecture.md).

Layers, lowest first: ground (``core``) < library < training < commands. A module imports only its own layer and the
layers below it; imports inside functions ("late", for start-up time) are allowed only in the commands layer; the
module graph (top-level *and* function-level imports) has no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "lightning_sparse_mtl"
LAYERS = ("ground", "library", "training", "commands")
# first name under the package -> layer index (a new sub-package must be placed here: the test says so)
LAYER_OF = {
    "core": 0,
    **dict.fromkeys(("data", "models", "mtl", "sparsity", "peers", "deploy", "reporting", "registry"), 1),
    "training": 2,
    **dict.fromkeys(("runs", "train", "prune", "evaluate", "report"), 3),
}
LATE_OK = 3  # the only layer whose functions may import the project


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` (both dotted module names) at ``line``; ``late``: inside a function."""

    source: str
    target: str
    line: int
    late: bool


def module_name(path: Path, root: Path) -> str:
    """Dotted name of ``path`` under ``root`` (the folder holding the package); ``__init__`` names its package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(name: str, known: set[str]) -> str | None:
    """``name`` or its longest prefix that is a module of the package (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from (``from . import x`` and ``from ..a import b`` resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[Edge]:
    """Every import of a module of the package in ``source`` (the text of ``module``), nested ones included."""
    edges: list[Edge] = []

    def visit(node: ast.AST, late: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = late or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _base(module, is_package, child)
                names = [f"{base}.{alias.name}" if base else alias.name for alias in child.names]
            for name in names:
                target = _known(name, known)
                if target is not None and target != module:
                    edges.append(Edge(module, target, child.lineno, inside))
            visit(child, inside)

    visit(ast.parse(source), False)
    return edges


def package_sources(package_dir: Path) -> dict[str, tuple[str, bool]]:
    """``{module: (source text, is a package __init__)}`` of every module under ``package_dir``."""
    root = package_dir.parent
    return {module_name(p, root): (p.read_text(), p.name == "__init__.py") for p in sorted(package_dir.rglob("*.py"))}


def import_edges(sources: Mapping[str, tuple[str, bool]]) -> list[Edge]:
    known = set(sources)
    return [e for m, (text, is_package) in sources.items() for e in imports_of(m, text, is_package, known)]


def layer_of(module: str) -> int | None:
    """Layer index of a module of the package (the package itself is ground); None: in no layer."""
    parts = module.split(".")
    return 0 if len(parts) == 1 else LAYER_OF.get(parts[1])


def _where(module: str) -> str:
    layer = layer_of(module)
    return f"{module} ({LAYERS[layer] if layer is not None else 'no layer'})"


def layer_problems(edges: Iterable[Edge], modules: Iterable[str]) -> list[str]:
    """Modules in no layer, imports that climb a layer, function-level imports outside the commands layer."""
    out = [f"{m} is in no layer: place its package in LAYER_OF (tests/helpers/import_graph.py) and in "
           "docs/architecture.md" for m in sorted(modules) if layer_of(m) is None]  # fmt: skip
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if src is None or dst is None:
            continue
        if dst > src:
            out.append(f"{e.source}:{e.line}: {_where(e.source)} imports {_where(e.target)}: a module imports only "
                       f"its own layer and those below ({' < '.join(LAYERS)})")  # fmt: skip
        if e.late and src != LATE_OK:
            out.append(f"{e.source}:{e.line}: function-level import of {e.target} in {_where(e.source)}: only the "
                       "commands layer may import late (for start-up time); import it at the top")  # fmt: skip
    return out


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of ``graph`` (Tarjan, iterative), each sorted; singletons included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    scc = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        scc.append(top)
                        if top == node:
                            break
                    out.append(sorted(scc))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def _cycle_through(first: str, members: set[str], graph: Mapping[str, Iterable[str]]) -> list[str]:
    """A shortest path ``first -> ... -> first`` inside ``members`` (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [first]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(parent[path[-1]])
                    return [*reversed(path), first]
                if child in members and child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    return [first, first]


def cycle_problems(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One line per import cycle: one cycle of the component, and every module in it."""
    out = []
    for scc in strongly_connected(graph):
        if len(scc) > 1 or scc[0] in set(graph.get(scc[0], ())):
            path = _cycle_through(scc[0], set(scc), graph)
            out.append(f"import cycle: {' -> '.join(path)} (modules in the cycle: {', '.join(scc)})")
    return out


def graph_of(edges: Iterable[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    return graph


def problems(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Everything wrong with the import structure of ``sources`` (:func:`package_sources`); empty when it holds."""
    edges = import_edges(sources)
    return layer_problems(edges, sources) + cycle_problems(graph_of(edges))
