"""The packages of app/ are layers, and imports point one way: from the process (server) down
to HTTP (api), to operations (ops), to the change stream (changes), to files and freshness
(store), and from all of them to the shared leaves (settings, errors, lifecycle). Read from the
source (every import statement, those inside functions and type-checking blocks included), so a
lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"

# What each layer may import of the service, besides itself.
LEAVES = {"app", "app.errors", "app.settings", "app.lifecycle"}
ALLOWED = {
    "leaf": set[str](),
    "store": {"leaf"},
    "changes": {"leaf", "store"},
    "ops": {"leaf", "store", "changes"},
    "api": {"leaf", "store", "changes", "ops"},
    "server": {"leaf", "store", "changes", "ops", "api"},
    "main": {"leaf", "store", "changes", "ops", "api", "server"},
}
# Third-party packages that belong to one layer: HTTP stays out of the store, uvicorn's
# internals in the server, prometheus-client in ops.
CONFINED = {"starlette": {"changes", "ops", "api", "server"}, "uvicorn": {"server"}, "prometheus_client": {"ops"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in LEAVES:
        return "leaf"
    if module == "app.__main__":
        return "main"
    return module.split(".")[1]


def imports(path: Path) -> set[str]:
    """Every module `path` imports (for `from a import b`, `a.b` when that is a module, else `a`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(path) for path in APP.rglob("*.py")}
GRAPH = {module_name(path): imports(path) for path in APP.rglob("*.py")}


def test_the_layout_is_what_this_test_knows() -> None:
    assert {layer(module) for module in MODULES} == set(ALLOWED)
    assert {"app.store.store", "app.changes.hub", "app.api.routes", "app.ops.metrics", "app.server.server"} <= MODULES


def test_every_import_of_the_service_points_down_the_layers() -> None:
    wrong = sorted(
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if target.split(".")[0] == "app"
        and layer(target) != layer(module)
        and layer(target) not in ALLOWED[layer(module)]
    )
    assert wrong == []


def test_third_party_layers_stay_in_their_layer() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if target.split(".")[0] in CONFINED and layer(module) not in CONFINED[target.split(".")[0]]
    )
    assert wrong == []


def test_no_module_imports_itself_through_others() -> None:
    edges = {module: {t for t in targets if t in MODULES and t != module} for module, targets in GRAPH.items()}
    # Package __init__ modules are imported on the way to their modules: not an edge of their own.
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checks_see_a_wrong_import() -> None:
    """The walk must find imports at all, or every check above passes vacuously."""
    assert "app.store.store" in GRAPH["app.changes.hub"]
    assert "app.store.changelog" in GRAPH["app.store.store"]
    assert "starlette.applications" in GRAPH["app.api.application"]
