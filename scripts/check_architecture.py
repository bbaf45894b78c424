"""Structure checks that ruff does not make: `python scripts/check_architecture.py` (part of `make lint`).

1. The import graph of repeatlab/ has no cycle. Every `import` counts, also those inside functions: a lazy import
   hides a cycle from Python's import machinery, not from the reader.
2. No function in repeatlab/ is longer than MAX_FUNCTION_LINES (ruff checks complexity, C901, not length).

Exit status 1 and one line per problem when a check fails.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "repeatlab"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    return "repeatlab." + path.stem if path.stem != "__init__" else "repeatlab"


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`: a script entry point, not a dependency of the module."""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _walk(tree: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(tree):
        if not _is_main_block(child):
            yield child
            yield from _walk(child)


def imports_of(tree: ast.AST, modules: set[str]) -> set[str]:
    """The repeatlab modules a module imports (`from repeatlab import x` counts x when x is a module), outside
    its `if __name__ == "__main__":` block."""
    found = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules and name != "repeatlab"}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(package.glob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(ast.parse(p.read_text()), modules) - {module_name(p)} for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def long_functions(package: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, str, str]]:
    """(file, function, message) of every function longer than `limit` lines."""
    out = []
    for path in sorted(package.glob("*.py")):
        where = str(path.relative_to(package.parent))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    message = f"{where}:{node.lineno}: {node.name} is {length} lines (more than {limit})"
                    out.append((where, node.name, message))
    return out


def main() -> int:
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(import_graph())]
    problems += [message for _, _, message in long_functions()]
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
