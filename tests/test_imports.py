"""The package's import graph, read from its source: no cycle, and the modules every component imports stay
at the bottom of it (`mbrl_jax.errors` imports nothing of the project, `mbrl_jax.settings` only it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mbrl_jax"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_modules(tree: ast.AST, modules: set[str], package: str) -> set[str]:
    """The package's modules that `tree` imports anywhere (module level or inside functions), except under
    `if TYPE_CHECKING:` (never executed). `from a import b` counts as a.b where that is a module, else a."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                base = base.rstrip(".")
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    found.add(target)
                elif base in modules:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = imported_modules(tree, modules, package) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search with three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "mbrl_jax.config" in graph and "mbrl_jax.agents.dreamer" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "mbrl_jax"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from mbrl_jax.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from mbrl_jax.c import x\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mbrl_jax.sub.b import f\n"
    )
    graph = import_graph(package)
    assert find_cycle(graph) is None  # c imports b for types only
    (package / "c.py").write_text("from mbrl_jax import a\n")
    assert find_cycle(import_graph(package)) == ["mbrl_jax.a", "mbrl_jax.sub.b", "mbrl_jax.c", "mbrl_jax.a"]


@pytest.mark.parametrize(
    "module, allowed", [("mbrl_jax.errors", set()), ("mbrl_jax.settings", {"mbrl_jax.errors"})]
)
def test_the_bottom_modules_import_nothing_above_them(module, allowed):
    assert import_graph()[module] <= allowed


def test_config_module_stays_small():
    lines = (PACKAGE / "config.py").read_text(encoding="utf-8").count("\n")
    assert lines < 500, f"mbrl_jax/config.py has {lines} lines; component settings belong to their modules"
