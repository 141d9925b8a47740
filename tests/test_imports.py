"""Static checks on the import graph of ``sam_l1dfl`` (no module is imported).

The graph is read with :mod:`ast` from every ``import`` statement of every
module, at any depth (inside functions, ``try`` and ``if TYPE_CHECKING``
blocks too), with relative imports resolved. Importing ``a.b.c`` also runs
the package ``__init__`` of ``a`` and ``a.b``, so those count as edges too,
except for a module's own enclosing packages (they are already being
imported when the module runs).

* ``test_no_import_cycle``: no module imports one that imports it back,
  directly or through others. A failure prints each cycle as a path with the
  file and line of every edge.
* ``test_no_internal_import_inside_function``: library modules (everything
  outside ``sam_l1dfl/commands/`` and ``sam_l1dfl/cli.py``) import other
  ``sam_l1dfl`` modules at module level, so that a new cycle shows at once
  instead of hiding behind a lazy import.
* ``test_no_private_name_imported_across_modules``: no ``from m import _x``
  of another ``sam_l1dfl`` module, and no ``m._x`` on a name bound to
  another ``sam_l1dfl`` module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "sam_l1dfl"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: Path
    line: int
    function: str | None  # outermost enclosing function, None at module level

    @property
    def in_function(self) -> bool:
        return self.function is not None


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve_from(name: str, node: ast.ImportFrom) -> str | None:
    """Absolute module named by ``from X import ...`` inside module ``name``."""
    if not node.level:
        return node.module
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _walk_with_scope(tree: ast.AST):
    """Yield ``(node, function)`` for every node: its outermost enclosing function's name."""
    stack: list[tuple[ast.AST, str | None]] = [(tree, None)]
    while stack:
        node, func = stack.pop()
        yield node, func
        if func is None and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner = getattr(node, "name", "<lambda>")
        else:
            inner = func
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def _direct_imports(name: str) -> list[Edge]:
    """The ``sam_l1dfl`` modules that ``name`` names in its import statements."""
    path = MODULES[name]
    edges: list[Edge] = []
    for node, func in _walk_with_scope(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(name, node)
            if base is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in MODULES else base)
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                edges.append(Edge(name, target, path, node.lineno, func))
    return edges


def _graph() -> dict[str, dict[str, Edge]]:
    """Module -> {module it runs on import: the statement that causes it}.

    A named target always counts (``from pkg import x`` where ``x`` is defined
    in ``pkg/__init__`` needs that ``__init__`` to have finished). The package
    ``__init__`` files on the way to a target count too, except the importing
    module's own enclosing packages.
    """
    graph: dict[str, dict[str, Edge]] = {}
    for name in MODULES:
        out: dict[str, Edge] = {}
        for edge in _direct_imports(name):
            parts = edge.target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step not in MODULES or step == name:
                    continue
                named = i == len(parts)
                if not named and name.startswith(step + "."):
                    continue  # own enclosing package: already initialising
                out.setdefault(step, edge)
        graph[name] = out
    return graph


def _strong_components(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _cycle_path(graph: dict[str, dict[str, Edge]], comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strong component."""
    members = set(comp)
    start = comp[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt not in members:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle found in component {comp}")  # pragma: no cover


def _describe(graph: dict[str, dict[str, Edge]], path: list[str]) -> str:
    lines = [" -> ".join(path)]
    for a, b in zip(path, path[1:]):
        edge = graph[a][b]
        where = edge.path.relative_to(ROOT.parent)
        lazy = " (inside a function)" if edge.in_function else ""
        lines.append(f"    {a} -> {b}: {where}:{edge.line} imports {edge.target}{lazy}")
    return "\n".join(lines)


def test_graph_sees_the_package():
    graph = _graph()
    assert len(graph) > 20
    # sanity: the walker resolves both absolute and relative imports
    assert any(graph.values())


def test_no_import_cycle():
    graph = _graph()
    cycles = [_describe(graph, _cycle_path(graph, comp)) for comp in _strong_components(graph)]
    assert not cycles, "import cycles in sam_l1dfl:\n" + "\n".join(cycles)


def _is_library(name: str) -> bool:
    return not (name == f"{PACKAGE}.cli" or name.startswith(f"{PACKAGE}.commands"))


def _reaches(graph: dict[str, dict[str, Edge]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return start == goal


def _lazy_submodule_ok(graph: dict[str, dict[str, Edge]], edge: Edge) -> bool:
    """A package ``__init__``'s module ``__getattr__`` may import a heavy submodule lazily,
    provided nothing it imports imports the package back."""
    return (
        _is_package(edge.source)
        and edge.function == "__getattr__"
        and edge.target.startswith(edge.source + ".")
        and edge.target in MODULES
        and not _reaches(graph, edge.target, edge.source)
    )


def test_no_internal_import_inside_function():
    graph = _graph()
    offenders = sorted(
        {
            f"{edge.path.relative_to(ROOT.parent)}:{edge.line} imports {edge.target}"
            for name in MODULES
            if _is_library(name)
            for edge in _direct_imports(name)
            if edge.in_function and not _lazy_submodule_ok(graph, edge)
        }
    )
    assert not offenders, (
        "library modules import sam_l1dfl modules inside functions (move them to the top; "
        "a lazy internal import hides cycles):\n" + "\n".join(offenders)
    )


def _is_private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


def _private_imports(name: str) -> list[str]:
    path = MODULES[name]
    where = path.relative_to(ROOT.parent)
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    module_aliases: dict[str, str] = {}  # local name -> sam_l1dfl module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve_from(name, node)
            if base is None or not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    module_aliases[alias.asname or alias.name] = sub
                if base != name and _is_private(alias.name):
                    found.append(f"{where}:{node.lineno} imports {alias.name} from {base}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + ".") and alias.asname:
                    module_aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and module_aliases[node.value.id] != name
            and _is_private(node.attr)
        ):
            target = module_aliases[node.value.id]
            found.append(f"{where}:{node.lineno} uses {target}.{node.attr}")
    return found


def test_no_private_name_imported_across_modules():
    offenders = [line for name in MODULES for line in _private_imports(name)]
    assert not offenders, "private names used across sam_l1dfl modules:\n" + "\n".join(sorted(offenders))


@pytest.mark.parametrize(
    "name, expected",
    [("sam_l1dfl.model.checkpoint", "sam_l1dfl.model"), ("sam_l1dfl.prompts.slicer", "sam_l1dfl.prompts")],
)
def test_enclosing_package_is_resolved(name, expected):
    # a module's own package is the base of its single-dot relative imports
    node = ast.parse("from . import x").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _resolve_from(name, node) == expected
