"""The package's imports point one way: DAG files -> tasks (and the page, the DAG kit) ->
the Airflow wiring (``dbops.runtime``, notifiers) -> the pure core, with no import cycle.

Read from the source with ``ast``, function-level imports included (a lazy import still
ties two modules together). The registry's lookup of a store's adapter by name
(``importlib``) is a late binding by design and not an edge here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

ENTRY = ("dbops.tasks", "dbops.dagkit", "dbops.status.app")
WIRING = ("dbops.runtime", "dbops.alerting", "dbops.run_notifiers", "dbops.deadlines", "dbops.status.recovery_point")
LAYER_NAMES = {3: "tasks/DAG kit/page", 2: "Airflow wiring", 1: "core"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (PLUGINS / "dbops").rglob("*.py"):
        parts = list(path.relative_to(PLUGINS).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], bool]:
    """(dbops modules ``name`` imports, whether it imports airflow)."""
    edges, airflow = set(), False
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            airflow |= target.split(".")[0] == "airflow"
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target not in (name, "dbops"):
                edges.add(target)
    return edges, airflow


def _graph():
    modules = _modules()
    graph, airflow = {}, set()
    for name, path in modules.items():
        graph[name], uses_airflow = _imports(name, path, modules)
        if uses_airflow:
            airflow.add(name)
    return graph, airflow


def _layer(module: str) -> int:
    if any(module == e or module.startswith(e + ".") for e in ENTRY):
        return 3
    return 2 if module in WIRING else 1


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle through each group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # the shortest way from the group's first module back to it
        start, paths, frontier = group[0], {group[0]: [group[0]]}, [group[0]]
        found = None
        while frontier and found is None:
            following = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start and found is None:
                        found = paths[v] + [start]
                    elif w in group and w not in paths:
                        paths[w] = paths[v] + [w]
                        following.append(w)
            frontier = following
        cycles.append(found)
    return cycles


def test_the_graph_sees_module_and_function_level_imports():
    graph, airflow = _graph()
    assert "dbops.config" in graph["dbops.runtime"]  # module level
    assert "dbops.offsite.rsync" in graph["dbops.runtime"]  # inside open_target
    assert "dbops.runtime" in graph["dbops.tasks.offsite"] and "dbops.runtime" in graph["dbops.status.app"]
    assert "dbops.runtime" in airflow and "dbops.config" not in airflow


def test_no_import_cycle_in_the_package():
    graph, _ = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycles_are_found_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_point_down_the_layers():
    graph, _ = _graph()
    upward = [
        f"{a} ({LAYER_NAMES[_layer(a)]}) imports {b} ({LAYER_NAMES[_layer(b)]})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if _layer(b) > _layer(a)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_core_imports_no_airflow():
    graph, airflow = _graph()
    assert not sorted(m for m in airflow if _layer(m) == 1), "core modules importing airflow"


def test_only_the_wiring_module_reads_connections_and_variables():
    """Connections and Variables are read in ``dbops.runtime``; everything else asks it."""
    readers = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if name != "dbops.runtime" and ("BaseHook.get_connection" in text or "Variable.get(" in text):
            readers.append(name)
    assert not readers, f"reading Airflow connections or Variables outside dbops.runtime: {readers}"
