"""The shape of the package: no import cycles between varlit's modules, no module over 500 lines.

Why: a module that can be read, tested and moved on its own has to sit above everything it imports. A cycle
(even one closed by an import inside a function, or by a `TYPE_CHECKING` import) means two modules can
only be understood together, and function-level imports are how such knots usually hide.

How the import graph is built (static, with `ast`, nothing is imported):

* every `*.py` file under `varlit/` is a node, named like Python names it (`varlit/eval/__init__.py` is
  `varlit.eval`, `varlit/eval/runner.py` is `varlit.eval.runner`);
* every `import` and `from ... import` statement counts, wherever it stands: at module level, inside a
  function or class, under `if TYPE_CHECKING:` or in a `try:`;
* relative imports are resolved against the importing module's package (an `__init__` is its own package);
* `import a.b.c` is an edge to `a.b.c`; `from a.b import c` is an edge to `a.b.c` when that is a module,
  otherwise (c is a name defined in `a.b`) an edge to `a.b`; `from a.b import *` is an edge to `a.b`;
* only the module an import names is an edge, not the parent packages Python initialises on the way.
  So a package `__init__` re-exporting names from its own children (`varlit/models/__init__.py` doing
  `from .infinity import Infinity`) is edges from the package down to its children and no cycle by
  itself; it becomes one only when something below imports the package itself back, e.g. a child doing
  `from varlit.models import Infinity` (at any level, in a function too) instead of importing the
  sibling module that defines the name.

Any strongly connected set of modules fails the test, which prints the set and a shortest cycle through
each of its members, each step with the file and line of the import that makes it.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "varlit"
ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / PACKAGE

MAX_LINES = 500
# the model itself: one architecture, kept whole so it reads next to the paper (the only exception)
LINE_LIMIT_EXCEPTIONS = {"varlit/models/infinity.py"}


@dataclass(frozen=True)
class Edge:
    """One import of a varlit module by another: where it stands, so a failure points at the line."""

    source: str
    target: str
    path: str
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    """`varlit/eval/__init__.py` -> `varlit.eval`, `varlit/eval/runner.py` -> `varlit.eval.runner`."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (caches and build folders have no .py files here)."""
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _known_prefix(dotted: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `dotted` that is a varlit module (`varlit.eval.runner.X` -> `varlit.eval.runner`)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _resolve_from(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str:
    """The absolute module a `from ... import` reads from, relative levels resolved against the importer."""
    if node.level == 0:
        return node.module or ""
    package = importer if _is_package(importer, modules) else importer.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    base = ".".join(parts)
    return f"{base}.{node.module}" if node.module else base


class _ImportVisitor(ast.NodeVisitor):
    """Collects every import of a varlit module in one file, noting whether it sits inside a function."""

    def __init__(self, importer: str, path: str, modules: dict[str, Path]) -> None:
        self.importer, self.path, self.modules = importer, path, modules
        self.edges: list[Edge] = []
        self._depth = 0

    def _add(self, target: str | None, line: int) -> None:
        edge = Edge(self.importer, target or "", self.path, line, self._depth > 0)
        if target is not None and target != self.importer and edge not in self.edges:
            self.edges.append(edge)  # once per statement, however many names it imports

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                self._add(_known_prefix(alias.name, self.modules), node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve_from(node, self.importer, self.modules)
        if base != PACKAGE and not base.startswith(PACKAGE + "."):
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if alias.name != "*" and submodule in self.modules:
                self._add(submodule, node.lineno)
            else:
                self._add(_known_prefix(base, self.modules), node.lineno)


def build_graph(modules: dict[str, Path], sources: dict[str, str]) -> dict[str, dict[str, list[Edge]]]:
    """module -> {imported module -> the import statements that make the edge}, from each module's source."""
    graph: dict[str, dict[str, list[Edge]]] = {name: {} for name in modules}
    for name, path in modules.items():
        rel = path.relative_to(ROOT).as_posix()
        visitor = _ImportVisitor(name, rel, modules)
        visitor.visit(ast.parse(sources[name], filename=rel))
        for edge in visitor.edges:
            graph[name].setdefault(edge.target, []).append(edge)
    return graph


def import_graph() -> tuple[dict[str, dict[str, list[Edge]]], dict[str, Path]]:
    """The import graph of the varlit package as it is on disk, and its modules."""
    modules = package_modules()
    sources = {name: path.read_text(encoding="utf-8") for name, path in modules.items()}
    return build_graph(modules, sources), modules


def strongly_connected(graph: dict[str, dict[str, list[Edge]]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the sets of modules that all reach each other, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
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
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found, key=lambda c: (-len(c), c))


def shortest_cycle(graph: dict[str, dict[str, list[Edge]]], start: str, members: set[str]) -> list[str]:
    """A shortest cycle start -> ... -> start inside one strongly connected set (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node]):
            if target not in members:
                continue
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if target not in seen:
                seen.add(target)
                previous[target] = node
                queue.append(target)
    raise AssertionError(f"{start} is in a strongly connected set but no cycle returns to it")


def describe_cycle(graph: dict[str, dict[str, list[Edge]]], cycle: list[str]) -> str:
    """`a -> b (varlit/a.py:3) -> a (varlit/b.py:9, in a function)`: each step with the line that makes it."""
    steps = [cycle[0]]
    for source, target in zip(cycle, cycle[1:]):
        where = ", ".join(
            f"{e.path}:{e.line}{' in a function' if e.in_function else ''}" for e in graph[source][target]
        )
        steps.append(f"{target} ({where})")
    return " -> ".join(steps)


def cycle_report(graph: dict[str, dict[str, list[Edge]]]) -> list[str]:
    """One block per strongly connected set: its members, then a shortest cycle through each member."""
    blocks = []
    for component in strongly_connected(graph):
        members = set(component)
        cycles: list[str] = []
        for start in component:
            text = describe_cycle(graph, shortest_cycle(graph, start, members))
            if text not in cycles:
                cycles.append(text)
        blocks.append("cycle among " + ", ".join(component) + ":\n  " + "\n  ".join(cycles))
    return blocks


def test_import_graph_resolves_the_forms_varlit_uses():
    """The graph sees relative, absolute, submodule-as-name and function-level imports (else a pass means nothing)."""
    graph, modules = import_graph()
    assert len(modules) > 50 and "varlit.models" in modules and "varlit.models.infinity" in modules
    # the package __init__ re-exports from its children: `from .infinity import Infinity`
    assert "varlit.models.infinity" in graph["varlit.models"]
    # edges go to modules only: never to a name inside one (`varlit.eval.runner.X`) or outside varlit
    assert all(t in modules for targets in graph.values() for t in targets)
    assert all(t.startswith(PACKAGE) for targets in graph.values() for t in targets)
    # a function-level import is an edge like any other
    assert any(e.in_function for targets in graph.values() for edges in targets.values() for e in edges)


def test_visitor_resolves_each_import_form():
    """Each import form on a synthetic module: relative levels, submodules named in `from`, functions."""
    modules = {
        "varlit": PACKAGE_DIR / "__init__.py",
        "varlit.pkg": PACKAGE_DIR / "pkg" / "__init__.py",
        "varlit.pkg.a": PACKAGE_DIR / "pkg" / "a.py",
        "varlit.pkg.b": PACKAGE_DIR / "pkg" / "b.py",
        "varlit.other": PACKAGE_DIR / "other.py",
    }
    source = (
        "import os\n"
        "from . import b\n"  # 2: a sibling submodule named in `from`
        "from .. import other\n"  # 3: two levels up, a submodule
        "from varlit.pkg import NAME\n"  # 4: a name defined in the package __init__
        "import varlit.other.thing\n"  # 5: an attribute path: the longest module prefix
        "def f():\n"
        "    from .b import g\n"  # 7: inside a function
        "from varlit.pkg.a import x\n"  # 8: itself: not an edge
        "from torch import nn\n"  # 9: outside varlit: not an edge
    )
    visitor = _ImportVisitor("varlit.pkg.a", "varlit/pkg/a.py", modules)
    visitor.visit(ast.parse(source))
    seen = {(e.target, e.line, e.in_function) for e in visitor.edges}
    assert seen == {
        ("varlit.pkg.b", 2, False),
        ("varlit.other", 3, False),
        ("varlit.pkg", 4, False),
        ("varlit.other", 5, False),
        ("varlit.pkg.b", 7, True),
    }
    # an __init__ is its own package: `from .a import x` there means varlit.pkg.a
    init = _ImportVisitor("varlit.pkg", "varlit/pkg/__init__.py", modules)
    init.visit(ast.parse("from .a import x\nfrom . import b\n"))
    assert {e.target for e in init.edges} == {"varlit.pkg.a", "varlit.pkg.b"}


def test_package_init_rule():
    """A package re-exporting its children is no cycle; a child importing the package back is one."""
    modules = {
        "varlit.pkg": PACKAGE_DIR / "pkg" / "__init__.py",
        "varlit.pkg.a": PACKAGE_DIR / "pkg" / "a.py",
        "varlit.pkg.b": PACKAGE_DIR / "pkg" / "b.py",
    }
    init = "from .a import A\nfrom .b import B\n"
    siblings = {"varlit.pkg": init, "varlit.pkg.a": "from .b import B\n", "varlit.pkg.b": "B = 1\n"}
    assert strongly_connected(build_graph(modules, siblings)) == []
    back = {**siblings, "varlit.pkg.b": "def f():\n    from varlit.pkg import A\n"}
    assert strongly_connected(build_graph(modules, back)) == [["varlit.pkg", "varlit.pkg.a", "varlit.pkg.b"]]


def test_cycle_finder_reports_a_cycle_with_its_lines():
    """The finder itself: a -> b -> a is reported with both lines, a -> c alone is not a cycle."""

    def edge(s: str, t: str, line: int, fn: bool = False) -> Edge:
        return Edge(s, t, s.replace(".", "/") + ".py", line, fn)

    graph = {
        "a": {"b": [edge("a", "b", 3)], "c": [edge("a", "c", 4)]},
        "b": {"a": [edge("b", "a", 9, fn=True)]},
        "c": {},
    }
    assert strongly_connected(graph) == [["a", "b"]]
    assert cycle_report(graph) == [
        "cycle among a, b:\n  a -> b (a.py:3) -> a (b.py:9 in a function)\n  b -> a (b.py:9 in a function) -> b (a.py:3)"
    ]


def test_no_import_cycles():
    """No set of varlit modules imports each other around a circle (the rules are in the module docstring)."""
    graph, _ = import_graph()
    report = cycle_report(graph)
    assert not report, "import cycles in varlit:\n" + "\n".join(report)


def test_no_module_over_500_lines():
    """Every module fits in one reading (at most 500 lines); only the model architecture is exempt."""
    too_long = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel not in LINE_LIMIT_EXCEPTIONS:
            too_long.append(f"{rel}: {n} lines")
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(too_long)
