"""The shape of the code, kept: no import circle among the project's modules
(type-only imports included, since a circle read by a newcomer is a circle),
the services never import the CLI (a client), and the gateway's session core
never imports a protocol."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("parley", "services")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {
        _module_name(p): p
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if "v1" not in p.relative_to(REPO).parts  # generated protobuf code
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_services_and_runtime_do_not_import_the_cli() -> None:
    graph = import_graph()
    offenders = {
        (name, target)
        for name, targets in graph.items()
        if not name.startswith("parley.cli")
        for target in targets
        if target.startswith("parley.cli")
    }
    assert not offenders


def test_the_session_core_knows_no_protocol() -> None:
    graph = import_graph()
    offenders = {
        (name, target)
        for name, targets in graph.items()
        if name.startswith("services.gateway.core")
        for target in targets
        if target.startswith(("services.gateway.protocols", "services.gateway.service"))
    }
    assert not offenders
