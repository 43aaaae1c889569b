"""The house's layout: no import cycle among the project's modules, read from the source (ast), lazy imports
inside functions included (a cycle hidden in a function still ties two modules together)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("study", "trainables", "search_spaces")


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages (``pkg/__init__.py`` is ``pkg``)."""
    found = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The project modules one import statement names (``from pkg import mod`` names ``pkg.mod`` when it is one)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if not isinstance(node, ast.ImportFrom) or node.level or node.module is None:
        return set()
    names = {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in modules} | ({node.module} & set(modules))


def import_graph() -> dict[str, set[str]]:
    modules = _module_files()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {target for node in ast.walk(tree) for target in _imported(node, modules)} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the list of modules along it (first == last), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it was searched
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 60, f"only {len(graph)} modules found under {ROOTS}"
    assert "trainables.train_loop" in graph["study.trial"], "the import graph misses a known edge"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_study_keeps_few_modules_at_its_top():
    """study/ holds what the user and the driver run; benchmark, cluster and MLflow code live in subpackages."""
    top = sorted(p.stem for p in (REPO / "study").glob("*.py") if p.stem != "__init__")
    assert len(top) < 18, f"study/ holds {len(top)} modules directly: {top}"
